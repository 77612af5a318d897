"""Modality-aware augmentation views for self-supervised objectives (DINO, SimCLR, VICReg, I-JEPA, MAE, cine).

Pure PyTorch on batched tensors, any device, deterministic given a ``torch.Generator``. A view set per
modality (histopathology.py, ultrasound.py, radiograph.py), recipes per objective family
(recipes.py); ``pretextlab.modalities.create_views(modality, recipe)`` puts them together.
"""

from pretextlab.views.config import CineViews, HistopathologyViews, UltrasoundViews, ViewsConfig
from pretextlab.views.registry import RECIPES, Recipe, Views, ViewSet, make_views
from pretextlab.views.stain import hed_jitter, hed_to_rgb, rgb_to_hed
from pretextlab.views.tensors import normalize, to_float, to_luminance

__all__ = [
    "RECIPES",
    "CineViews",
    "HistopathologyViews",
    "Recipe",
    "UltrasoundViews",
    "ViewSet",
    "Views",
    "ViewsConfig",
    "hed_jitter",
    "hed_to_rgb",
    "make_views",
    "normalize",
    "rgb_to_hed",
    "to_float",
    "to_luminance",
]
