"""The views registry and factory, like timm's create_model: ``create_views(modality, recipe, **overrides)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pretextlab.views import histopathology, recipes, ultrasound
from pretextlab.views.config import CineViews, HistopathologyViews, UltrasoundViews, ViewsConfig
from pretextlab.views.tensors import batch_tensor, to_float


@dataclass(frozen=True)
class Modality:
    """A modality's config model, its channel preparation and its single-view augmentation."""

    config: type[ViewsConfig]
    prepare: Callable[[torch.Tensor, Any], torch.Tensor]
    view: recipes.ViewFn


@dataclass(frozen=True)
class Recipe:
    """A recipe's input key and layout, and the function that builds its output dict."""

    key: str
    layout: str
    build: Callable[..., recipes.Output]

    @property
    def ndim(self) -> int:
        """Number of dims the input tensor must have."""
        return self.layout.count(",") + 1


MODALITIES: dict[str, Modality] = {
    "histopathology": Modality(HistopathologyViews, histopathology.prepare, histopathology.view),
    "ultrasound": Modality(UltrasoundViews, ultrasound.prepare, ultrasound.view),
}

RECIPES: dict[str, Recipe] = {
    "multicrop": Recipe("images", "(B, C, H, W)", recipes.multicrop),
    "pair": Recipe("images", "(B, C, H, W)", recipes.pair),
    "single": Recipe("images", "(B, C, H, W)", recipes.single),
    "clip": Recipe("clips", "(B, C, T, H, W)", recipes.clip),
}


@dataclass(frozen=True)
class Views:
    """A configured view maker: ``views(batch, generator) -> dict`` of normalised float32 tensors.

    Picklable (plain dataclass of pydantic models), so it can be shipped to Ray Data workers.
    """

    modality: str
    recipe: str
    config: ViewsConfig
    cine: CineViews | None = None

    def __call__(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> recipes.Output:
        """Augment ``batch[key]`` (uint8 or [0, 1] float) into the recipe's output format."""
        rec, mod = RECIPES[self.recipe], MODALITIES[self.modality]
        x = to_float(batch_tensor(batch, rec.key, rec.ndim, rec.layout))
        x = mod.prepare(x, self.config)
        return rec.build(x, self.config, self.cine, mod.view, generator)


def list_views() -> list[tuple[str, str]]:
    """Every (modality, recipe) pair ``create_views`` accepts."""
    return [(m, r) for m in sorted(MODALITIES) for r in RECIPES]


def create_views(modality: str, recipe: str, **overrides: Any) -> Views:
    """Build the views for ``modality`` and ``recipe``; ``overrides`` set config fields (validated).

    For the 'clip' recipe, the CineViews fields (frames, strides) go to the cine config and all
    others to the modality's config. Unknown names and invalid fields raise ValueError.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; known modalities: {', '.join(sorted(MODALITIES))}")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
    cine = None
    if recipe == "clip":
        cine_keys = set(CineViews.model_fields)
        cine = CineViews(**{k: v for k, v in overrides.items() if k in cine_keys})
        overrides = {k: v for k, v in overrides.items() if k not in cine_keys}
    config = MODALITIES[modality].config(**overrides)
    return Views(modality=modality, recipe=recipe, config=config, cine=cine)
