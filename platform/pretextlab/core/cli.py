"""The command convention every ``pretextlab`` subcommand follows, and running one as its own program.

A command module has a docstring (its ``--help`` text), ``add_arguments(parser)`` and ``run(args) -> int``.
User mistakes (``UserError``) print one line and exit with the error's code (2), no traceback; Ctrl-C
exits 130. ``python -m pretextlab.jobs.<name>`` and the ``pretextlab`` command share this code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from pretextlab.core.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line (plus usage) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def describe(module: ModuleType, fallback: str = "") -> str:
    """The command's description: its module docstring."""
    return (module.__doc__ or fallback).strip()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt() -> None:
    """Handle SIGTERM (what systemd, ``docker stop`` and Kubernetes send) as SIGINT: a KeyboardInterrupt in
    the main thread, so every long-running command stops the way Ctrl-C stops it. Call it again after
    ``ray.init``, whose driver handler exits abruptly (seen: exit 134 with a native stack dump)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def dispatch(args: argparse.Namespace) -> int:
    """Run ``args._module.run(args)``: UserError -> one line + its exit code, Ctrl-C or SIGTERM -> 130
    (commands that drain, like ``serve``, catch the interrupt themselves and exit 0)."""
    sigterm_as_interrupt()
    try:
        return int(args._module.run(args) or 0)
    except UserError as exc:
        print(f"pretextlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pretextlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`pretextlab catalog ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose pipe closed


def run_module(module: str, argv: Sequence[str] | None = None) -> int:
    """Run the command module ``module`` as its own program (``python -m <module>``)."""
    mod = importlib.import_module(module)
    parser = Parser(
        prog=f"python -m {module}", description=describe(mod), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mod.add_arguments(parser)
    args = parser.parse_args(argv)
    args._module = mod
    return dispatch(args)
