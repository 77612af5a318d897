"""Sweep throughput: trials per hour for a fixed tiny budget, and what Tune costs over a plain loop.

    .venv/bin/python benchmarks/sweep.py                   # 3 trials x 8 steps, 3 repeats
    .venv/bin/python benchmarks/sweep.py --trials 2 --repeats 1

The same trials (a tiny I-JEPA on 32 px ultrasound frames, 2 Ray Train workers at 0.5 CPU, online kNN
every 4 steps, a grid over the learning rate) run three ways, each in a fresh subprocess with its own
local Ray cluster (num_cpus=4), whose whole process tree's PSS is sampled every 0.5 s:
  1. loop (the anchor): for each trial, ``prepare`` + ``build_trainer`` + ``fit``, then export the best
     encoder: Ray Train alone, one trial after another.
  2. tune: ``pretextlab sweep``'s ``run_sweep`` with FIFO scheduling and one trial at a time: the same
     work plus Tune's trial actors, result files, status table, summary and the registry mark.
  3. tune-2: the same sweep with two trials at once (what the sweep picks by default on 4 CPUs).
Timing starts after ``ray.init``. Ratio = seconds / the loop's seconds (medians of --repeats, the modes
interleaved per repeat); figures go to stdout and .bench/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import compare, measure_child, print_figures, write_results

HERE = Path(__file__).resolve()
BENCH = HERE.parents[1] / ".bench"
LRS = [2e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4, 6e-5, 3e-5, 1.5e-5]


def pretrain_dict(store: str, work: str, steps: int) -> dict:
    return {
        "name": "bench-ijepa",
        "modality": "ultrasound",
        "data": {"kind": "frames", "sources": [{"uri": store, "modality": "ultrasound"}], "clip": {"size": 32}},
        "objective": {"name": "ijepa", "backbone": {"arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1}},
        "train": {
            "steps": steps,
            "batch_size": 8,
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "data_cpus": 0.25,
            "log_every": 2,
            "checkpoint_every": steps,
            "schedule": {"lr": 1e-3, "warmup_steps": 0},
        },
        "validation": {"catalog": store, "every": 4, "k": 3},
        "storage": f"{work}/runs",
        "registry": f"{work}/registry",
    }


def measure(args: list[str]) -> dict:
    """Run ``this_script _child ARGS``; its JSON result plus the peak PSS of its process tree (``peak_mib``)."""
    return measure_child(HERE, args)


def child(argv: list[str]) -> None:
    import warnings

    import ray

    warnings.filterwarnings("ignore")
    mode, store, work, trials, steps = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if mode == "store":
        from pretextlab.jobs.ingest import IngestConfig, run_ingest
        from pretextlab.storage import synthetic as syn

        raw = Path(work) / "raw"
        rows = ["item_id,label,patient_id"]
        for i in range(8):
            syn.write_us_dicom(raw / f"us{i}.dcm", frames=8, rows=48, cols=64, seed=i, label=i % 2)
            rows.append(f"us{i},{'lesion' if i % 2 == 0 else 'band'},P{i}")
        (Path(work) / "labels.csv").write_text("\n".join(rows) + "\n")
        rep = run_ingest(
            IngestConfig(sources=[str(raw)], dest=store, labels=str(Path(work) / "labels.csv")), progress=False
        )
        assert rep.ok, rep.render()
        print(json.dumps({"seconds": 0.0}))
        return
    lrs = LRS[:trials]
    t0 = time.perf_counter()
    if mode == "loop":
        from pretextlab.jobs.pretrain import build_trainer, export_encoder, prepare
        from pretextlab.training.config import PretrainConfig
        from pretextlab.training.sweep_config import trial_config

        base = PretrainConfig.model_validate(pretrain_dict(store, work, steps))
        best = None
        for i, lr in enumerate(lrs):
            prep = prepare(trial_config(base, {"train.schedule.lr": lr}))
            result = build_trainer(prep, name=f"loop-{i}", storage=f"{work}/loop").fit()
            acc = float((result.metrics or {}).get("knn_acc", -1))
            if best is None or acc > best[0]:
                best = (acc, prep, result)
        acc, prep, result = best
        with result.checkpoint.as_directory() as folder:
            export_encoder(prep, folder, dict(result.metrics or {}))
        n = len(lrs)
    else:
        from pretextlab.jobs.sweep import plan_sweep, run_sweep
        from pretextlab.training.sweep_config import SweepConfig

        cfg = SweepConfig.model_validate(
            {
                "name": f"bench-{mode}",
                "pretrain": pretrain_dict(store, work, steps),
                "search": {"train.schedule.lr": {"grid": lrs}},
                "tune": {"num_samples": 1, "max_concurrent": 1 if mode == "tune" else 2, "scheduler": {"name": "fifo"}},
            }
        )
        res = run_sweep(plan_sweep(cfg), print_every=1e9)
        assert res.complete and res.encoder is not None
        n = len(res.trials)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "trials": n, "trials_per_hour": n * 3600 / seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    modes = ["loop", "tune", "tune-2"]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="pretextlab-bench-sweep-") as tmp:
        store = f"{tmp}/store"
        measure(["store", store, tmp, "0", "0"])
        for rep in range(args.repeats):
            for mode in modes:
                work = f"{tmp}/{mode}-{rep}"
                r = measure([mode, store, work, str(args.trials), str(args.steps)])
                runs[mode].append(r)
                print(
                    f"repeat {rep + 1}/{args.repeats} {mode:7s} {r['seconds']:7.1f} s  {r['trials_per_hour']:6.0f} "
                    f"trials/h  peak PSS {r['peak_mib']:.0f} MiB",
                    flush=True,
                )
    anchor = statistics.median(r["seconds"] for r in runs["loop"])
    summary = {}
    for mode in modes:
        sec = statistics.median(r["seconds"] for r in runs[mode])
        summary[mode] = {
            "seconds_median": sec,
            "trials_per_hour_median": args.trials * 3600 / sec,
            "ratio_to_loop": sec / anchor,
            "peak_mib_median": statistics.median(r["peak_mib"] for r in runs[mode]),
            "runs": runs[mode],
        }
    print(f"\n{args.trials} trials x {args.steps} steps, medians of {args.repeats}:")
    for mode, s in summary.items():
        print(
            f"  {mode:7s} {s['seconds_median']:7.1f} s  {s['trials_per_hour_median']:6.0f} trials/h  "
            f"x{s['ratio_to_loop']:.2f} of the loop  peak PSS {s['peak_mib_median']:.0f} MiB"
        )
    BENCH.mkdir(exist_ok=True)
    out = {
        "trials": args.trials,
        "steps": args.steps,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "anchor": "loop",
        **summary,
    }
    figures = [
        compare(
            f"sweep ({mode}) of {args.trials} trials x {args.steps} steps: seconds",
            "s",
            [r["seconds"] for r in runs[mode]],
            "the same trials by hand (Ray Train loop)",
            [r["seconds"] for r in runs["loop"]],
            better="lower",
        )
        for mode in ("tune", "tune-2")
    ]
    figures += [
        compare(
            f"sweep ({mode}) peak PSS",
            "MiB",
            [r["peak_mib"] for r in runs[mode]],
            "the same trials by hand (Ray Train loop)",
            [r["peak_mib"] for r in runs["loop"]],
            better="lower",
        )
        for mode in ("tune", "tune-2")
    ]
    write_results("sweep", figures, **out)
    print_figures(figures)
    print(f"wrote {BENCH / 'sweep.json'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2:])
    else:
        main()
