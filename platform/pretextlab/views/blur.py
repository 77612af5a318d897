"""Gaussian blur with a per-sample sigma, applied with probability, as one grouped separable conv."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pretextlab.views import rng


def gaussian_blur(x: torch.Tensor, prob: float, sigma: tuple[float, float], g: torch.Generator | None) -> torch.Tensor:
    """Blur each sample (all its channels and frames) with probability ``prob``, sigma ~ U(sigma).

    Unblurred samples get a delta kernel, so they come back bit-identical; borders replicate.
    """
    b = x.shape[0]
    apply = rng.bernoulli(b, prob, g)
    s = rng.uniform((b,), sigma[0], sigma[1], g)
    if not bool(apply.any()):
        return x
    radius = max(1, math.ceil(3.0 * sigma[1]))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=s.device)
    k = torch.exp(-(t[None, :] ** 2) / (2.0 * s[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)
    delta = (t == 0).float().expand_as(k)
    k = torch.where(apply[:, None], k, delta).to(device=x.device, dtype=x.dtype)  # (B, K)
    lead, (h, w) = x.shape[1:-2], x.shape[-2:]
    per = math.prod(lead)  # channels x frames of one sample share its kernel
    flat = x.reshape(1, b * per, h, w)
    kk = k.repeat_interleave(per, dim=0)  # (B * per, K)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kk[:, None, :, None], groups=b * per)  # along rows
    flat = F.conv2d(flat, kk[:, None, None, :], groups=b * per)  # along columns
    return flat.reshape(x.shape)
