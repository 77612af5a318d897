"""HED colour deconvolution (Ruifrok & Johnston 2001, skimage's matrix) and Tellez et al.'s stain jitter.

Stains are in natural-log optical density (OD = -ln I): skimage.color.rgb2hed returns the same
values divided by ln(1e6) ~ 13.8 and clamped at 0. We skip the clamp so rgb -> hed -> rgb is exact,
and we jitter in OD so beta = 0.05 shifts a stain by 0.05 OD: the white background stays near white
(in skimage's units the same beta is 0.69 OD and turns white pixels dark).
"""

from __future__ import annotations

import torch

from pretextlab.views import rng

#: Rows are the RGB optical densities of haematoxylin, eosin and DAB (skimage.color.rgb_from_hed).
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
#: Intensities are floored here before the log, as skimage does (1e-6 -> OD 13.8).
EPS = 1e-6


def _matrix(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A conversion matrix in the dtype and device of ``like``."""
    return m.to(device=like.device, dtype=like.dtype)


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, ...) RGB in [0, 1] -> (B, 3, ...) H, E, D stain optical densities."""
    od = -torch.log(rgb.clamp_min(EPS))
    return torch.einsum("bc...,cs->bs...", od, _matrix(HED_FROM_RGB, rgb))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """(B, 3, ...) stain optical densities -> (B, 3, ...) RGB, clipped to [0, 1] as skimage's hed2rgb."""
    od = torch.einsum("bs...,sc->bc...", hed, _matrix(RGB_FROM_HED, hed))
    return torch.exp(-od).clamp(0.0, 1.0)


def hed_jitter(rgb: torch.Tensor, sigma: float, g: torch.Generator | None) -> torch.Tensor:
    """Per sample and stain, hed -> alpha * hed + beta with alpha ~ U(1-s, 1+s), beta ~ U(-s, s).

    Done as one batched 3x3 matrix and offset in OD space: OD' = OD @ (D diag(alpha) M) + beta @ M.
    """
    b = rgb.shape[0]
    alpha = rng.uniform((b, 3), 1.0 - sigma, 1.0 + sigma, g).to(device=rgb.device, dtype=torch.float64)
    beta = rng.uniform((b, 3), -sigma, sigma, g).to(device=rgb.device, dtype=torch.float64)
    d, m = HED_FROM_RGB.to(rgb.device), RGB_FROM_HED.to(rgb.device)
    mix = (d @ torch.diag_embed(alpha) @ m).to(rgb.dtype)  # (B, 3, 3)
    offset = (beta @ m).to(rgb.dtype)  # (B, 3)
    od = -torch.log(rgb.clamp_min(EPS))
    od = torch.einsum("bi...,bij->bj...", od, mix) + offset.reshape(b, 3, *(1,) * (rgb.ndim - 2))
    return torch.exp(-od).clamp(0.0, 1.0)
