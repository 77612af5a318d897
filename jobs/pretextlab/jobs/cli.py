"""The ``pretextlab`` command: one entry point, a subcommand per job.

User mistakes (bad flags, missing files, invalid config) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pretextlab.core.errors import UserError

#: subcommand -> (module, one-line help). Modules define add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("pretextlab.jobs.ingest", "ingest slides and cine loops into a Zarr store (Ray tasks)"),
    "catalog": ("pretextlab.jobs.catalog", "print (and re-label) the catalog of a store"),
    "demo": ("pretextlab.jobs.demo", "sample data -> ingest -> pretrain two objectives -> kNN comparison table"),
    "pretrain": ("pretextlab.jobs.pretrain", "pretrain an encoder with Ray Train (checkpoints, resume, encoder registry)"),
    "evaluate": ("pretextlab.jobs.evaluate", "evaluate a saved encoder on a labelled catalog (kNN, linear probe, few-shot)"),
    "serve": ("pretextlab.jobs.serve", "serve registered encoders over HTTP (Ray Serve): embeddings, regions, models"),
    "sweep": ("pretextlab.jobs.sweep", "sweep objective hyperparameters with Ray Tune (ASHA, resume, summary, chosen encoder)"),
    "embed": ("pretextlab.jobs.embed", "embed every slide patch / cine frame of a catalog into feature bags (Ray Data)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line (plus usage) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pretextlab")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pretextlab",
        description="Train, compare and serve self-supervised encoders for medical imaging on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"pretextlab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return int(args._module.run(args) or 0)
    except UserError as exc:
        print(f"pretextlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pretextlab: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _dispatch(args)


def run_command(name: str, argv: Sequence[str] | None = None) -> int:
    """Run one subcommand as its own program (``python -m pretextlab.jobs.<name>``)."""
    module, help_text = COMMANDS[name]
    mod = importlib.import_module(module)
    parser = _Parser(prog=f"python -m {module}", description=(mod.__doc__ or help_text).strip(),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mod.add_arguments(parser)
    args = parser.parse_args(argv)
    args._module = mod
    return _dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
