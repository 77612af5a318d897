"""Flips and 90-degree rotations chosen per sample, applied to every frame of a sample alike."""

from __future__ import annotations

import torch

from pretextlab.views import rng


def hflip(x: torch.Tensor, prob: float, g: torch.Generator | None) -> torch.Tensor:
    """Mirror the columns (last dim) of each sample with probability ``prob``; rows never move."""
    idx = rng.bernoulli(x.shape[0], prob, g).nonzero().flatten().to(x.device)
    if idx.numel() == 0:
        return x
    out = x.clone()
    out[idx] = x[idx].flip(-1)
    return out


def dihedral(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """One of the 8 flips/rotations of the square (uniform) per sample, on square (..., S, S) tensors."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral views need square images, got {tuple(x.shape[-2:])}")
    flip = rng.bernoulli(x.shape[0], 0.5, g)
    turns = rng.randint_below(torch.full((x.shape[0],), 4, dtype=torch.long), g)
    code = (flip.long() * 4 + turns).cpu()  # 0..7, one per element of the dihedral group
    out = x.clone()
    for c in range(1, 8):
        idx = (code == c).nonzero().flatten().to(x.device)
        if idx.numel():
            sel = x[idx].flip(-1) if c >= 4 else x[idx]
            out[idx] = torch.rot90(sel, c % 4, dims=(-2, -1)) if c % 4 else sel
    return out
