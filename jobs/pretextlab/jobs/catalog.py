"""Print the catalog of a store; optionally attach a labels CSV (rewrites catalog.parquet).

pretextlab catalog DEST [--labels labels.csv] [--format table|csv|json] [--all-columns]
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from pretextlab.core.errors import UserError
from pretextlab.storage.catalog import COLUMNS, read_catalog, rebuild_catalog

DEFAULT_COLUMNS = ["item_id", "kind", "modality", "shape", "levels", "mpp", "frames", "label", "split", "patient_id"]


def summarize(df: pd.DataFrame) -> str:
    if df.empty:
        return "0 items"
    kinds = ", ".join(f"{n} {k}" for k, n in df["kind"].value_counts().sort_index().items())
    labelled = int(df["label"].notna().sum()) if "label" in df else 0
    return f"{len(df)} items ({kinds}); {labelled} labelled"


def render(df: pd.DataFrame, fmt: str = "table", all_columns: bool = False) -> str:
    if fmt == "json":
        return df.to_json(orient="records", indent=1, default_handler=str)
    label_extras = [c for c in df.columns if c not in COLUMNS]  # columns a labels CSV added
    cols = list(df.columns) if all_columns else [c for c in DEFAULT_COLUMNS if c in df.columns] + label_extras
    view = df[cols]
    if fmt == "table":  # one placeholder for every kind of missing value (NaN, None, pandas NA)
        view = view.astype(object).where(view.notna(), "-")
    if fmt == "csv":
        return view.to_csv(index=False)
    with pd.option_context("display.max_rows", 500, "display.max_colwidth", 40, "display.width", 200):
        return view.to_string(index=False, na_rep="-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", metavar="DEST", help="store: local folder or s3://bucket/prefix")
    parser.add_argument("--labels", metavar="CSV", help="attach labels (keyed by item_id or source)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild catalog.parquet from the items")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    parser.add_argument("--all-columns", action="store_true", help="print every column")


def run(args: argparse.Namespace) -> int:
    if args.labels or args.rebuild:
        df, unmatched = rebuild_catalog(args.dest, args.labels)
        if unmatched:
            print(f"warning: {len(unmatched)} label rows match no item: {', '.join(unmatched[:5])}", file=sys.stderr)
    else:
        df = read_catalog(args.dest)
    if df.empty and not args.rebuild:
        raise UserError(f"{args.dest}: the catalog is empty (no complete items)")
    if args.format == "table":
        print(summarize(df))
    print(render(df, args.format, args.all_columns))
    return 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.catalog"))
