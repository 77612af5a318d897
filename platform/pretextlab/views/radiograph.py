"""Projection radiograph views (CR/DX): grayscale, anatomy-preserving crops, exposure jitter, mild blur.

A radiograph is a transmission image: pixel values follow the log of the attenuation line integral, the
noise is quantum (Poisson) noise, and the diagnostic content is global anatomy in a canonical pose
(patient left on image right, apex up). The defaults follow the augmentations used for contrastive
pretraining on chest X-rays (Sowrirajan et al., "MoCo-CXR", MIDL 2021; Azizi et al., "Big Self-Supervised
Models Advance Medical Image Classification", ICCV 2021): crops that keep most of the field, small
brightness/contrast (exposure) changes, and no vertical flips.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator

from pretextlab.views.blur import gaussian_blur
from pretextlab.views.config import Range, ViewsConfig, _check_range
from pretextlab.views.crop import resized_crop, resized_crop_boxes
from pretextlab.views.flips import hflip
from pretextlab.views.intensity import brightness_contrast
from pretextlab.views.registry import ViewSet
from pretextlab.views.tensors import to_luminance


class RadiographViews(ViewsConfig):
    """Grayscale projection radiographs: resized crops of most of the field, exposure jitter, blur."""

    channels: ClassVar[int] = 1

    scale: Range = Field(
        (0.6, 1.0),
        description=(
            "Crop area fraction (log-uniform aspect in `ratio`), resized to the output size. Kept above 0.6 "
            "because the findings are anatomy seen as a whole (MoCo-CXR crops at (0.6, 1))."
        ),
    )
    local_scale: Range = Field((0.1, 0.4), description="Crop area fraction of DINO's local crops.")
    ratio: Range = Field((0.75, 1.333), description="Crop aspect-ratio range (torchvision's default 3/4-4/3).")
    hflip_prob: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Horizontal flip probability. 0 by default: laterality is anatomy (the heart is on the patient's "
            "left); MoCo-CXR flipped, set 0.5 to follow it."
        ),
    )
    brightness: float = Field(0.2, ge=0.0, lt=1.0, description="Exposure: brightness factor U(1-b, 1+b).")
    contrast: float = Field(0.2, ge=0.0, lt=1.0, description="Window width: contrast factor U(1-c, 1+c).")
    blur_prob: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description=(
            "Gaussian blur probability (detector unsharpness); lower than SimCLR's 0.5 so fine lines survive."
        ),
    )
    mean: tuple[float, ...] = Field((0.5,), description="Grayscale mean 0.5 (dataset-free, as for ultrasound).")
    std: tuple[float, ...] = Field((0.25,), description="Grayscale std 0.25: maps [0, 1] to [-2, 2].")

    @model_validator(mode="after")
    def _check_radiograph(self) -> RadiographViews:
        _check_range("scale", self.scale, 1e-4, 1.0)
        _check_range("local_scale", self.local_scale, 1e-4, 1.0)
        _check_range("ratio", self.ratio, 1e-2, 100.0)
        return self


def prepare(x: torch.Tensor, cfg: RadiographViews) -> torch.Tensor:
    """Keep one grayscale channel (an RGB-encoded export becomes BT.601 luminance)."""
    return to_luminance(x)


def view(
    x: torch.Tensor, cfg: RadiographViews, *, size: int, local: bool, light: bool, g: torch.Generator | None
) -> torch.Tensor:
    """(B, 1, [T,] H, W) in [0, 1] -> one augmented (B, 1, [T,] size, size) view in [0, 1].

    ``local`` picks the local crop scale; ``light`` (I-JEPA/MAE) keeps only the crop and the flip.
    """
    boxes = resized_crop_boxes(
        x.shape[-2], x.shape[-1], x.shape[0], cfg.local_scale if local else cfg.scale, cfg.ratio, g
    )
    x = resized_crop(x, boxes, size, "bilinear")
    x = hflip(x, cfg.hflip_prob, g)
    if light:
        return x
    if cfg.brightness > 0 or cfg.contrast > 0:
        x = brightness_contrast(x, cfg.brightness, cfg.contrast, g)
    if cfg.blur_prob > 0:
        x = gaussian_blur(x, cfg.blur_prob, cfg.blur_sigma, g)
    return x.clamp(0.0, 1.0)


VIEW_SET = ViewSet("radiograph", RadiographViews, prepare, view)
