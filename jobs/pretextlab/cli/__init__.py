"""The ``pretextlab`` command: one entry point, a subcommand per job or service.

This package sits above both ``pretextlab.jobs`` (Ray jobs) and ``pretextlab.serving`` (the HTTP
services), which never import each other; it names each subcommand's module and imports it to build
the parser. User mistakes (bad flags, missing files, invalid config) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pretextlab.core.cli import Parser, describe, dispatch

#: subcommand -> (module, one-line help). Modules define add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": (
        "pretextlab.jobs.ingest",
        "ingest slides, cine loops and folders of images into a Zarr store (Ray tasks)",
    ),
    "catalog": ("pretextlab.jobs.catalog", "print (and re-label) the catalog of a store"),
    "demo": ("pretextlab.jobs.demo", "sample data -> ingest -> pretrain two objectives -> kNN comparison table"),
    "pretrain": (
        "pretextlab.jobs.pretrain",
        "pretrain an encoder with Ray Train (checkpoints, resume, encoder registry)",
    ),
    "evaluate": (
        "pretextlab.jobs.evaluate",
        "evaluate a saved encoder on a labelled catalog (kNN, linear probe, few-shot)",
    ),
    "serve": ("pretextlab.serving.cli", "serve registered encoders over HTTP (Ray Serve): embeddings, regions, models"),
    "sweep": (
        "pretextlab.jobs.sweep",
        "sweep objective hyperparameters with Ray Tune (ASHA, resume, summary, chosen encoder)",
    ),
    "embed": (
        "pretextlab.jobs.embed",
        "embed every slide patch, cine frame and still of a catalog into feature bags (Ray Data)",
    ),
    "bench-data": (
        "pretextlab.jobs.bench_data",
        "generate the controlled benchmark (phantoms with known signal layout) as a store",
    ),
    "recommend": ("pretextlab.jobs.recommend", "profile a store and recommend a pretext objective, with the evidence"),
    "study": ("pretextlab.jobs.study", "compare objectives per dataset: a grid of pretrain + evaluate cells, a report"),
    "review": (
        "pretextlab.review.cli",
        "blinded clinician review of feature maps (web app): serve, create, invite, report",
    ),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pretextlab")
    except PackageNotFoundError:
        return "unknown"


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one), else None."""
    for word in argv:
        if word in COMMANDS:
            return word
        if not word.startswith("-"):
            return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``pretextlab`` parser. Only the chosen subcommand's module is imported (to add its arguments):
    a command's start-up then costs its own imports, not every command's (``catalog`` does not import
    torch or Ray). With ``argv`` None every subcommand is built in full (docs, completion, tests)."""
    parser = Parser(
        prog="pretextlab",
        description="Train, compare and serve self-supervised encoders for medical imaging on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"pretextlab {_version()}")
    parser.add_argument(
        "--verbose", action="store_true", help="also show Ray Data's progress bars when not on a terminal"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    chosen = None if argv is None else _chosen(argv)
    for name, (module, help_text) in COMMANDS.items():
        if argv is not None and name != chosen:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(
            name,
            help=help_text,
            description=describe(mod, help_text),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    if args.verbose:
        from pretextlab.cluster.console import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
