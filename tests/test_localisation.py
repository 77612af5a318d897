"""Localisation against ROI masks: a ViT whose CLS attention is forced onto the ROI scores ~1, a uniform one 0.5.

The forced encoder is a real timm ViT (the project's tiny backbone) with hand-set weights, scored through
the same ``cls_attention_maps`` / ``anchor_similarity`` path as any trained encoder; no part is mocked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pretextlab.evaluate.localisation import (
    ANCHOR_MAP,
    MEAN_MAP,
    inside_auroc,
    localisation_scores,
    localise_encoder,
    patch_coverage,
    pointing_hit,
    roi_anchor,
    score_map,
    upsample_map,
)
from pretextlab.models import BackboneConfig, EncoderCard, create_backbone

CFG = BackboneConfig(img_size=32, patch_size=8, in_chans=1, depth=2)  # a 4 x 4 patch grid, 3 heads


def _forced_vit(attend: bool = True) -> torch.nn.Module:
    """Patch tokens b + s v (s = the patch's mean pixel, +1 in the ROI, -1 outside), earlier blocks identity,
    and the last block's CLS query aligned with v in every head, so CLS attends to the bright (ROI) patches.
    ``attend=False`` zeroes the query: every token gets the same attention (a uniform map)."""
    torch.manual_seed(0)
    model = create_backbone(CFG).eval()
    d = model.embed_dim
    e = torch.eye(d)
    v, b, c = e[0] - e[1], e[2] - e[3], e[4] - e[5]  # zero-mean, orthogonal: LayerNorm keeps their directions
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in [model.norm, *[blk.norm1 for blk in model.blocks], *[blk.norm2 for blk in model.blocks]]:
            norm.weight.fill_(1.0)
        model.patch_embed.proj.weight[:, 0] = v[:, None, None] / 64  # token = mean pixel * v + b
        model.patch_embed.proj.bias.copy_(b)
        model.cls_token[0, 0] = c
        attn = model.blocks[-1].attn
        heads, hd = attn.num_heads, d // attn.num_heads
        for h in range(heads):
            if attend:
                attn.qkv.weight[h * hd] = 40.0 * c  # q_cls . k_patch grows with s
            attn.qkv.weight[d + h * hd] = v  # key of a patch: its s
    return model


def _roi_images(n: int, seed: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Images at +1 on 2-5 random patches of the 4 x 4 grid, -1 elsewhere; masks of those patches at 64 px."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        cells = np.zeros(16, dtype=bool)
        cells[rng.choice(16, size=int(rng.integers(2, 6)), replace=False)] = True
        grid = cells.reshape(4, 4)
        images.append(torch.from_numpy(np.kron(grid, np.ones((8, 8))) * 2.0 - 1.0).float()[None])
        masks.append(np.kron(grid, np.ones((16, 16), dtype=bool)))  # the mask at 2x the image size
    return torch.stack(images), masks


# ---------------------------------------------------------------- the scoring functions


def test_scores_of_known_maps():
    mask = np.zeros((40, 40), dtype=bool)
    mask[8:24, 16:32] = True
    perfect = patch_coverage(mask, (5, 5))
    assert perfect.max() == 1.0 and perfect[0, 0] == 0.0
    s = score_map(perfect, mask)
    assert s.hit == 1.0 and s.auroc > 0.97
    inverted = score_map(-perfect, mask)
    assert inverted.hit == 0.0 and inverted.auroc < 0.03
    flat = score_map(np.ones((5, 5)), mask)
    assert flat.auroc == 0.5 and flat.hit == pytest.approx(mask.mean())  # the expected hit of a random tie-break
    rng = np.random.default_rng(0)
    sal = upsample_map(rng.normal(size=(5, 5)), mask.shape)
    assert inside_auroc(sal, mask) == pytest.approx(roc_auc_score(mask.ravel(), sal.ravel()))
    ignore = np.zeros_like(mask)
    ignore[8:16, 16:24] = True  # leave the top-left quarter of the ROI out
    assert inside_auroc(sal, mask, ignore) == pytest.approx(roc_auc_score(mask[~ignore], sal[~ignore]))
    assert pointing_hit(np.where(ignore, 9.0, 0.0), mask, ignore) == pytest.approx(mask[~ignore].mean())
    assert math.isnan(inside_auroc(sal, np.zeros_like(mask)))
    with pytest.raises(ValueError, match="differ in size"):
        inside_auroc(sal, mask[:20])


def test_random_maps_score_chance():
    rng = np.random.default_rng(1)
    aucs, hits, areas = [], [], []
    for _ in range(300):
        mask = np.zeros((32, 32), dtype=bool)
        y, x, h, w = rng.integers(0, 20), rng.integers(0, 20), rng.integers(4, 12), rng.integers(4, 12)
        mask[y : y + h, x : x + w] = True
        s = score_map(rng.normal(size=(4, 4)), mask)
        aucs.append(s.auroc)
        hits.append(s.hit)
        areas.append(mask.mean())
    assert abs(np.mean(aucs) - 0.5) < 0.03
    assert abs(np.mean(hits) - np.mean(areas)) < 0.08  # a random map's pointing hit rate is about the ROI's area


def test_anchor_is_the_centroid_patch_or_the_nearest_well_covered_one():
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 16:32] = True  # centroid (16, 24): patch (2, 3) of a 4 x 4 grid, fully inside
    assert roi_anchor(mask, (4, 4)) == (2, 3)
    ring = np.zeros((32, 32), dtype=bool)
    ring[0:32, 0:8] = ring[0:32, 24:32] = ring[0:8, :] = ring[24:32, :] = True  # centroid in the hole
    r, c = roi_anchor(ring, (4, 4))
    assert patch_coverage(ring, (4, 4))[r, c] == 1.0
    assert roi_anchor(ring, (4, 4)) == (r, c)  # deterministic
    with pytest.raises(ValueError, match="empty"):
        roi_anchor(np.zeros((8, 8), dtype=bool), (4, 4))


# ---------------------------------------------------------------- real ViTs


def test_vit_with_attention_forced_onto_the_roi_scores_one_and_a_uniform_one_half():
    images, masks = _roi_images(8, seed=2)
    groups = np.repeat(["P0", "P1", "P2", "P3"], 2)
    forced = localisation_scores(_forced_vit(True), images, masks, groups, n_boot=200)
    assert forced.n_images == 8 and not forced.skipped
    heads = [k for k in forced.auroc if k.startswith("attention-head")]
    assert len(heads) == 3 and MEAN_MAP in forced.auroc and ANCHOR_MAP in forced.auroc
    for name in [*heads, MEAN_MAP, ANCHOR_MAP]:
        assert forced.pointing_game[name].value == 1.0, name
        assert forced.auroc[name].value > 0.95 and forced.auroc[name].low > 0.9, name
        assert forced.auroc[name].unit == "group" and forced.auroc[name].n_units == 4
    for s in forced.images:  # the anchor lies in the ROI
        assert masks[s.index][s.anchor[0] * 16 + 8, s.anchor[1] * 16 + 8]
    uniform = localisation_scores(_forced_vit(False), images, masks, n_boot=200)
    for name in [*heads, MEAN_MAP]:
        assert uniform.auroc[name].value == pytest.approx(0.5)
        assert uniform.pointing_game[name].value == pytest.approx(np.mean([m.mean() for m in masks]))
    d = forced.to_dict()
    assert d["n_images"] == 8 and len(d["images"]) == 8 and d["auroc"][MEAN_MAP]["unit"] == "group"


def test_random_init_vit_runs_and_skips_images_without_a_usable_roi():
    torch.manual_seed(0)
    model = create_backbone(CFG).eval()
    images, masks = _roi_images(4, seed=3)
    masks[1] = np.zeros((64, 64), dtype=bool)
    masks[2] = np.ones((64, 64), dtype=bool)
    res = localisation_scores(model, images, masks, n_boot=50)
    # the same through the card's preprocessing from uint8 images: x / 255 normalised by mean 0.5, std 0.5
    card = EncoderCard(
        name="t",
        timm_name=CFG.timm_name,
        timm_kwargs=CFG.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=32,
        patch_size=8,
        in_chans=1,
    )
    raw = ((images[:, 0].numpy() + 1) / 2 * 255).round().astype(np.uint8)[..., None]
    via_card = localise_encoder(model, card, raw, masks, n_boot=50)
    assert via_card.auroc[MEAN_MAP].value == pytest.approx(res.auroc[MEAN_MAP].value)
    assert res.skipped == [1, 2] and res.n_images == 2
    assert all(0.0 <= ci.value <= 1.0 for ci in res.auroc.values())
    with pytest.raises(ValueError, match="4 images but 3 masks"):
        localisation_scores(model, images, masks[:3])
