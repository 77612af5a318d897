"""Temporal crops of cine clips: T' frames at a random start and a stride drawn per clip."""

from __future__ import annotations

import torch

from pretextlab.views import rng


def temporal_indices(
    n: int, length: int, frames: int, strides: tuple[int, ...], g: torch.Generator | None
) -> torch.Tensor:
    """(n, frames) frame indices: start + stride * arange(frames), with a stride whose span fits.

    Strides with (frames - 1) * stride < length are eligible; when none is, stride 1 is used and
    indices past the end repeat the last frame.
    """
    fitting = [s for s in strides if (frames - 1) * s < length] or [1]
    stride = rng.choice(torch.tensor(fitting, dtype=torch.long), n, g).cpu()
    span = (frames - 1) * stride + 1
    start = rng.randint_below((length - span + 1).clamp_min(1), g).cpu()
    idx = start[:, None] + stride[:, None] * torch.arange(frames)
    return idx.clamp_max(length - 1)


def temporal_crop(
    clips: torch.Tensor, frames: int, strides: tuple[int, ...], g: torch.Generator | None
) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, frames, H, W), one start and stride per clip."""
    b, length = clips.shape[0], clips.shape[2]
    idx = temporal_indices(b, length, frames, strides, g).to(clips.device)
    bidx = torch.arange(b, device=clips.device)[:, None]
    return clips[bidx, :, idx].movedim(2, 1)  # (B, frames, C, H, W) -> (B, C, frames, H, W)
