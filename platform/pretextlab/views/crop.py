"""Spatial crops on (B, C, [T,] H, W) tensors: one window per sample, shared by all of its frames."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pretextlab.views import rng


def resized_crop_boxes(
    height: int,
    width: int,
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    g: torch.Generator | None,
) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w) like torchvision's RandomResizedCrop, clamped instead of rejected.

    Area fraction ~ U(scale), aspect ratio log-uniform in ``ratio``; a box too large for the image is
    shrunk (aspect ratio kept) instead of redrawn, so every sample uses the same number of draws
    (determinism) and there is no centre-crop fallback.
    """
    area = rng.uniform((n,), scale[0], scale[1], g).double() * height * width
    log_r = rng.uniform((n,), math.log(ratio[0]), math.log(ratio[1]), g).double()
    r = torch.exp(log_r)
    w, h = torch.sqrt(area * r), torch.sqrt(area / r)
    shrink = torch.minimum(width / w, height / h).clamp(max=1.0)  # fit the image, keep the aspect ratio
    w = (w * shrink).round().clamp(1, width).long()
    h = (h * shrink).round().clamp(1, height).long()
    top = rng.randint_below(height - h.cpu() + 1, g)
    left = rng.randint_below(width - w.cpu() + 1, g)
    return torch.stack([top.cpu(), left.cpu(), h.cpu(), w.cpu()], dim=1)


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize the last two dims of one sample (C, [T,] h, w) to (size, size)."""
    if x.shape[-2:] == (size, size):
        return x
    lead = x.shape[:-2]
    flat = x.reshape(1, -1, *x.shape[-2:])
    if mode == "bilinear":
        shrink = x.shape[-2] > size or x.shape[-1] > size  # antialias only matters when downsampling
        out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    else:
        out = F.interpolate(flat, size=(size, size), mode="nearest-exact")
    return out.reshape(*lead, size, size)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Cut ``boxes`` (top, left, h, w) out of each sample and resize each to (size, size)."""
    out = [_resize(x[b, ..., t : t + h, l : l + w], size, mode) for b, (t, l, h, w) in enumerate(boxes.tolist())]
    return torch.stack(out)


def native_crop(x: torch.Tensor, size: int, g: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (size, size) window per sample at native resolution: no resampling, exact pixels.

    A side shorter than ``size`` is zero-padded: rows at the bottom (the top row stays the probe
    surface) and columns evenly on both sides. Also returns (B, size) source row of each output row
    (padding rows repeat the last row), so depth-dependent ops can follow the frame's depth.
    """
    b, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    h, w = min(size, height), min(size, width)
    top = rng.randint_below(torch.full((b,), height - h + 1, dtype=torch.long), g).to(x.device)
    left = rng.randint_below(torch.full((b,), width - w + 1, dtype=torch.long), g).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, h, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, w)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    win = x[bidx, ..., rows, cols]  # advanced indices first: (B, h, w, C, [T])
    win = win.movedim((1, 2), (-2, -1))  # (B, C, [T,] h, w)
    if (h, w) != (size, size):
        pad_w = size - w
        win = F.pad(win, (pad_w // 2, pad_w - pad_w // 2, 0, size - h))
    src = (top[:, None] + torch.arange(size, device=x.device)).clamp_max(height - 1)
    return win, src


def zoomed_crop(
    x: torch.Tensor, size: int, zoom: tuple[float, float], mode: str, g: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A square window of size/zoom px (zoom ~ U(zoom), clamped to the image) resized to (size, size).

    Also returns the (B, size) source row nearest to each output row, as native_crop does.
    """
    b, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    z = rng.uniform((b,), zoom[0], zoom[1], g).double().cpu()
    side = (size / z).round().clamp(1, min(height, width)).long()
    top = rng.randint_below(height - side + 1, g).cpu()
    left = rng.randint_below(width - side + 1, g).cpu()
    boxes = torch.stack([top, left, side, side], dim=1)
    centre = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    src = (top[:, None] + (centre[None, :] * side[:, None]).floor().long()).clamp_max(height - 1)
    return resized_crop(x, boxes, size, mode), src.to(x.device)
