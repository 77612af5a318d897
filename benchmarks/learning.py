"""Does each objective learn at laptop scale? kNN accuracy before / after a short training run, paired.

Runs the cases of tests/test_objectives_learn.py (same data, views, budgets; the test module is the
single source of both) and, with ``--variant``, the same on harder generated sets where random init is
near chance. For each objective: kNN accuracy at random init and after training on the same test
images, the exact McNemar test of the paired outcomes, and the negative control (the same steps with
the loss detached). One JSON line per objective on stdout.

    python benchmarks/learning.py                                  # every case, the test's data
    python benchmarks/learning.py --objectives simclr,mae --variant offset
    python benchmarks/learning.py --variant background --n-test 512
    python benchmarks/learning.py --objectives dino,simclr --variant background --steps 480 --no-control

Variants (a faint texture, the label, over a nuisance that dominates random-init features):
``offset``: texture amplitude 0.1, random brightness offset up to 0.9 (random init ~0.52);
``background``: amplitude 0.3 over a strong smooth random background (random init ~0.55).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import compare, print_figures, timed, write_results  # noqa: E402

_spec = importlib.util.spec_from_file_location("learn_cases", ROOT / "tests" / "test_objectives_learn.py")
assert _spec and _spec.loader
T = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(T)

VARIANTS = T.VARIANTS  # the near-chance sets live with the test that uses one (single source)
variant_set = T.variant_set


def measure(name: str, n_test: int, detached: bool, seed: int = 0) -> dict:
    (before, after, steps), seconds = timed(lambda: T.run_case(name, detached=detached, seed=seed))
    test = T.mcnemar_exact(after, before)
    return {
        "before": round(float(before.mean()), 4),
        "after": round(float(after.mean()), 4),
        "gain": round(float(after.mean() - before.mean()), 4),
        "discordant": [test.a_only, test.b_only],
        "p_mcnemar": float(f"{test.p_value:.3g}"),
        "steps": steps,
        "seed": seed,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objectives", default=",".join(T.CASES), help="comma-separated case names")
    ap.add_argument("--variant", choices=sorted(VARIANTS), help="a harder generated set (default: the test's)")
    ap.add_argument("--n-test", type=int, default=T.N_TEST)
    ap.add_argument("--no-control", action="store_true", help="skip the detached-loss control")
    ap.add_argument("--steps", type=int, help="train every case this many steps (default: the test's budget)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (weights, masks, views); the test uses 0")
    args = ap.parse_args()
    if args.steps:
        for name, case in T.CASES.items():
            T.CASES[name] = (case[0], args.steps, *case[2:])
    torch.set_num_threads(1)
    T.N_TEST = args.n_test
    if args.variant:
        amp, bg, off = VARIANTS[args.variant]
        T.make_set = lambda n, seed, rgb: variant_set(n, seed, rgb, amp, bg, off)
    rows, figures = [], []
    for name in args.objectives.split(","):
        for seed in (int(x) for x in args.seeds.split(",")):
            row = {
                "objective": name,
                "variant": args.variant or "test",
                "trained": measure(name, args.n_test, False, seed),
            }
            if not args.no_control:
                row["detached"] = measure(name, args.n_test, True, seed)
            print(json.dumps(row), flush=True)
            rows.append(row)
            t = row["trained"]
            figures.append(
                compare(
                    f"{name} kNN accuracy after {t['steps']} steps, seed {seed} ({row['variant']} set)",
                    "accuracy",
                    [t["after"]],
                    "the same encoder at random init",
                    [t["before"]],
                    note=f"McNemar p = {t['p_mcnemar']}",
                )
            )
    write_results("learning", figures, rows=rows)
    print_figures(figures)


if __name__ == "__main__":
    sys.exit(main())
