"""The report's feature-map grid: the same test images x arms, each map upsampled to the image's display
size and overlaid on it with a colour bar: the CLS attention of the last block (mean over heads) and the
first three principal components of the patch tokens. This is what the clinicians' review rates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretextlab.evaluate.feature_maps import cls_attention_maps, patch_tokens, pca_rgb
from pretextlab.models.encoder_io import preprocess


def _upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(rows, cols[, 3]) -> (H, W[, 3]) bilinear, for display at the image's size."""
    t = torch.as_tensor(values, dtype=torch.float32)
    t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0]
    return (out.permute(1, 2, 0) if values.ndim == 3 else out[0]).numpy()


def arm_maps(model: torch.nn.Module, card: Any, images: np.ndarray) -> list[dict[str, np.ndarray | None]]:
    """Per image: ``attention`` (H, W) in [0, 1] (None without a CLS token) and ``pca`` (H, W, 3)."""
    out = []
    x = preprocess(images, card)
    for i, img in enumerate(images):
        size = tuple(img.shape[:2])
        try:
            attn = cls_attention_maps(model, x[i]).mean(dim=0).numpy()
            attn = (attn - attn.min()) / max(float(attn.max() - attn.min()), 1e-12)
            attention: np.ndarray | None = _upsample(attn, size)
        except ValueError:
            attention = None
        out.append({"attention": attention, "pca": _upsample(pca_rgb(patch_tokens(model, x[i])), size)})
    return out


def grid_figure(
    images: np.ndarray, maps: Mapping[str, list[dict[str, Any]]], grayscale: bool, masks: np.ndarray | None = None
) -> Any:
    """A matplotlib figure: one row per image, for each arm its attention overlay and PCA map."""
    from pretextlab.study.report import _pyplot

    plt = _pyplot()
    arms = list(maps)
    n, cols = len(images), 1 + 2 * len(arms)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.6), squeeze=False)
    last = None
    for r, img in enumerate(images):
        base = img[..., 0] if img.shape[-1] == 1 else img[..., :3]
        axes[r][0].imshow(base, cmap="gray" if grayscale or base.ndim == 2 else None)
        axes[r][0].set_title("image" if r == 0 else "", fontsize=8)
        for j, arm in enumerate(arms):
            m = maps[arm][r]
            ax_a, ax_p = axes[r][1 + 2 * j], axes[r][2 + 2 * j]
            ax_a.imshow(base, cmap="gray" if base.ndim == 2 else None)
            if m["attention"] is not None:
                last = ax_a.imshow(m["attention"], cmap="viridis", alpha=0.55, vmin=0, vmax=1)
            ax_p.imshow(m["pca"])
            if masks is not None:
                for ax in (ax_a, ax_p):
                    ax.contour(masks[r].astype(float), levels=[0.5], colors="red", linewidths=0.8)
            if r == 0:
                ax_a.set_title(f"{arm}: attention", fontsize=8)
                ax_p.set_title(f"{arm}: PCA", fontsize=8)
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    if last is not None:
        fig.colorbar(last, ax=axes, fraction=0.02, pad=0.01, label="CLS attention (min-max per image)")
    return fig
