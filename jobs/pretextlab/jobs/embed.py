"""Embed every slide patch (tissue-aware grid) and every cine frame of a catalog into per-item feature bags.

    pretextlab embed ENCODER CATALOG --to DEST [--registry ROOT] [--patch-size N] [--level N | --mpp F]
                     [--min-tissue F] [--frame-step N] [--batch-size N] [--concurrency N] [--items ID ...]
    python -m pretextlab.jobs.embed ...                # the same, as a Ray job entrypoint

ENCODER is an encoder folder (model.safetensors + card.json) or, with --registry, a registry spec
("name", "name:<version>", "chosen:<modality>"). Ray Data reads and preprocesses in tasks and embeds on
an actor pool (one GPU per actor when the cluster has GPUs). Each item becomes DEST/h5_files/<id>.h5
(TRIDENT/CLAM layout: features, coords) and DEST/zarr/<id>.zarr, then DEST/done/<id>.json. Rerunning
skips complete items, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("encoder", metavar="ENCODER", help="encoder folder, or a registry spec with --registry")
    parser.add_argument("catalog", metavar="CATALOG", help="store with a catalog (local folder or s3://)")
    parser.add_argument("--to", dest="dest", metavar="DEST", help="output folder or s3:// prefix (required)")
    parser.add_argument("--registry", metavar="ROOT", help="encoder registry root (local or s3://)")
    parser.add_argument("--patch-size", type=int, help="slide patch edge in pixels (default: the encoder's img_size)")
    parser.add_argument("--level", type=int, help="slide pyramid level (default: 0)")
    parser.add_argument("--mpp", type=float, help="read slides at the level nearest this µm/px")
    parser.add_argument("--overlap", type=int, help="grid overlap in pixels (default: 0)")
    parser.add_argument("--min-tissue", type=float, help="minimum tissue share of a patch (default: 0.5)")
    parser.add_argument("--frame-step", type=int, help="every n-th cine frame (default: 1, every frame)")
    parser.add_argument("--items", nargs="+", metavar="ID", help="only these item ids")
    parser.add_argument("--modality", help="only items of this modality")
    parser.add_argument("--batch-size", type=int, help="images per forward (default: 64)")
    parser.add_argument("--concurrency", type=int, help="encoder actors (default: number of GPUs, else 1)")
    parser.add_argument("--actor-cpus", type=float, help="CPUs (and torch threads) per encoder actor (default: 1)")
    parser.add_argument("--address", dest="ray_address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--config", metavar="YAML", help="embed config file (fields of EmbedConfig)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set batch_size=128 (repeatable)",
    )


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    names = [
        "encoder",
        "catalog",
        "dest",
        "registry",
        "patch_size",
        "level",
        "mpp",
        "overlap",
        "min_tissue",
        "frame_step",
        "items",
        "modality",
        "batch_size",
        "concurrency",
        "actor_cpus",
        "ray_address",
    ]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run(args: argparse.Namespace) -> int:
    from pretextlab.core.config import load_config
    from pretextlab.core.errors import UserError
    from pretextlab.jobs.embed_batch import EmbedConfig, run_embed

    if not args.dest and not args.config:
        raise UserError("--to DEST is required (where the feature bags go)")
    cfg = load_config(EmbedConfig, args.config, args.overrides, flags=_flags(args))
    report = run_embed(cfg, progress=not args.no_progress)
    print(report.render())
    return 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.embed"))
