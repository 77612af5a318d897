"""What a study costs over running its cells' pretrain + evaluate jobs by hand, one after another.

    .venv/bin/python benchmarks/study.py                  # 1 dataset x 2 arms + random init, 3 repeats
    .venv/bin/python benchmarks/study.py --steps 8 --repeats 1
    .venv/bin/python benchmarks/study.py --layout side-by-side   # cells that really fit side by side
    .venv/bin/python benchmarks/study.py --layout side-by-side --model demo --steps 60   # the demo's cells
    .venv/bin/python benchmarks/study.py --layout side-by-side --modes hand,study --repeats 9   # a CI

The same cells (a tiny ViT on 32 px ultrasound frames) run three ways, each in a fresh subprocess with
its own local Ray cluster, modes interleaved per repeat (the order rotating per repeat), the peak PSS of
the whole process tree sampled (benchmarks/harness.py). Two layouts:
  - ``wide`` (default): each cell has 2 Ray Train workers at 0.5 CPU (one torch thread each) and 0.25
    data CPU, on a cluster of num_cpus=4. One cell's two workers already keep 2 physical cores busy, so
    the study's default concurrency (3 cells: 4 // 1.25) oversubscribes a 2-core machine;
  - ``side-by-side``: each cell has 1 worker at 0.5 CPU and 0.25 data CPU, on a cluster of as many CPUs
    as the machine has: the default concurrency is then 2 cells on 2 cores, one core each.
The three ways:
  1. hand (the anchor): for each arm ``run_pretrain`` then ``evaluate_encoder``, and the random-init
     baseline registered and evaluated, one after another: what a user would script;
  2. study-1: ``pretextlab study`` with max_concurrent=1 (the same work, plus study.json and the report);
  3. study: the study with its default concurrency (cells side by side when they fit).
Ratio = seconds / the hand-run's seconds (medians); figures to stdout and .bench/study.json.
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
from harness import compare, measure_child, print_figures, start_ray, write_results

HERE = Path(__file__).resolve()
BENCH = HERE.parents[1] / ".bench"
ARMS = [
    {"name": "ijepa", "objective": "ijepa"},
    {"name": "simclr", "objective": "simclr", "overrides": {"objective": {"proj_hidden_dim": 64, "proj_dim": 32}}},
]


LAYOUTS = {  # layout -> (Ray Train workers per cell, CPUs of the local cluster; None = the machine's)
    "wide": (2, 4),
    "side-by-side": (1, None),
}


#: model -> (image size, ViT depth, batch): ``tiny`` prices the study's fixed costs (steps are nearly free);
#: ``demo`` is the demo study's cell (configs/study/demo.yaml: 48 px, 3 blocks, batch 32), whose steps cost
#: what a real study's do, so what running cells side by side saves can show
MODELS = {"tiny": (32, 1, 8), "demo": (48, 3, 32)}


def study_dict(
    store: str, work: str, steps: int, max_concurrent: int | None, workers: int = 2, model: str = "tiny"
) -> dict:
    size, depth, batch = MODELS[model]
    return {
        "name": "bench",
        "datasets": [{"name": "us", "store": store, "modality": "ultrasound"}],
        "arms": ARMS,
        "seeds": [0],
        "steps": steps,
        "backbone": {"arch": "vit_tiny", "img_size": size, "patch_size": 8, "depth": depth},
        "pretrain": {
            "data": {"clip": {"size": size}},
            "train": {
                "batch_size": batch,
                "num_workers": workers,
                "cpus_per_worker": 0.5,
                "data_cpus": 0.25,
                "log_every": 2,
                "checkpoint_every": steps,
            },
        },
        "evaluate": {"n_bootstrap": 200, "shots": [1], "fewshot_repeats": 1, "alignment_images": 0},
        "storage": f"{work}/studies",
        "registry": f"{work}/registry",
        "max_concurrent": max_concurrent,
    }


def child(argv: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    mode, store, work, steps = argv[0], argv[1], argv[2], int(argv[3])
    workers, cpus = LAYOUTS[argv[4] if len(argv) > 4 else "wide"]
    model = argv[5] if len(argv) > 5 else "tiny"
    start_ray("--ray-defaults" in argv, num_cpus=cpus or os.cpu_count())  # as `pretextlab study` starts it
    if mode == "store":
        from pretextlab.jobs.ingest import IngestConfig, run_ingest
        from pretextlab.storage import synthetic as syn

        raw = Path(work) / "raw"
        rows = ["item_id,label,patient_id"]
        for i in range(12):
            syn.write_us_dicom(raw / f"us{i}.dcm", frames=8, rows=48, cols=64, seed=i, label=i % 2)
            rows.append(f"us{i},{'lesion' if i % 2 == 0 else 'band'},P{i}")
        (Path(work) / "labels.csv").write_text("\n".join(rows) + "\n")
        assert run_ingest(
            IngestConfig(sources=[str(raw)], dest=store, labels=str(Path(work) / "labels.csv")), progress=False
        ).ok
        print(json.dumps({"seconds": 0.0}))
        return
    from pretextlab.jobs.study import plan_study, run_cell, run_study
    from pretextlab.study import StudyConfig

    cfg = StudyConfig.model_validate(study_dict(store, work, steps, 1 if mode == "study-1" else None, workers, model))
    t0 = time.perf_counter()
    plan = plan_study(cfg)
    if mode == "hand":  # the cells' jobs by hand (run_cell), one after another: no study.json, no report
        for c in plan.cells:
            cell = {
                "id": c.id,
                "dataset": c.dataset,
                "arm": c.arm,
                "objective": c.objective,
                "seed": c.seed,
                "pretrain": c.pretrain,
                "readouts": c.readouts,  # the baseline under each arm's readout, as the study evaluates it
            }
            assert run_cell(cell, plan.uri, cfg.evaluate, None)["status"] == "complete"
    else:
        assert not run_study(plan).failed
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "cells": len(plan.cells)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="wide", help="cell size vs cluster (see above)")
    ap.add_argument(
        "--model", choices=sorted(MODELS), default="tiny", help="cell size: tiny or the demo's (see MODELS)"
    )
    ap.add_argument(
        "--ray-defaults",
        action="store_true",
        help="start Ray with its own worker-pool defaults instead of pretextlab's (the figures before)",
    )
    ap.add_argument(
        "--modes",
        default="hand,study-1,study",
        help="which of hand (the anchor, always run), study-1 and study to run (e.g. hand,study for more "
        "repeats of the concurrency comparison in the same time)",
    )
    args = ap.parse_args()
    asked = {m for m in args.modes.split(",") if m}
    if asked - {"hand", "study-1", "study"}:
        ap.error(f"--modes: unknown {', '.join(sorted(asked - {'hand', 'study-1', 'study'}))} (hand, study-1, study)")
    modes = ["hand", *[m for m in ("study-1", "study") if m in asked]]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="pretextlab-bench-study-") as tmp:
        store = f"{tmp}/store"
        measure_child(HERE, ["store", store, tmp, "0"])
        for rep in range(args.repeats):
            # the order rotates per repeat (each mode goes first once in 3 repeats): in a fixed order the
            # hand-run, always right after the concurrent study, was slower than study-1 (which does more)
            # in 4 of 6 repeats
            for mode in modes[rep % len(modes) :] + modes[: rep % len(modes)]:
                argv = [mode, store, f"{tmp}/{mode}-{rep}", str(args.steps), args.layout, args.model]
                r = measure_child(HERE, argv + (["--ray-defaults"] if args.ray_defaults else []))
                runs[mode].append(r)
                print(
                    f"repeat {rep + 1}/{args.repeats} {mode:8s} {r['seconds']:7.1f} s  peak PSS "
                    f"{r['peak_mib']:.0f} MiB",
                    flush=True,
                )
    anchor = statistics.median(r["seconds"] for r in runs["hand"])
    summary = {
        m: {
            "seconds_median": statistics.median(r["seconds"] for r in runs[m]),
            "ratio_to_hand": statistics.median(r["seconds"] for r in runs[m]) / anchor,
            "peak_mib_median": statistics.median(r["peak_mib"] for r in runs[m]),
            "runs": runs[m],
        }
        for m in modes
    }
    print(f"\n{len(ARMS)} arms + random init, {args.model} model, {args.steps} steps, medians of {args.repeats}:")
    for m, s in summary.items():
        print(
            f"  {m:8s} {s['seconds_median']:7.1f} s  x{s['ratio_to_hand']:.2f} of the hand-run  "
            f"peak PSS {s['peak_mib_median']:.0f} MiB"
        )
    BENCH.mkdir(exist_ok=True)
    figures = [
        compare(
            f"{m} ({args.layout}, {args.model} model): {len(ARMS)} arms + random init, {args.steps} steps: seconds",
            "s",
            [r["seconds"] for r in runs[m]],
            "the cells' jobs by hand",
            [r["seconds"] for r in runs["hand"]],
            better="lower",
        )
        for m in modes[1:]
    ]
    name = (
        ("study" if args.layout == "wide" else f"study-{args.layout}")
        + ("" if args.model == "tiny" else f"-{args.model}")
        + ("-ray-defaults" if args.ray_defaults else "")
    )
    write_results(
        name,
        figures,
        steps=args.steps,
        repeats=args.repeats,
        layout=args.layout,
        model=args.model,
        anchor="hand",
        **summary,
    )
    print_figures(figures)
    print(f"wrote {BENCH / (name + '.json')}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2:])
    else:
        main()
