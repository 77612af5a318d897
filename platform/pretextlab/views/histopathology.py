"""One histopathology view of a batch: near-1 resized crop, dihedral, HED jitter, brightness/contrast, blur."""

from __future__ import annotations

import torch

from pretextlab.views.blur import gaussian_blur
from pretextlab.views.config import HistopathologyViews
from pretextlab.views.crop import resized_crop, resized_crop_boxes
from pretextlab.views.flips import dihedral
from pretextlab.views.intensity import brightness_contrast
from pretextlab.views.registry import ViewSet
from pretextlab.views.stain import hed_jitter


def prepare(x: torch.Tensor, cfg: HistopathologyViews) -> torch.Tensor:
    """Check the batch is RGB: stain deconvolution has no meaning for other channel counts."""
    if x.shape[1] != 3:
        raise ValueError(f"histopathology views need 3 (RGB) channels, got {x.shape[1]}")
    return x


def view(
    x: torch.Tensor, cfg: HistopathologyViews, *, size: int, local: bool, light: bool, g: torch.Generator | None
) -> torch.Tensor:
    """(B, 3, [T,] H, W) in [0, 1] -> one augmented (B, 3, [T,] size, size) view in [0, 1].

    ``local`` picks the local crop scale; ``light`` (I-JEPA/MAE) keeps only the crop and flips.
    """
    scale = cfg.resolved_local_scale if local else cfg.scale
    boxes = resized_crop_boxes(x.shape[-2], x.shape[-1], x.shape[0], scale, cfg.ratio, g)
    x = resized_crop(x, boxes, size, "bilinear")
    if cfg.dihedral:
        x = dihedral(x, g)
    if light:
        return x
    if cfg.hed_sigma > 0:
        x = hed_jitter(x, cfg.hed_sigma, g)
    if cfg.brightness > 0 or cfg.contrast > 0:
        x = brightness_contrast(x, cfg.brightness, cfg.contrast, g)
    if cfg.blur_prob > 0:
        x = gaussian_blur(x, cfg.blur_prob, cfg.blur_sigma, g)
    return x.clamp(0.0, 1.0)


VIEW_SET = ViewSet("histopathology", HistopathologyViews, prepare, view)
