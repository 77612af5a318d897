"""How well an encoder's feature maps fall on a clinical ROI (lesion / region mask): pointing game and AUROC.

The automatic counterpart of a clinician reading the maps. For each image with an ROI mask:

- maps: the last block's CLS attention of every head and their mean (``feature_maps.cls_attention_maps``,
  as in DINO's ``visualize_attention``), and the cosine similarity of every patch token to an *anchor*
  patch inside the ROI (``feature_maps.anchor_similarity``);
- each (rows, cols) patch map is upsampled bilinearly (``align_corners=False``) to the mask's size;
- pointing game (Zhang et al. 2018, "Top-down neural attention by excitation backprop"): a hit when
  the map's maximum lies inside the ROI. When several pixels share the maximum (a flat map), the hit
  is the fraction of them inside the ROI: the expected hit of breaking the tie at random, so a
  uniform map scores the ROI's area fraction, not an arbitrary 0 or 1;
- AUROC of map values of ROI pixels against non-ROI pixels (Mann-Whitney, ties count one half):
  1 = every ROI pixel outranks every background pixel, 0.5 = no preference, as a uniform or random map.

The anchor (``roi_anchor``) is chosen deterministically: the patch containing the ROI's centroid
when at least half of that patch lies in the ROI, else, among the patches with the largest ROI
coverage, the one nearest the centroid (a ring-shaped ROI has its centroid outside itself). The anchor
patch's own pixels are left out of both scores for the similarity map, since its similarity to
itself is 1 by construction.

Images whose mask is empty or covers the whole image are skipped (both scores are undefined) and
counted in ``skipped``. Scores are averaged over images with bootstrap CIs; pass ``groups`` (patient,
slide ...) to resample whole groups. What this score is not: a measure of diagnostic accuracy; an ROI
is one clinically relevant region, and an encoder may rightly attend to context around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from pretextlab.evaluate.feature_maps import anchor_similarity, cls_attention_maps, grid_size, patch_tokens
from pretextlab.evaluate.stats import BootstrapCI, bootstrap_ci

ANCHOR_MAP = "anchor-similarity"
MEAN_MAP = "attention-mean"


@dataclass(frozen=True)
class MapScore:
    """Pointing-game hit (0..1, fractional only for tied maxima) and inside-vs-outside AUROC of one map."""

    hit: float
    auroc: float


@dataclass(frozen=True)
class ImageScores:
    """One image's scores per map (``attention-head<h>``, ``attention-mean``, ``anchor-similarity``)."""

    index: int
    anchor: tuple[int, int]
    roi_fraction: float
    scores: dict[str, MapScore]


@dataclass
class LocalisationResult:
    """Per map: mean pointing-game hit rate and mean AUROC over images, each with a bootstrap CI."""

    pointing_game: dict[str, BootstrapCI]
    auroc: dict[str, BootstrapCI]
    n_images: int
    skipped: list[int] = field(default_factory=list)
    images: list[ImageScores] = field(default_factory=list)
    anchor_rule: str = "ROI centroid patch (if >= half inside the ROI, else the most-covered patch nearest it)"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (per-image scores included)."""
        return {
            "n_images": self.n_images,
            "skipped": list(self.skipped),
            "anchor_rule": self.anchor_rule,
            "pointing_game": {k: v.to_dict() for k, v in self.pointing_game.items()},
            "auroc": {k: v.to_dict() for k, v in self.auroc.items()},
            "images": [
                {
                    "index": s.index,
                    "anchor": list(s.anchor),
                    "roi_fraction": s.roi_fraction,
                    "scores": {k: {"hit": m.hit, "auroc": m.auroc} for k, m in s.scores.items()},
                }
                for s in self.images
            ],
        }


def _mask(mask: Any) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"an ROI mask must be 2-D (H, W), got shape {m.shape}")
    return m.astype(bool)


def upsample_map(patch_map: Any, size: tuple[int, int]) -> np.ndarray:
    """A (rows, cols) map resized bilinearly (align_corners=False) to ``size`` = (H, W), as float64."""
    m = torch.as_tensor(np.asarray(patch_map, dtype=np.float64))
    if m.ndim != 2:
        raise ValueError(f"expected a (rows, cols) map, got shape {tuple(m.shape)}")
    out = F.interpolate(m[None, None], size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def pointing_hit(saliency: Any, mask: Any, ignore: Any | None = None) -> float:
    """1 when the map's maximum is inside the ROI, 0 when outside; the ROI share of tied maxima otherwise.

    ``ignore``: pixels left out (e.g. the anchor patch). NaN when nothing is left.
    """
    s, m = np.asarray(saliency, dtype=np.float64), _mask(mask)
    keep = ~_mask(ignore) if ignore is not None else np.ones_like(m)
    if s.shape != m.shape:
        raise ValueError(f"map {s.shape} and mask {m.shape} differ in size")
    if not keep.any():
        return float("nan")
    vals = s[keep]
    top = vals >= vals.max() - 1e-12 * max(1.0, abs(vals.max()))
    return float(m[keep][top].mean())


def inside_auroc(saliency: Any, mask: Any, ignore: Any | None = None) -> float:
    """AUROC of map values inside vs outside the ROI (ties one half); NaN when either side is empty."""
    s, m = np.asarray(saliency, dtype=np.float64), _mask(mask)
    if s.shape != m.shape:
        raise ValueError(f"map {s.shape} and mask {m.shape} differ in size")
    keep = ~_mask(ignore) if ignore is not None else np.ones_like(m)
    vals, pos = s[keep], m[keep]
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(vals)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def score_map(patch_map: Any, mask: Any, ignore: Any | None = None) -> MapScore:
    """Upsample a (rows, cols) map to the mask's size and score it (pointing game, AUROC)."""
    m = _mask(mask)
    sal = upsample_map(patch_map, m.shape)
    return MapScore(pointing_hit(sal, m, ignore), inside_auroc(sal, m, ignore))


