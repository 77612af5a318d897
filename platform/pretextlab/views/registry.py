"""View sets and recipes, and the factory that combines them: ``make_views(view_set, recipe, **overrides)``.

A *view set* is one modality's augmentation (its config model, channel preparation and single-view
function); a *recipe* is how many views of which size an objective consumes. Modalities
(``pretextlab.modalities``) name their view set; ``pretextlab.modalities.create_views(modality, recipe)``
is the usual entry point. :class:`Views` also owns the packing of stream rows into the flat columns Ray
Data carries, so storage and jobs call :meth:`Views.apply_to_rows` and know no recipe.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pretextlab.core.registry import Registry
from pretextlab.views import recipes
from pretextlab.views.columns import to_columns
from pretextlab.views.config import CineViews, ViewsConfig
from pretextlab.views.tensors import batch_tensor, to_float


@dataclass(frozen=True)
class ViewSet:
    """A modality's config model, its channel preparation and its single-view augmentation."""

    name: str
    config: type[ViewsConfig]
    prepare: Callable[[torch.Tensor, Any], torch.Tensor]
    #: ``view(x, cfg, *, size, local, light, g)`` (see recipes.ViewFn); typed loosely because each view
    #: set's function takes its own config subclass
    view: Callable[..., torch.Tensor]

    @property
    def channels(self) -> int:
        return int(self.config.channels)


@dataclass(frozen=True)
class Recipe:
    """A recipe's input key and layout, the stream kinds that feed it, and the function that builds it."""

    name: str
    key: str
    layout: str
    build: Callable[..., recipes.Output]
    kinds: tuple[str, ...]

    @property
    def ndim(self) -> int:
        """Number of dims the input tensor must have."""
        return self.layout.count(",") + 1

    @property
    def row_key(self) -> str:
        """The stream row column this recipe reads: ``image`` (H, W, C) or ``clip`` (T, H, W, C)."""
        return "clip" if self.key == "clips" else "image"


RECIPES: Registry[Recipe] = Registry("recipe", field="views")
for _r in (
    Recipe("multicrop", "images", "(B, C, H, W)", recipes.multicrop, ("patches", "frames")),
    Recipe("pair", "images", "(B, C, H, W)", recipes.pair, ("patches", "frames")),
    Recipe("single", "images", "(B, C, H, W)", recipes.single, ("patches", "frames")),
    Recipe("clip", "clips", "(B, C, T, H, W)", recipes.clip, ("clips",)),
):
    RECIPES.register(_r.name, _r)


@dataclass(frozen=True)
class Views:
    """A configured view maker: ``views(batch, generator) -> dict`` of normalised float32 tensors.

    Picklable (a dataclass of pydantic models and module-level functions), so it ships to Ray Data
    workers.
    """

    modality: str
    recipe: str
    config: ViewsConfig
    cine: CineViews | None
    view_set: ViewSet

    @property
    def spec(self) -> Recipe:
        return RECIPES.get(self.recipe)

    def __call__(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> recipes.Output:
        """Augment ``batch[key]`` (uint8 or [0, 1] float, channel-first) into the recipe's output."""
        rec = self.spec
        x = to_float(batch_tensor(batch, rec.key, rec.ndim, rec.layout))
        x = self.view_set.prepare(x, self.config)
        return rec.build(x, self.config, self.cine, self.view_set.view, generator)

    def input_from_rows(self, rows: Mapping[str, Any]) -> torch.Tensor:
        """Stream rows (channel-last ``image`` (B, H, W, C) or ``clip`` (B, T, H, W, C)) -> the recipe's
        channel-first input tensor (B, C, H, W) / (B, C, T, H, W), without copying."""
        rec = self.spec
        if rec.row_key not in rows:
            kinds = " or ".join(repr(k) for k in rec.kinds)
            raise ValueError(f"views {self.recipe!r} need {rec.row_key}s (stream kind {kinds}), got {sorted(rows)}")
        with warnings.catch_warnings():  # zero-copy blocks are read-only; the views only read them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.asarray(rows[rec.row_key]))
        return x.permute(0, 4, 1, 2, 3) if rec.key == "clips" else x.permute(0, 3, 1, 2)

    def apply_to_rows(self, rows: Mapping[str, Any], generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
        """Stream rows -> the views' flat float32 columns (``views.columns.to_columns``)."""
        return to_columns(self({self.spec.key: self.input_from_rows(rows)}, generator))

    def sample_bytes(self) -> int:
        """float32 bytes of one sample's views (all crops), from the views config."""
        cfg, c = self.config, self.config.channels
        if self.recipe == "multicrop":
            return 4 * c * (cfg.n_global * cfg.global_size**2 + cfg.n_local * cfg.local_size**2)
        frames = self.cine.frames if self.recipe == "clip" and self.cine else 1
        return 4 * c * frames * cfg.size**2 * (2 if self.recipe == "pair" else 1)


def make_views(view_set: ViewSet, recipe: str, modality: str | None = None, **overrides: Any) -> Views:
    """Build ``view_set``'s views for ``recipe``; ``overrides`` set config fields (validated).

    For the 'clip' recipe, the CineViews fields (frames, strides) go to the cine config and all
    others to the view set's config. Unknown recipes raise UnknownName (a ValueError); invalid
    fields raise pydantic's ValidationError (a ValueError) naming the field.
    """
    RECIPES.get(recipe)
    cine = None
    if recipe == "clip":
        cine_keys = set(CineViews.model_fields)
        cine = CineViews(**{k: v for k, v in overrides.items() if k in cine_keys})
        overrides = {k: v for k, v in overrides.items() if k not in cine_keys}
    config = view_set.config(**overrides)
    return Views(modality=modality or view_set.name, recipe=recipe, config=config, cine=cine, view_set=view_set)
