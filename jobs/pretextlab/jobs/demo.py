"""The laptop demo: generate a small sample set, ingest it on a local Ray cluster, print the catalog.

    pretextlab demo [--workdir demo-data]

Everything stays under WORKDIR: ``raw/`` (generated sources), ``zarr/`` (the store).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretextlab.jobs.catalog import render, summarize
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage.synthetic import make_sample_set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="demo-data", help="where raw samples and the store go")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir).absolute()
    raw = work / "raw"
    print(f"[1/3] generating sample data in {raw}")
    made = make_sample_set(raw, seed=args.seed)
    print(f"      {len(made['slides'])} slides, {len(made['cines'])} cine loops, {len(made['npz'])} NPZ archive")
    dest = work / "zarr"
    print(f"[2/3] ingesting into {dest} (local Ray cluster)")
    cfg = IngestConfig(sources=[str(raw / "slides"), str(raw / "ultrasound"), str(raw / "tiles")],
                       dest=str(dest), labels=str(made["labels"][0]))
    report = run_ingest(cfg)
    print(report.render())
    from pretextlab.storage import read_catalog

    df = read_catalog(str(dest))
    print(f"[3/3] catalog: {summarize(df)}")
    print(render(df.head(20)))
    if len(df) > 20:
        print(f"... {len(df) - 20} more rows: pretextlab catalog {dest}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    from pretextlab.jobs.cli import run_command

    sys.exit(run_command("demo"))
