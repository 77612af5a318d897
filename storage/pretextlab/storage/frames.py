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


def working_scale(
    shape: tuple[int, int],
    resize: int | None = None,
    fit: str = "pad",
    spacing: tuple[float, float] | None = None,
    spacing_mm: float | None = None,
) -> tuple[float, float]:
    """(row, column) resampling factors that bring a (H, W) frame to the working resolution.

    ``resize`` S: keep the aspect ratio, make the longer side S (``fit='pad'``, then pad to S x S) or the
    shorter side S (``fit='crop'``, then crop to S x S). ``spacing_mm``: resample the frame from its own
    ``spacing`` (row, column mm/px) to that mm/px on both axes. Neither: (1, 1), no resampling.
    """
    h, w = shape
    if resize is not None:
        s = resize / (max(h, w) if fit == "pad" else min(h, w))
        return (s, s)
    if spacing_mm is not None:
        if spacing is None:
            raise ValueError("no pixel spacing: cannot resample to mm/px")
        return (float(spacing[0]) / spacing_mm, float(spacing[1]) / spacing_mm)
    return (1.0, 1.0)


def resample_frames(x: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """(..., Y, X, C) frames resampled by ``scale`` (row, column): antialiased bilinear, same dtype.

    A choice, never silent: the stream resamples only when ``clip.resize`` or ``clip.spacing_mm`` asks.
    """
    if scale == (1.0, 1.0):
        return x
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-3], x.shape[-2]
    out_h, out_w = max(1, round(h * scale[0])), max(1, round(w * scale[1]))
    if (out_h, out_w) == (h, w):
        return x
    lead = x.shape[:-3]
    t = torch.from_numpy(np.ascontiguousarray(x).reshape(-1, h, w, x.shape[-1])).permute(0, 3, 1, 2).float()
    y = F.interpolate(t, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)
    info = np.iinfo(x.dtype) if np.issubdtype(x.dtype, np.integer) else None
    y = y.round().clamp(info.min, info.max) if info is not None else y
    out = y.permute(0, 2, 3, 1).numpy().astype(x.dtype)
    return out.reshape(*lead, out_h, out_w, x.shape[-1])


def working_frame(frame: np.ndarray, resolution: dict[str, Any], spacing: Any, size: int | None) -> np.ndarray:
    """One (Y, X, C) frame at an encoder's working resolution (its card's ``resolution``): resampled and
    fitted as the training stream did, then cut to ``size`` when the views cropped natively
    (``eval_fit: crop``; else the caller resizes to the encoder size as usual). Without a pixel
    ``spacing``, a spacing_mm resolution keeps the native pixels."""
    has_spacing = spacing is not None and len(spacing) == 2
    if resolution.get("spacing_mm") is not None and not has_spacing:
        scale = (1.0, 1.0)
    else:
        scale = working_scale(
            frame.shape[:2],
            resolution.get("resize"),
            resolution.get("fit", "pad"),
            tuple(spacing) if has_spacing else None,
            resolution.get("spacing_mm"),
        )
    anchor = resolution.get("anchor", "center")
    out = fit_frames(resample_frames(frame, scale), resolution.get("size"), anchor)
    if resolution.get("eval_fit") == "crop" and size is not None:
        out = fit_frames(out, size, anchor)
    return out
