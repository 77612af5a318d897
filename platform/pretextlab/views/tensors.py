"""Tensor basics shared by every view: dtype conversion, luminance, normalisation, batch checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale and PIL's convert("L").
LUMA = (0.299, 0.587, 0.114)


def to_float(images: Any) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; floats (assumed in [0, 1]) -> float32; numpy arrays accepted."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if x.is_floating_point():
        return x.to(torch.float32)
    raise ValueError(f"images must be uint8 in [0, 255] or float in [0, 1], got dtype {x.dtype}")


def to_luminance(images: torch.Tensor) -> torch.Tensor:
    """Keep one channel: (B, 1, ...) passes through, (B, 3, ...) RGB becomes BT.601 luminance."""
    c = images.shape[1]
    if c == 1:
        return images
    if c == 3:
        w = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
        return torch.einsum("bc...,c->b...", images, w).unsqueeze(1)
    raise ValueError(f"grayscale views need 1 or 3 channels, got {c}")


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean[c]) / std[c] over channel dim 1 of a (B, C, ...) float tensor."""
    c = images.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} values (one per channel), got {len(mean)}/{len(std)}")
    shape = (1, c) + (1,) * (images.ndim - 2)
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - m) / s


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape (B,) or (B, C) parameters to broadcast against ``like`` (B, C, ...), on its device."""
    extra = like.ndim - values.ndim
    return values.to(device=like.device, dtype=like.dtype).reshape(values.shape + (1,) * extra)


def batch_tensor(batch: Any, key: str, ndim: int, layout: str) -> torch.Tensor:
    """Fetch ``batch[key]`` as a tensor of ``ndim`` dims, with a clear ValueError otherwise."""
    if not hasattr(batch, "keys") or key not in batch:
        keys = sorted(batch.keys()) if hasattr(batch, "keys") else type(batch).__name__
        raise ValueError(f"views need batch[{key!r}] of shape {layout}; got keys {keys}")
    x = torch.as_tensor(batch[key])
    if x.ndim != ndim:
        raise ValueError(f"batch[{key!r}] must have shape {layout}, got {tuple(x.shape)}")
    return x
