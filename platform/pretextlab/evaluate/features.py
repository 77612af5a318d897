"""Frozen features: turn uint8 images into the encoder's normalised input, then into embeddings.

``preprocess`` follows the encoder card (channels, size, mean/std), so an encoder is always fed what
it was trained on. ``extract_features`` runs the model in inference mode, batch by batch, with bf16
autocast on CUDA (as the DINOv2 evaluations do); the embeddings come back as float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

#: ITU-R BT.601 luma weights, the same ones Pillow uses for ``convert("L")``.
LUMA = (0.299, 0.587, 0.114)


class _CardLike(Protocol):
    img_size: int
    in_chans: int
    mean: list[float]
    std: list[float]


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use: the one asked for, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _channel_stats(values: Sequence[float], channels: int, name: str) -> torch.Tensor:
    vals = list(values)
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(f"card {name} has {len(vals)} values for {channels} input channels")
    return torch.tensor(vals, dtype=torch.float32).view(1, channels, 1, 1)


def preprocess(images: np.ndarray | torch.Tensor, card: _CardLike) -> torch.Tensor:
    """uint8 (N, H, W, C) or (N, H, W) images -> float (N, card.in_chans, S, S), normalised as the card says.

    RGB becomes luminance for a 1-channel encoder and gray is copied to 3 channels for an RGB one;
    images are resized (bilinear, antialiased) to ``card.img_size`` only when their size differs.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).to(torch.float32)
    channels, want = x.shape[1], int(card.in_chans)
    if channels == 4:  # RGBA: drop alpha
        x, channels = x[:, :3], 3
    if channels != want:
        if channels == 3 and want == 1:
            weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * weights).sum(dim=1, keepdim=True)
        elif channels == 1 and want == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"cannot convert {channels}-channel images for a {want}-channel encoder")
    size = int(card.img_size)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x / 255.0
    mean = _channel_stats(card.mean, want, "mean").to(x.device)
    std = _channel_stats(card.std, want, "std").to(x.device)
    return ((x - mean) / std).contiguous()


def extract_features(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """(N, C, H, W) preprocessed images -> (N, D) float32 CPU embeddings of ``model`` (its pooled output).

    The model is put in eval mode and moved to ``device`` (default: CUDA when available).
    """
    dev = default_device(device)
    model.eval().to(dev)
    outs: list[torch.Tensor] = []
    with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(dev, non_blocking=True)
            outs.append(model(batch).float().cpu())
    if not outs:
        dim = int(getattr(model, "num_features", 0) or getattr(model, "embed_dim", 0))
        return torch.zeros(0, dim)
    return torch.cat(outs)


def embed_images(
    model: torch.nn.Module,
    card: _CardLike,
    images: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """uint8 (N, H, W, C) images -> (N, D) embeddings, preprocessing one batch at a time to bound memory."""
    parts = [
        extract_features(model, preprocess(images[start : start + batch_size], card), batch_size, device)
        for start in range(0, len(images), batch_size)
    ]
    if not parts:
        return extract_features(model, torch.zeros(0, card.in_chans, card.img_size, card.img_size), batch_size, device)
    return torch.cat(parts)
