"""The laptop demo: generate a small sample set, ingest it, pretrain two objectives briefly on Ray
Train, evaluate both (and a random-init baseline) with kNN, print the comparison table.

    pretextlab demo [--workdir demo-data] [--steps 60] [--objectives ijepa,mae]

Everything stays under WORKDIR: ``raw/`` (generated sources), ``zarr/`` (the store), ``runs/``
(checkpoints, TensorBoard), ``registry/`` (the encoders). The two objectives train on ultrasound
frames: the study's question of a predictive (I-JEPA) against a pixel (MAE) objective on speckle.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from pretextlab.jobs.catalog import summarize
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage.synthetic import make_sample_set

DEMO_OBJECTIVES = ("ijepa", "mae", "dino", "simclr", "vicreg")


def _objectives(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in DEMO_OBJECTIVES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(DEMO_OBJECTIVES)} (got {text!r})")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="demo-data", help="where raw samples, store, runs and registry go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60, help="pretraining steps per objective")
    parser.add_argument(
        "--objectives",
        type=_objectives,
        default=["ijepa", "mae"],
        metavar="A,B",
        help=f"objectives to compare (of {', '.join(DEMO_OBJECTIVES)})",
    )


def demo_config(objective: str, work: Path, steps: int, seed: int) -> dict[str, Any]:
    """A laptop-sized ultrasound-frames run (as configs/pretrain/us-*.yaml)."""
    extra: dict[str, Any] = {
        "dino": {"out_dim": 512, "hidden_dim": 256},
        "simclr": {"proj_hidden_dim": 256},
        "mae": {"decoder_dim": 96},
    }.get(objective, {})
    return {
        "name": f"demo-{objective}",
        "modality": "ultrasound",
        "data": {
            "kind": "frames",
            "sources": [{"uri": str(work / "zarr"), "modality": "ultrasound"}],
            "clip": {"size": 96, "anchor": "top"},
            "seed": seed,
        },
        "objective": {
            "name": objective,
            "backbone": {"arch": "vit_tiny", "img_size": 48, "patch_size": 8, "depth": 3, "global_pool": "avg"},
            **extra,
        },
        "views": {"n_local": 2} if objective == "dino" else {},
        "train": {
            "steps": steps,
            "batch_size": 32,
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "data_cpus": 0.5,
            "log_every": 10,
            "checkpoint_every": steps,
            "seed": seed,
            "schedule": {"lr": 1e-3, "warmup_steps": max(1, steps // 10)},
        },
        "storage": str(work / "runs"),
        "registry": str(work / "registry"),
    }


def _random_init(cfg: Any, work: Path) -> Path:
    """The same encoder untrained: the baseline every objective must beat."""
    import torch

    from pretextlab.models import save_encoder
    from pretextlab.training.setup import check, encoder_card

    torch.manual_seed(cfg.train.seed)
    objective, views = check(cfg)
    card = encoder_card(cfg, objective, views, name="random-init")
    folder = work / "baseline" / "random-init"
    save_encoder(objective.encoder(), card.model_copy(update={"objective": "random init"}), folder)
    return folder


def comparison_table(rows: list[tuple[str, dict[str, Any], float | None]]) -> str:
    """objective | kNN accuracy [CI] | balanced acc | linear acc | RankMe | train s."""
    from pretextlab.evaluate.report import _cell

    head = ["encoder", "kNN acc [95% CI]", "kNN bal. acc", "linear acc", "RankMe", "train s"]
    body = []
    for name, res, seconds in rows:
        knn, lin = res["knn"]["metrics"], res["linear"]["metrics"]
        body.append(
            [
                name,
                _cell(knn.get("accuracy")),
                f"{knn['balanced_accuracy']['value']:.3f}",
                f"{lin['accuracy']['value']:.3f}",
                f"{res['diagnostics']['rankme']:.1f}",
                "-" if seconds is None else f"{seconds:.0f}",
            ]
        )
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [head, *body])


def run(args: argparse.Namespace) -> int:
    from pretextlab.cluster import init_ray
    from pretextlab.evaluate import EvaluateConfig, evaluate_encoder
    from pretextlab.jobs.pretrain import run_pretrain
    from pretextlab.storage import read_catalog
    from pretextlab.training.config import PretrainConfig

    t0 = time.perf_counter()
    work = Path(args.workdir).absolute()
    raw = work / "raw"
    print(f"[1/4] generating sample data in {raw}")
    made = make_sample_set(raw, seed=args.seed, liver_loops=12)
    print(f"      {len(made['slides'])} slides, {len(made['cines'])} cine loops, {len(made['npz'])} NPZ archive")
    dest = work / "zarr"
    print(f"[2/4] ingesting into {dest} (local Ray cluster)")
    init_ray(log_to_driver=False)  # the demo prints its own progress; worker errors still reach the driver
    report = run_ingest(
        IngestConfig(
            sources=[str(raw / "slides"), str(raw / "ultrasound"), str(raw / "tiles")],
            dest=str(dest),
            labels=str(made["labels"][0]),
        )
    )
    print(report.render())
    if not report.ok:
        return 1
    print(f"      catalog: {summarize(read_catalog(str(dest)))}")
    rows: list[tuple[str, str, float | None]] = []
    cfgs = []
    for i, name in enumerate(args.objectives):
        cfg = PretrainConfig.model_validate(demo_config(name, work, args.steps, args.seed))
        cfgs.append(cfg)
        print(
            f"[3/4] pretraining {name} on ultrasound frames: {args.steps} steps, 2 Ray Train workers "
            f"({i + 1}/{len(args.objectives)})"
        )
        try:
            res = run_pretrain(cfg)
        except Exception as exc:  # an already-finished demo run: reuse its encoder
            from pretextlab.core.errors import UserError

            if not (isinstance(exc, UserError) and "already finished" in str(exc)):
                raise
            from pretextlab.registry import EncoderRegistry

            ref = EncoderRegistry(cfg.registry).resolve(cfg.name)
            print(f"      {cfg.name} already trained: {ref.id}")
            rows.append((name, ref.uri, None))
            continue
        print(
            f"      {res.seconds:.0f} s: loss {res.metrics['loss']:.4f}, {res.metrics['images_per_s']:.0f} images/s, "
            f"encoder {res.encoder.id}"
        )
        rows.append((name, res.encoder.uri, res.seconds))
    print("[4/4] evaluating frozen features on the labelled cine loops (kNN, linear probe)")
    ev = EvaluateConfig(
        modality="ultrasound",
        cine_frame_step=2,
        shots=[1],
        fewshot_repeats=1,
        n_bootstrap=200,
        alignment_images=0,
        k=10,
    )
    results: list[tuple[str, dict[str, Any], float | None]] = [
        ("random init", evaluate_encoder(_random_init(cfgs[0], work), str(dest), ev), None)
    ]
    for name, uri, seconds in rows:
        results.append((name, evaluate_encoder(uri, str(dest), ev), seconds))
    split = results[0][1]["split"]
    print(
        f"      {results[0][1]['dataset']['n_samples']} images of "
        f"{results[0][1]['dataset']['n_items']} labelled ultrasound items; "
        f"{split['strategy']}: {split['n_train']} train / {split['n_test']} test"
    )
    print()
    print(comparison_table(results))
    print()
    print(
        f"done in {time.perf_counter() - t0:.0f} s. Encoders: {work / 'registry'}; "
        f"TensorBoard: tensorboard --logdir {work / 'runs'}"
    )
    return 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.demo"))
