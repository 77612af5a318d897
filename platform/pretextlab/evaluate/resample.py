"""Bootstrap resampling as counts: how often each test row (or each group of rows) is drawn.

A bootstrap resample of N rows drawn with replacement is fully described by how many times each row
was drawn, so every metric in this package is computed from (B, N) count weights rather than from
(B, N) index arrays. The same representation gives the *cluster* (group) bootstrap of Davison &
Hinkley (1997, sec. 3.8) and Field & Welsh (2007): draw G groups with replacement out of the G
groups, and give every row the count of its group, so a drawn patient / slide / source image / cine
loop keeps all of its rows. When rows of one group are correlated (16 patches of one tile, the frames
of one loop), resampling rows treats them as independent and the interval comes out too narrow; only
resampling the independent units gives the right width.

Without groups, every row is its own group and the draws are exactly those of the row bootstrap
``rng.integers(0, N, size=(B, N))``, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Groups:
    """Row -> group index (``ids``, values 0..G-1 in order of first sort), the group count and sizes."""

    ids: np.ndarray
    count: int
    sizes: np.ndarray
    resampled: bool

    @property
    def unit(self) -> str:
        """What one bootstrap draw picks: ``"group"`` (cluster bootstrap) or ``"sample"`` (row bootstrap)."""
        return "group" if self.resampled else "sample"


def group_index(groups: Any | None, n: int) -> Groups:
    """Integer group ids for ``n`` rows; ``None`` (or one row per group) makes every row its own group.

    Raises ``ValueError`` when ``groups`` does not have ``n`` entries.
    """
    if groups is None:
        return Groups(np.arange(n), n, np.ones(n, dtype=np.int64), False)
    g = np.asarray(groups).ravel()
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries but there are {n} rows")
    if g.dtype.kind not in "iub":
        g = g.astype(str)
    _, ids = np.unique(g, return_inverse=True)
    ids = ids.astype(np.int64).ravel()
    count = int(ids.max()) + 1 if n else 0
    sizes = np.bincount(ids, minlength=count)
    return Groups(ids, count, sizes, bool(count < n))


def bootstrap_counts(
    n_units: int, n_boot: int, rng: np.random.Generator, max_cells: int = 4_000_000
) -> Iterator[np.ndarray]:
    """Yield (b, n_units) int64 arrays: how often each unit is drawn in each of ``n_boot`` resamples.

    Each resample draws ``n_units`` units with replacement (``rng.integers(0, n_units, (b, n_units))``,
    chunked so that no chunk holds more than ``max_cells`` draws).
    """
    if n_units < 1:
        raise ValueError("nothing to resample: no rows")
    chunk = max(1, min(n_boot, max_cells // n_units))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n_units, size=(b, n_units))
        flat = (np.arange(b)[:, None] * n_units + idx).ravel()
        yield np.bincount(flat, minlength=b * n_units).reshape(b, n_units)
        done += b


def percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    """The (lower, upper) percentile interval of finite bootstrap values; NaNs when there are none."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return float(lo), float(hi)
