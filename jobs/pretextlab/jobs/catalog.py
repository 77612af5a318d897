"""Print the catalog of a store; optionally attach a labels CSV (rewrites catalog.parquet).

pretextlab catalog DEST [--labels labels.csv] [--format table|csv|json] [--all-columns] [--limit N]

The table shows a summary line (items per kind, labelled rows, classes, splits) and the first
``--limit`` rows (default 50; 0: every row), so a 100,000-image collection answers at once;
``--format csv`` and ``--format json`` always write every row, for other tools.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from pretextlab.core.errors import UserError
from pretextlab.storage.catalog import COLUMNS, read_catalog, rebuild_catalog

DEFAULT_COLUMNS = ["item_id", "kind", "modality", "shape", "levels", "mpp", "frames", "label", "split", "patient_id"]


#: rows the table shows unless --limit says otherwise
TABLE_ROWS = 50


def _counts(values: pd.Series, most: int = 6) -> str:
    """ "a 5,000, b 4,998" for the commonest values, "+ N more" past ``most``."""
    counts = values.value_counts()
    shown = ", ".join(f"{k} {n:,}" for k, n in counts.head(most).items())
    return shown + (f", + {len(counts) - most} more" if len(counts) > most else "")


def summarize(df: pd.DataFrame) -> str:
    """One line: rows per kind, labelled rows and their classes, splits."""
    if df.empty:
        return "0 items"
    kinds = ", ".join(f"{n:,} {k}" for k, n in df["kind"].value_counts().sort_index().items())
    line = f"{len(df):,} items ({kinds})"
    labels = df["label"].dropna() if "label" in df else pd.Series([], dtype=object)
    line += f"; {len(labels):,} labelled" + (f" ({_counts(labels.astype(str))})" if len(labels) else "")
    splits = df["split"].dropna() if "split" in df else pd.Series([], dtype=object)
    if len(splits):
        line += f"; splits: {_counts(splits.astype(str))}"
    return line


def render(df: pd.DataFrame, fmt: str = "table", all_columns: bool = False, limit: int = 0) -> str:
    """The catalog as text. ``limit`` > 0 shows the table's first ``limit`` rows and says how many more."""
    more = 0
    if fmt == "table" and 0 < limit < len(df):
        more, df = len(df) - limit, df.head(limit)
    if fmt == "json":
        return df.to_json(orient="records", indent=1, default_handler=str)
    label_extras = [c for c in df.columns if c not in COLUMNS]  # columns a labels CSV added
    cols = list(df.columns) if all_columns else [c for c in DEFAULT_COLUMNS if c in df.columns] + label_extras
    view = df[cols]
    if fmt == "table":  # one placeholder for every kind of missing value (NaN, None, pandas NA)
        view = view.astype(object).where(view.notna(), "-")
    if fmt == "csv":
        return view.to_csv(index=False).rstrip("\n")
    with pd.option_context("display.max_colwidth", 40, "display.width", 200):
        text = view.to_string(index=False, na_rep="-")
    if more:
        text += f"\n... {more:,} more rows (--limit 0 shows every row; --format csv|json writes them all)"
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", metavar="DEST", help="store: local folder or s3://bucket/prefix")
    parser.add_argument("--labels", metavar="CSV", help="attach labels (keyed by item_id or source)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild catalog.parquet from the items")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    parser.add_argument("--all-columns", action="store_true", help="print every column")
    parser.add_argument(
        "--limit",
        type=int,
        default=TABLE_ROWS,
        metavar="N",
        help=f"table rows to show (default {TABLE_ROWS}; 0: all); csv and json always hold every row",
    )


def run(args: argparse.Namespace) -> int:
    if args.labels or args.rebuild:
        df, unmatched = rebuild_catalog(args.dest, args.labels)
        if unmatched:
            print(f"warning: {len(unmatched)} label rows match no item: {', '.join(unmatched[:5])}", file=sys.stderr)
    else:
        df = read_catalog(args.dest)
    if args.limit < 0:
        raise UserError(f"--limit {args.limit}: give 0 (every row) or a positive number of rows")
    if df.empty and not args.rebuild:
        raise UserError(f"{args.dest}: the catalog is empty (no complete items)")
    if args.format == "table":
        print(summarize(df))
    print(render(df, args.format, args.all_columns, args.limit))
    return 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.catalog"))
