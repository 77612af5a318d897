"""What a run prints: Ray Data's progress bars only on a terminal or when asked (``--verbose``).

Why: from a script, CI or a Ray job (no TTY), Ray Data's bars print hundreds of escape-sequence
lines; the CLI's own progress and summary lines are what a user reads there (issue 13, part 6).
``pretextlab --verbose CMD`` (or ``PRETEXTLAB_VERBOSE=1``) turns them back on.
"""

from __future__ import annotations

import os
import sys

VERBOSE_ENV = "PRETEXTLAB_VERBOSE"
_RAY_DATA_ENV = "RAY_DATA_DISABLE_PROGRESS_BARS"


def verbose() -> bool:
    """True when the user asked for verbose output."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def ray_data_progress_bars(tty: bool | None = None) -> bool:
    """Whether Ray Data may draw progress bars: on a TTY (stderr) or in verbose mode."""
    if tty is None:
        tty = sys.stderr.isatty()
    return bool(tty) or verbose()


def configure_ray_data_progress(tty: bool | None = None) -> bool:
    """Apply the policy before Ray starts: the environment (inherited by local Ray workers, read
    when Ray Data is imported) and, when Ray Data is already imported, the current DataContext
    (which travels with every dataset to a remote cluster). Returns whether bars are on."""
    enabled = ray_data_progress_bars(tty)
    os.environ[_RAY_DATA_ENV] = "0" if enabled else "1"
    if "ray.data" in sys.modules:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = enabled
    return enabled
