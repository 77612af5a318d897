"""One ultrasound view of a batch: native crop, horizontal flip, gain/TGC/gamma jitter, optional blur."""

from __future__ import annotations

import torch

from pretextlab.views.blur import gaussian_blur
from pretextlab.views.config import UltrasoundViews
from pretextlab.views.crop import native_crop, zoomed_crop
from pretextlab.views.flips import hflip
from pretextlab.views.intensity import ultrasound_gain
from pretextlab.views.registry import ViewSet
from pretextlab.views.tensors import to_luminance


def prepare(x: torch.Tensor, cfg: UltrasoundViews) -> torch.Tensor:
    """Keep one grayscale channel (RGB-encoded frames become BT.601 luminance)."""
    return to_luminance(x)


def view(
    x: torch.Tensor, cfg: UltrasoundViews, *, size: int, local: bool, light: bool, g: torch.Generator | None
) -> torch.Tensor:
    """(B, 1, [T,] H, W) in [0, 1] -> one augmented (B, 1, [T,] size, size) view in [0, 1].

    Local and global crops differ only by ``size``: both are at native resolution by default.
    ``light`` (I-JEPA/MAE) keeps only the crop and the horizontal flip.
    """
    depth = x.shape[-2]
    if cfg.native:
        x, rows = native_crop(x, size, g)
    else:
        x, rows = zoomed_crop(x, size, cfg.zoom, cfg.interpolation, g)
    x = hflip(x, cfg.hflip_prob, g)
    if light:
        return x
    x = ultrasound_gain(x, rows, depth, cfg.gain, cfg.tgc, cfg.tgc_knots, cfg.gamma, g)
    if cfg.blur_prob > 0:
        x = gaussian_blur(x, cfg.blur_prob, cfg.blur_sigma, g)
    return x.clamp(0.0, 1.0)


VIEW_SET = ViewSet("ultrasound", UltrasoundViews, prepare, view)
