"""Recipes: how many views of which size each objective consumes, in its exact output format."""

from __future__ import annotations

from typing import Protocol

import torch

from pretextlab.views.config import CineViews, ViewsConfig
from pretextlab.views.temporal import temporal_crop
from pretextlab.views.tensors import normalize

Output = dict[str, torch.Tensor | list[torch.Tensor]]


class ViewFn(Protocol):
    """A modality's single-view augmentation (see histopathology.view, ultrasound.view)."""

    def __call__(
        self, x: torch.Tensor, cfg: ViewsConfig, *, size: int, local: bool, light: bool, g: torch.Generator | None
    ) -> torch.Tensor: ...


def _norm(x: torch.Tensor, cfg: ViewsConfig) -> torch.Tensor:
    """Normalise a [0, 1] view with the config's per-channel mean/std, as contiguous float32."""
    return normalize(x, cfg.mean, cfg.std).contiguous()


def multicrop(
    x: torch.Tensor, cfg: ViewsConfig, cine: CineViews | None, view: ViewFn, g: torch.Generator | None
) -> Output:
    """DINO: n_global (B, C, G, G) crops then n_local (B, C, L, L) crops, each augmented independently."""
    return {
        "global": [
            _norm(view(x, cfg, size=cfg.global_size, local=False, light=False, g=g), cfg) for _ in range(cfg.n_global)
        ],
        "local": [
            _norm(view(x, cfg, size=cfg.local_size, local=True, light=False, g=g), cfg) for _ in range(cfg.n_local)
        ],
    }


def pair(x: torch.Tensor, cfg: ViewsConfig, cine: CineViews | None, view: ViewFn, g: torch.Generator | None) -> Output:
    """SimCLR/VICReg: two independently augmented (B, C, S, S) views."""
    return {"global": [_norm(view(x, cfg, size=cfg.size, local=False, light=False, g=g), cfg) for _ in range(2)]}


def single(
    x: torch.Tensor, cfg: ViewsConfig, cine: CineViews | None, view: ViewFn, g: torch.Generator | None
) -> Output:
    """I-JEPA/MAE: one lightly augmented (B, C, S, S) view (crop and flips); masks come from the objective."""
    return {"images": _norm(view(x, cfg, size=cfg.size, local=False, light=True, g=g), cfg)}


def clip(x: torch.Tensor, cfg: ViewsConfig, cine: CineViews | None, view: ViewFn, g: torch.Generator | None) -> Output:
    """Cine variants: a temporal crop of T' frames, then one spatial augmentation shared by all frames."""
    cine = cine or CineViews()
    x = temporal_crop(x, cine.frames, cine.strides, g)
    return {"clips": _norm(view(x, cfg, size=cfg.size, local=False, light=False, g=g), cfg)}
