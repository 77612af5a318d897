"""The laptop demo: the study in miniature. Generate a small sample set and ingest it (the store the
README's tour uses), generate the controlled benchmark (phantoms whose label lives in a known place),
then run a study on it: DINO, I-JEPA and MAE plus a random-init baseline on both modalities, each cell
pretrained on Ray Train and evaluated frozen, with a report and a verdict per dataset.

    pretextlab demo [--workdir demo-data] [--steps 100] [--objectives dino,ijepa,mae] [--items 240]

Everything stays under WORKDIR: ``raw/`` (generated sources), ``zarr/`` (the sample store), ``bench/``
(the benchmark stores: ultrasound phantoms whose label is the outline of an organ, i.e. global
anatomy; H&E phantoms whose label is a few atypical nuclei, i.e. small and local), ``study.yaml`` and
``studies/demo/`` (cells, runs, report), ``registry/`` (every arm's encoder). The demo prints what the
study finds; nothing in it is tuned so that a given objective wins.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pretextlab.core.errors import UserError
from pretextlab.jobs.catalog import summarize
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage.synthetic import make_sample_set

DEMO_OBJECTIVES = ("dino", "ijepa", "mae", "simclr", "vicreg", "dinov3", "lejepa")
#: (dataset name, bench-data modality, locality): where the label lives, as in the study's two modalities
BENCH = (("us-global", "ultrasound", 0.0), ("he-local", "histology", 1.0))
SIZE = 48


def _objectives(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in DEMO_OBJECTIVES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(DEMO_OBJECTIVES)} (got {text!r})")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="demo-data", help="where samples, benchmark, study and registry go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100, help="pretraining steps per arm (the study's budget)")
    parser.add_argument("--items", type=int, default=240, help="phantoms per benchmark dataset (even)")
    parser.add_argument(
        "--objectives",
        type=_objectives,
        default=["dino", "ijepa", "mae"],
        metavar="A,B",
        help=f"the study's arms, one objective each (of {', '.join(DEMO_OBJECTIVES)})",
    )


def demo_study(work: Path, objectives: list[str], steps: int, seed: int) -> dict[str, Any]:
    """The study config the demo runs (written to WORKDIR/study.yaml; configs/study/demo.yaml is its twin)."""
    overrides: dict[str, dict[str, Any]] = {
        "dino": {"objective": {"out_dim": 512, "hidden_dim": 256}, "views": {"n_local": 2}},
        "dinov3": {"objective": {"out_dim": 512, "hidden_dim": 256}, "views": {"n_local": 2}},
        "simclr": {"objective": {"proj_hidden_dim": 256}},
        "mae": {"objective": {"decoder_dim": 96}},
    }
    return {
        "name": "demo",
        "datasets": [
            {"name": name, "store": str(work / "bench" / name), "modality": _modality(kind), "kind": "frames"}
            for name, kind, _ in BENCH
        ],
        "arms": [
            {"name": o, "objective": o, **({"overrides": overrides[o]} if o in overrides else {})} for o in objectives
        ],
        "seeds": [seed],
        "steps": steps,
        "backbone": {"arch": "vit_tiny", "img_size": SIZE, "patch_size": 8, "depth": 3},
        "pretrain": {
            "data": {"clip": {"size": SIZE}},
            "train": {
                "batch_size": 32,
                "num_workers": 1,
                "cpus_per_worker": 0.75,
                "data_cpus": 0.25,
                "log_every": 10,
                "checkpoint_every": max(steps // 2, 1),
                "schedule": {"lr": 1e-3, "warmup_steps": max(1, steps // 10)},
            },
        },
        "evaluate": {"n_bootstrap": 1000, "shots": [1, 5], "fewshot_repeats": 3, "alignment_images": 0},
        "storage": str(work / "studies"),
        "registry": str(work / "registry"),
    }


def _modality(bench_kind: str) -> str:
    return "histopathology" if bench_kind == "histology" else bench_kind


def _bench(work: Path, items: int, seed: int) -> None:
    from pretextlab.jobs import bench_data

    parser = argparse.ArgumentParser()
    bench_data.add_arguments(parser)
    for name, kind, locality in BENCH:
        dest = work / "bench" / name
        if (dest / "bench-data.json").is_file():
            have = json.loads((dest / "bench-data.json").read_text())
            want = {"items": items, "size": SIZE, "seed": seed, "locality": locality}
            if any(have.get(k) != v for k, v in want.items()):
                raise UserError(
                    f"{dest} holds a benchmark made with other settings "
                    f"({', '.join(f'{k} {have.get(k)}' for k in want)}); delete it or use another --workdir"
                )
            print(f"      {dest}: already generated")
            continue
        flags = [str(dest), "--modality", kind, "--locality", str(locality), "--items", str(items)]
        code = bench_data.run(parser.parse_args([*flags, "--size", str(SIZE), "--seed", str(seed)]))
        if code:
            raise SystemExit(code)


def run(args: argparse.Namespace) -> int:
    from pretextlab.cluster import init_ray
    from pretextlab.jobs.study import plan_study, render_verdicts, run_study
    from pretextlab.storage import read_catalog
    from pretextlab.study import load_study

    t0 = time.perf_counter()
    work = Path(args.workdir).absolute()
    raw = work / "raw"
    print(f"[1/4] generating sample data in {raw}")
    made = make_sample_set(raw, seed=args.seed, liver_loops=12)
    print(f"      {len(made['slides'])} slides, {len(made['cines'])} cine loops, {len(made['npz'])} NPZ archive")
    dest = work / "zarr"
    print(f"[2/4] ingesting into {dest} (local Ray cluster; the README's tour uses this store)")
    init_ray(log_to_driver=False)  # the demo prints its own progress; worker errors still reach the driver
    report = run_ingest(
        IngestConfig(
            sources=[str(raw / "slides"), str(raw / "ultrasound"), str(raw / "tiles")],
            dest=str(dest),
            labels=str(made["labels"][0]),
        ),
        progress=False,
    )
    print(report.render())
    if not report.ok:
        return 1
    print(f"      catalog: {summarize(read_catalog(str(dest)))}")
    print(f"[3/4] the controlled benchmark in {work / 'bench'}: label in global anatomy (ultrasound), local (H&E)")
    _bench(work, args.items, args.seed)
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(demo_study(work, args.objectives, args.steps, args.seed), sort_keys=False))
    arms = ", ".join(args.objectives)
    print(f"[4/4] study {path}: 2 datasets x ({arms} + random init), {args.steps} steps each on Ray Train")
    plan = plan_study(load_study(str(path)), str(path))
    plan.command = f"pretextlab study {path}"
    result = run_study(plan)
    print()
    print(render_verdicts(result))
    print()
    print(
        f"done in {time.perf_counter() - t0:.0f} s. Encoders: {work / 'registry'}; "
        f"TensorBoard: tensorboard --logdir {work / 'studies'}; more steps or seeds: "
        f"pretextlab study {path} name=demo-long steps=500 'seeds=[0,1,2]'"
    )
    return 1 if result.failed else 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.demo"))
