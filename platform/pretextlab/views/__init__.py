"""Modality-aware augmentation views for self-supervised objectives (DINO, SimCLR, VICReg, I-JEPA, MAE, cine).

Pure PyTorch on batched tensors, any device, deterministic given a ``torch.Generator``.
"""

from pretextlab.views.config import CineViews, HistopathologyViews, UltrasoundViews, ViewsConfig
from pretextlab.views.registry import MODALITIES, RECIPES, Views, create_views, list_views
from pretextlab.views.stain import hed_jitter, hed_to_rgb, rgb_to_hed
from pretextlab.views.tensors import normalize, to_float, to_luminance

__all__ = [
    "MODALITIES",
    "RECIPES",
    "CineViews",
    "HistopathologyViews",
    "UltrasoundViews",
    "Views",
    "ViewsConfig",
    "create_views",
    "hed_jitter",
    "hed_to_rgb",
    "list_views",
    "normalize",
    "rgb_to_hed",
    "to_float",
    "to_luminance",
]