def patch_coverage(mask: Any, grid: tuple[int, int]) -> np.ndarray:
    """(rows, cols) fraction of each patch's area inside the ROI (area-averaged mask)."""
    m = torch.as_tensor(_mask(mask).astype(np.float64))
    return F.adaptive_avg_pool2d(m[None, None], grid)[0, 0].numpy()


def roi_anchor(mask: Any, grid: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) patch used as the similarity anchor for this ROI (see the module docstring)."""
    m = _mask(mask)
    if not m.any():
        raise ValueError("the ROI mask is empty: no anchor inside it")
    rows, cols = grid
    ys, xs = np.nonzero(m)
    cy, cx = (ys.mean() + 0.5) * rows / m.shape[0], (xs.mean() + 0.5) * cols / m.shape[1]
    r, c = min(int(cy), rows - 1), min(int(cx), cols - 1)
    cover = patch_coverage(m, grid)
    if cover[r, c] >= 0.5:
        return r, c
    best = np.argwhere(cover >= cover.max() - 1e-12)
    d = (best[:, 0] + 0.5 - cy) ** 2 + (best[:, 1] + 0.5 - cx) ** 2
    r, c = best[int(np.argmin(d))]  # argmin: the first in row-major order on equal distances
    return int(r), int(c)


def patch_pixels(patch: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels of a mask of ``size`` that fall in patch (row, col) of the grid."""
    (r, c), (rows, cols), (h, w) = patch, grid, size
    out = np.zeros((h, w), dtype=bool)
    y0, y1 = round(r * h / rows), round((r + 1) * h / rows)
    x0, x1 = round(c * w / cols), round((c + 1) * w / cols)
    out[y0:y1, x0:x1] = True
    return out


def image_scores(model: torch.nn.Module, image: torch.Tensor, mask: Any, index: int = 0) -> ImageScores:
    """Score every map of one preprocessed image (1, C, H, W) against its ROI mask (any size, same field of view)."""
    m = _mask(mask)
    x = image if image.ndim == 4 else image[None]
    grid = grid_size(model, x)
    scores: dict[str, MapScore] = {}
    try:
        heads = cls_attention_maps(model, x).numpy()
    except ValueError:  # no CLS token or no fused qkv: only the similarity map
        heads = np.zeros((0, *grid))
    for h, a in enumerate(heads):
        scores[f"attention-head{h}"] = score_map(a, m)
    if len(heads):
        scores[MEAN_MAP] = score_map(heads.mean(axis=0), m)
    anchor = roi_anchor(m, grid)
    sim = anchor_similarity(patch_tokens(model, x), anchor)
    scores[ANCHOR_MAP] = score_map(sim, m, ignore=patch_pixels(anchor, grid, m.shape))
    return ImageScores(index, anchor, float(m.mean()), scores)


def aggregate(
    images: list[ImageScores], groups: Any | None = None, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[dict[str, BootstrapCI], dict[str, BootstrapCI]]:
    """Mean hit rate and mean AUROC per map over images with (cluster, when ``groups``) bootstrap CIs.

    ``groups`` has one id per entry of ``images``. Images where a score is NaN are left out of that map's mean.
    """
    g = None if groups is None else np.asarray(groups)
    names = list(dict.fromkeys(k for s in images for k in s.scores))
    hits: dict[str, BootstrapCI] = {}
    aucs: dict[str, BootstrapCI] = {}
    for name in names:
        for out, attr in ((hits, "hit"), (aucs, "auroc")):
            vals = np.array([getattr(s.scores[name], attr) if name in s.scores else np.nan for s in images])
            ok = np.isfinite(vals)
            if not ok.any():
                continue
            out[name] = bootstrap_ci(vals[ok], None if g is None else g[ok], n_boot=n_boot, ci=ci, seed=seed)
    return hits, aucs


def localisation_scores(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: Any,
    groups: Any | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> LocalisationResult:
    """Pointing game and AUROC of each feature map against each image's ROI mask, averaged with bootstrap CIs.

    ``images``: (N, C, H, W) preprocessed as for the encoder; ``masks``: N ROI masks (each 2-D, any size,
    covering the same field of view as its image); ``groups``: one id per image (cluster bootstrap).
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if groups is not None and len(groups) != len(images):
        raise ValueError(f"{len(images)} images but {len(groups)} groups")
    scored: list[ImageScores] = []
    kept: list[int] = []
    skipped: list[int] = []
    for i in range(len(images)):
        m = _mask(masks[i])
        if m.all() or not m.any():
            skipped.append(i)
            continue
        scored.append(image_scores(model, images[i : i + 1], m, i))
        kept.append(i)
    g = None if groups is None else np.asarray(groups)[kept]
    hits, aucs = aggregate(scored, g, n_boot, ci, seed) if scored else ({}, {})
    return LocalisationResult(hits, aucs, len(scored), skipped, scored)


def localise_encoder(
    model: torch.nn.Module,
    card: Any,
    images: np.ndarray,
    masks: Any,
    groups: Any | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> LocalisationResult:
    """``localisation_scores`` on uint8 (N, H, W, C) images, preprocessed as the encoder's card says.

    Each mask covers the same field of view as its image at any resolution (e.g. the source's), since
    the maps are upsampled to the mask, not the mask squeezed to the patch grid.
    """
    from pretextlab.evaluate.features import preprocess

    device = next(model.parameters()).device
    return localisation_scores(model, preprocess(np.asarray(images), card).to(device), masks, groups, n_boot, ci, seed)
