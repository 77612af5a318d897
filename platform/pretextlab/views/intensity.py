"""Intensity jitter on [0, 1] tensors: histology brightness/contrast, ultrasound gain, TGC and gamma."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretextlab.views import rng
from pretextlab.views.tensors import LUMA, per_sample


def brightness_contrast(x: torch.Tensor, brightness: float, contrast: float, g: torch.Generator | None) -> torch.Tensor:
    """torchvision ColorJitter semantics per sample: x * U(1±b), then blend with the grey mean by U(1±c)."""
    b = x.shape[0]
    fb = rng.uniform((b,), 1.0 - brightness, 1.0 + brightness, g)
    fc = rng.uniform((b,), 1.0 - contrast, 1.0 + contrast, g)
    if brightness > 0:
        x = (x * per_sample(fb, x)).clamp(0.0, 1.0)
    if contrast > 0:
        w = torch.tensor(LUMA, dtype=x.dtype, device=x.device) if x.shape[1] == 3 else None
        grey = torch.einsum("bc...,c->b...", x, w) if w is not None else x[:, 0]
        m = grey.reshape(b, -1).mean(dim=1)
        x = ((x - per_sample(m, x)) * per_sample(fc, x) + per_sample(m, x)).clamp(0.0, 1.0)
    return x


def depth_curve(n: int, depth: int, amplitude: float, knots: int, g: torch.Generator | None) -> torch.Tensor:
    """(n, depth) smooth random curves: ``knots`` values ~ U(-a, a) spread over depth, bicubic in between."""
    v = rng.uniform((n, 1, knots, 1), -amplitude, amplitude, g)
    curve = F.interpolate(v, size=(depth, 1), mode="bicubic", align_corners=True)
    return curve.reshape(n, depth)


def ultrasound_gain(
    x: torch.Tensor,
    rows: torch.Tensor,
    depth: int,
    gain: float,
    tgc: float,
    knots: int,
    gamma: float,
    g: torch.Generator | None,
) -> torch.Tensor:
    """Overall gain U(1±g), depth gain exp(TGC curve), then gamma exp(U(±k)); zeros stay zero.

    The TGC curve spans the whole frame's ``depth`` rows and is read at ``rows`` (B, h), the source
    row of each view row, so a small crop sees the same gentle slope as the full frame.
    """
    b, h = x.shape[0], x.shape[-2]
    fg = rng.uniform((b,), 1.0 - gain, 1.0 + gain, g)
    curve = depth_curve(b, depth, tgc, knots, g)
    ex = rng.uniform((b,), -gamma, gamma, g)
    if gain == 0 and tgc == 0 and gamma == 0:
        return x
    per_row = torch.gather(curve.to(rows.device), 1, rows)  # (B, h)
    factor = torch.exp(per_row).to(dtype=x.dtype) * fg.to(rows.device, x.dtype)[:, None]
    x = (x * factor.reshape((b,) + (1,) * (x.ndim - 3) + (h, 1))).clamp(0.0, 1.0)
    if gamma > 0:
        x = x.pow(per_sample(torch.exp(ex), x))
    return x
