"""Which frames or clips to read from cine loops, and how frames are brought to one size. Pure: no Ray."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True)
class FrameRef:
    """``frames`` frames of cine loop ``item_id`` from ``start``, every ``stride``-th (one frame: 1, 1)."""

    item_id: str
    start: int
    frames: int = 1
    stride: int = 1
    label: Any = None

    @property
    def indices(self) -> range:
        """The frame indices this sample reads."""
        return range(self.start, self.start + clip_span(self.frames, self.stride), self.stride)


def clip_span(frames: int, stride: int) -> int:
    """Frames a clip of ``frames`` frames at ``stride`` covers in its loop, first to last."""
    return (frames - 1) * stride + 1


def loop_refs(item_id: str, length: int, frames: int, stride: int, hop: int, label: Any = None) -> list[FrameRef]:
    """Every clip of a loop of ``length`` frames whose span fits, starting ``hop`` frames apart."""
    last = length - clip_span(frames, stride)
    return [FrameRef(item_id, t, frames, stride, label) for t in range(0, last + 1, hop)] if last >= 0 else []


def _window(n: int, size: int, anchor: str) -> tuple[int, int]:
    """(offset into the source, offset into the output) along one axis of length n -> size."""
    off = 0 if anchor == "top" else abs(n - size) // 2
    return (off, 0) if n >= size else (0, off)


def fit_frames(x: np.ndarray, size: int | None, anchor: Literal["center", "top"] = "center") -> np.ndarray:
    """Crop or zero-pad (..., Y, X, C) frames to (..., size, size, C); ``None`` returns them unchanged.

    Columns are cropped / padded evenly on both sides. Rows too with ``anchor='center'``; with 'top'
    row 0 (the probe surface) is kept and rows are cropped / padded at the bottom.
    """
    if size is None:
        return x
    h, w = x.shape[-3], x.shape[-2]
    (sy, oy), (sx, ox) = _window(h, size, anchor), _window(w, size, "center")
    ch, cw = min(h, size), min(w, size)
    out = np.zeros((*x.shape[:-3], size, size, x.shape[-1]), dtype=x.dtype)
    out[..., oy : oy + ch, ox : ox + cw, :] = x[..., sy : sy + ch, sx : sx + cw, :]
    return out
