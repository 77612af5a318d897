"""Errors that are the user's to fix: the CLI prints them as one line and exits 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (a path, a flag, a config field, a file's contents).

    The message must name the thing that is wrong and say what is wrong with it.
    """

    exit_code: int = 2
