"""An evaluation set's images, read when a batch asks for them, so memory does not grow with the set.

Why: a collection of 100,000 tiles held as one (N, H, W, C) array before embedding is gigabytes at the
encoder's size; features are all evaluation keeps. ``EvalImages`` indexes like that array
(``images[a:b]``, ``images[rows]``, ``len``, ``shape``) and reads only the rows asked for: image-stack
rows from their Zarr arrays (a batch of one shard is one orthogonal read of the chunks it needs),
other rows (cine frames, slide patches: few per item) from a list read once. Each row is brought to
uint8 (the top 8 of its stored bits), resized to ``size`` when given, and made RGB when the set mixes
1- and 3-channel images, exactly as the eager reader did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretextlab.storage.pixels import to_uint8

#: one stack split: its (N, C, Y, X) images array (a zarr array: metadata only) and its stored bits
Stack = tuple[Any, int]


def _rows(index: Any, n: int) -> np.ndarray:
    """``index`` (int, slice, list or array of ints or bools) as an array of row numbers in [0, n)."""
    if isinstance(index, slice):
        return np.arange(n)[index]
    rows = np.asarray(index)
    if rows.dtype == bool:
        return np.flatnonzero(rows)
    rows = rows.astype(np.int64).reshape(-1)
    rows = np.where(rows < 0, rows + n, rows)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"row index out of range for {n} images")
    return rows


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one (H, W, C) uint8 image to (size, size, C): bilinear with antialiasing, rounded back to uint8."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _fit(image: np.ndarray, size: int | None, channels: int) -> np.ndarray:
    if size is not None:
        image = resize_uint8(image, size)
    if image.shape[2] != channels:
        image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    return image


class EvalImages:
    """(N, H, W, C) uint8 images of an evaluation set; rows are read on indexing, never all at once.

    Built by :func:`pretextlab.evaluate.dataset.load_eval_set`. ``source[i]`` is the stack a row comes
    from (-1: the in-memory list ``held``) and ``pos[i]`` its index there.
    """

    def __init__(
        self,
        stacks: Sequence[Stack],
        held: list[np.ndarray],
        source: np.ndarray,
        pos: np.ndarray,
        hw: tuple[int, int],
        channels: int,
        size: int | None,
    ):
        self.stacks = list(stacks)
        self.held = held
        self.source = np.asarray(source, dtype=np.int64)
        self.pos = np.asarray(pos, dtype=np.int64)
        self.channels = channels
        self.size = size
        self.hw = (size, size) if size is not None else hw

    # -- the array interface evaluation uses ------------------------------------------------------
    def __len__(self) -> int:
        return len(self.source)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.hw[0], self.hw[1], self.channels)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 4

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):  # images[rows, ...]: read the rows, then index the rest in memory
            rows = self[index[0]]
            return rows[index[1:]] if isinstance(index[0], int | np.integer) else rows[(slice(None), *index[1:])]
        if isinstance(index, int | np.integer):
            return self.take(np.array([int(index)]))[0]
        return self.take(_rows(index, len(self)))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every row at once (what ``np.asarray`` asks for): only for small sets and tests."""
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def __iter__(self):  # row by row, as an ndarray iterates
        for start in range(0, len(self), 256):
            yield from self.take(np.arange(start, min(start + 256, len(self))))

    # -- reading ------------------------------------------------------------------------------------
    def take(self, rows: np.ndarray) -> np.ndarray:
        """The images of ``rows`` (in that order) as one (len(rows), H, W, C) uint8 array."""
        out = np.empty((len(rows), self.hw[0], self.hw[1], self.channels), np.uint8)
        src, pos = self.source[rows], self.pos[rows]
        for k in np.unique(src):
            at = np.flatnonzero(src == k)
            if k < 0:
                for j in at:
                    out[j] = _fit(self.held[pos[j]], self.size, self.channels)
                continue
            arr, bits = self.stacks[int(k)]
            want = pos[at]
            order = np.unique(want)  # zarr reads each needed chunk once, in order
            lo, hi = int(order[0]), int(order[-1]) + 1
            block = arr[lo:hi] if hi - lo == len(order) else arr.oindex[order]
            where = np.searchsorted(order, want)
            for j, w in zip(at, where, strict=True):
                plane = np.ascontiguousarray(block[w].transpose(1, 2, 0))
                out[j] = _fit(to_uint8(plane, bits), self.size, self.channels)
        return out


def join_images(parts: Sequence[Any]) -> Any:
    """Several image sets (arrays or :class:`EvalImages` of one row shape) as one, rows in order
    (external transfer). Arrays become held rows; every part's stacks are still read on demand."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(list(parts))
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"image sets of different shapes cannot be joined: {sorted(shapes)}")
    h, w, channels = shapes.pop()
    stacks: list[Stack] = []
    held: list[np.ndarray] = []
    source, pos = [], []
    size = None
    for p in parts:
        if isinstance(p, np.ndarray):
            source.append(np.full(len(p), -1))
            pos.append(np.arange(len(held), len(held) + len(p)))
            held.extend(p)
            continue
        size = size or p.size
        source.append(np.where(p.source < 0, -1, p.source + len(stacks)))
        pos.append(np.where(p.source < 0, p.pos + len(held), p.pos))
        stacks.extend(p.stacks)
        held.extend(p.held)
    return EvalImages(stacks, held, np.concatenate(source), np.concatenate(pos), (h, w), channels, size)
