"""Frozen features: turn uint8 images into the encoder's normalised input, then into embeddings.

``preprocess`` (``pretextlab.models.encoder_io``) follows the encoder card (channels, size, mean/std),
so an encoder is always fed what it was trained on. ``extract_features`` runs the model in inference
mode, batch by batch, with bf16
autocast on CUDA (as the DINOv2 evaluations do); the embeddings come back as float32 on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from pretextlab.models.encoder_io import CardLike, preprocess


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use: the one asked for, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    card: CardLike,
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
