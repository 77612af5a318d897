"""Objectives: each loss against an independent reference, the masks' published constraints,
schedules, the registry, and encoder save -> timm load with identical features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pretextlab.core.config import ConfigError
from pretextlab.models import BackboneConfig, EncoderCard, create_backbone, load_encoder, save_encoder
from pretextlab.objectives import create_objective, list_objectives
from pretextlab.objectives.losses import (
    dino_loss,
    koleo_loss,
    latent_regression_loss,
    mae_loss,
    ntxent_loss,
    patchify,
    sinkhorn_knopp,
    unpatchify,
    vicreg_loss,
)
from pretextlab.objectives.masks import MultiBlockMasks, random_masks, tube_indices
from pretextlab.objectives.schedules import ScheduleConfig, Schedules, cosine

TINY = {"img_size": 32, "patch_size": 8, "in_chans": 1, "depth": 2}


@pytest.fixture
def feats():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)


def test_ntxent_matches_lightly(feats):
    from lightly.loss import NTXentLoss

    a, b = feats
    for t in (0.1, 0.5):
        assert ntxent_loss(a, b, t).item() == pytest.approx(NTXentLoss(temperature=t)(a, b).item(), rel=1e-5)


def test_vicreg_matches_lightly(feats):
    from lightly.loss import VICRegLoss

    a, b = feats
    ours, parts = vicreg_loss(a, b)
    assert ours.item() == pytest.approx(VICRegLoss()(a, b).item(), rel=1e-5)
    assert parts["invariance"].item() == pytest.approx(F.mse_loss(a, b).item())


def test_koleo_matches_lightly(feats):
    from lightly.loss import KoLeoLoss

    assert koleo_loss(feats[0]).item() == pytest.approx(KoLeoLoss()(feats[0]).item(), rel=1e-5)


def test_dino_loss_matches_lightly():
    from lightly.loss import DINOLoss

    g = torch.Generator().manual_seed(1)
    k = 64
    teacher = [torch.randn(8, k, generator=g) for _ in range(2)]
    student = [torch.randn(8, k, generator=g) for _ in range(4)]
    ref = DINOLoss(
        output_dim=k, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0, student_temp=0.1
    )
    expected = ref(teacher, student, epoch=0).item()
    assert dino_loss(student, teacher, torch.zeros(1, k), 0.1, 0.04).item() == pytest.approx(expected, rel=1e-5)
    # hand check of one term: teacher 0 vs student 1
    tp = F.softmax(teacher[0] / 0.04, -1)
    term = torch.sum(-tp * F.log_softmax(student[1] / 0.1, -1), -1).mean()
    two = dino_loss(student[:2], teacher[:1], torch.zeros(1, k), 0.1, 0.04)
    assert two.item() == pytest.approx(term.item(), rel=1e-6)


def test_sinkhorn_equipartitions():
    g = torch.Generator().manual_seed(2)
    q = sinkhorn_knopp(torch.randn(32, 8, generator=g), temp=0.5, iterations=50)
    assert torch.allclose(q.sum(dim=1), torch.ones(32), atol=1e-4)  # each sample a distribution
    assert torch.allclose(q.sum(dim=0), torch.full((8,), 4.0), atol=1e-3)  # prototypes used equally


def test_mae_loss_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 3.0], [5.0, 5.0]]])
    masked = torch.tensor([[1.0, 0.0]])
    assert mae_loss(pred, target, masked, norm_pix=False).item() == pytest.approx(0.5)  # ((0)^2+(1)^2)/2 on patch 0
    # normalised: patch 0 target -> (x - 2)/sqrt(var(unbiased)=2 + eps)
    t0 = (torch.tensor([1.0, 3.0]) - 2.0) / math.sqrt(2.0 + 1e-6)
    assert mae_loss(pred, target, masked, norm_pix=True).item() == pytest.approx(
        ((pred[0, 0] - t0) ** 2).mean().item(), rel=1e-5
    )
    assert latent_regression_loss(pred, target, "l2").item() == pytest.approx(F.mse_loss(pred, target).item())


def test_patchify_roundtrip():
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(p[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))  # row-major patches
    assert torch.equal(unpatchify(p, 4, 3, 2, 3), x)


def test_ijepa_masks_satisfy_published_constraints():
    gen = MultiBlockMasks(14, 14)  # ViT/16 at 224 px
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        ctx, targets = gen.sample(8, generator=g)
        assert len(targets) == 4 and ctx.shape[1] >= gen.min_keep
        for tgt in targets:
            n = tgt.shape[1]
            assert 0.15 * 196 * 0.75 <= n <= 0.2 * 196 * 1.25  # block area within the scale range, rounding aside
            for row in tgt:
                r, c = row // 14, row % 14
                h, w = int(r.max() - r.min() + 1), int(c.max() - c.min() + 1)
                assert h * w == n  # a full rectangle
                assert 0.75 / 1.3 <= h / w <= 1.5 * 1.3  # aspect ratio range, integer rounding aside
        for i in range(8):  # the context never contains a target patch
            union = set().union(*[set(t[i].tolist()) for t in targets])
            assert not (set(ctx[i].tolist()) & union)


def test_random_and_tube_masks():
    keep, masked = random_masks(4, 16, 0.75, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (4, 4) and masked.shape == (4, 12)
    for k, m in zip(keep, masked, strict=True):
        assert sorted(k.tolist() + m.tolist()) == list(range(16))
    tubes = tube_indices(keep, frames=3, num_patches=16)
    assert tubes.shape == (4, 12)
    for f in range(3):  # the same spatial patches in every frame
        assert torch.equal(tubes[:, f * 4 : (f + 1) * 4] - f * 16, keep)


def test_schedules_follow_recipes():
    assert cosine(0, 100, 1.0, 0.0, warmup=10) == 0.0
    assert cosine(5, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.5)
    assert cosine(10, 100, 1.0, 0.0, warmup=10) == pytest.approx(1.0)
    assert cosine(100, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.0)
    s = Schedules(ScheduleConfig(lr=1e-3, min_lr=1e-6, warmup_steps=10), total_steps=100)
    assert s.momentum(0) == pytest.approx(0.996) and s.momentum(100) == pytest.approx(1.0)
    assert s.weight_decay(0) == pytest.approx(0.04) and s.weight_decay(100) == pytest.approx(0.4)
    assert max(s.lr(i) for i in range(100)) == pytest.approx(1e-3)


def test_registry_and_config_errors():
    assert {"dino", "simclr", "vicreg", "ijepa", "cine_jepa", "mae", "cine_mae"} <= set(list_objectives())
    with pytest.raises(ConfigError, match="unknown objective 'dinov9'"):
        create_objective("dinov9")
    with pytest.raises(ConfigError, match="objective mae: mask_ratio"):
        create_objective("mae", mask_ratio=1.5, backbone=TINY)
    with pytest.raises(ConfigError, match="img_size 30 is not a multiple of patch_size 8"):
        create_objective("mae", backbone={**TINY, "img_size": 30})
    assert create_objective("ijepa", backbone=TINY).encoder().global_pool == "avg"
    assert create_objective("dino", backbone=TINY, out_dim=32, hidden_dim=32).encoder().global_pool == "token"


def test_ema_moves_target_towards_online():
    obj = create_objective("ijepa", backbone=TINY)
    with torch.no_grad():
        for p in obj.backbone.parameters():
            p.add_(1.0)
    before = next(obj.target_backbone.parameters()).clone()
    online = next(obj.backbone.parameters()).clone()
    obj.update_ema(0.9)
    after = next(obj.target_backbone.parameters())
    assert torch.allclose(after, 0.9 * before + 0.1 * online)


def test_saved_encoder_loads_in_timm_with_identical_features(tmp_path):
    cfg = BackboneConfig(img_size=32, patch_size=8, in_chans=3, global_pool="avg", depth=2)
    model = create_backbone(cfg).eval()
    card = EncoderCard(
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=32,
        patch_size=8,
        in_chans=3,
        global_pool="avg",
        objective="mae",
    )
    save_encoder(model, card, tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["card.json", "model.safetensors"]
    # timm alone: create_model from the card + safetensors state dict
    import json

    c = json.loads((tmp_path / "enc" / "card.json").read_text())
    rebuilt = timm.create_model(c["timm_name"], pretrained=False, **c["timm_kwargs"]).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "enc" / "model.safetensors"))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
        loaded, _ = load_encoder(tmp_path / "enc")
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("name", ["dino", "simclr", "vicreg", "ijepa", "mae", "cine_jepa", "cine_mae"])
def test_one_step_reduces_nothing_to_nan_and_updates_weights(name):
    from pretextlab.objectives import ScheduleConfig
    from pretextlab.training import Trainer

    kw = {"backbone": {**TINY, "img_size": 32, "patch_size": 4}}
    if name.startswith("cine"):
        kw["frames"] = 3
    if name == "dino":
        kw.update(out_dim=64, hidden_dim=64, bottleneck_dim=32, ibot=True, koleo_weight=0.1)
    if name == "vicreg":
        kw["expander_dim"] = 64
    obj = create_objective(name, **kw)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 32, 32, generator=g)
    batch = {
        "dino": {"global": [x, x.flip(-1)], "local": [x[..., :16, :16]]},
        "simclr": {"global": [x, x.flip(-1)]},
        "vicreg": {"global": [x, x.flip(-1)]},
        "ijepa": {"images": x},
        "mae": {"images": x},
        "cine_jepa": {"clips": torch.randn(6, 1, 3, 32, 32, generator=g)},
        "cine_mae": {"clips": torch.randn(6, 1, 3, 32, 32, generator=g)},
    }[name]
    trainer = Trainer(obj, ScheduleConfig(lr=1e-3), total_steps=10)
    before = [p.detach().clone() for p in obj.backbone.parameters()]
    res = [trainer.step(batch) for _ in range(2)]
    assert all(np.isfinite(r.loss) for r in res)
    changed = [not torch.equal(b, p) for b, p in zip(before, obj.backbone.parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2


def test_every_registered_objective_cites_its_paper_and_reference_code():
    """As lightly's loss modules do: the class docstring names the paper (arXiv id) and the code."""
    import re

    from pretextlab.objectives import OBJECTIVES

    for name, cls in OBJECTIVES.items():
        doc = cls.__dict__.get("__doc__") or ""
        assert re.search(r"arXiv:\d{4}\.\d{4,5}", doc), f"{name}: class docstring cites no arXiv paper"
        assert "https://github.com/" in doc, f"{name}: class docstring names no reference code"


def test_registries_refuse_empty_and_duplicate_names_and_list_what_exists():
    from pretextlab.core.errors import UserError
    from pretextlab.core.registry import Registry, UnknownName
    from pretextlab.modalities import MODALITIES
    from pretextlab.objectives import OBJECTIVES
    from pretextlab.objectives.dino import DINO
    from pretextlab.objectives.registry import register_objective
    from pretextlab.storage.readers import READERS
    from pretextlab.views import RECIPES

    with pytest.raises(ValueError, match="already registered"):
        register_objective(DINO)  # before: a silent overwrite
    assert OBJECTIVES.get("dino") is DINO
    reg: Registry[int] = Registry("widget")
    with pytest.raises(ValueError, match="without a name"):
        reg.register("", 1)
    for registry, bad in ((OBJECTIVES, "byol9"), (MODALITIES, "mri"), (READERS, "jpegxl"), (RECIPES, "triplet")):
        with pytest.raises(UnknownName) as err:
            registry.get(bad)
        assert isinstance(err.value, UserError)
        assert f"{bad!r}" in str(err.value) and ", ".join(registry.names()) in str(err.value)


def test_ijepa_reference_placement_matches_the_reference_collator():
    """``mask_placement: reference`` places blocks as facebookresearch/ijepa's multiblock.py does; lightly's
    IJEPAMaskCollator (a copy of it) is the oracle: neither ever covers the grid's last row or column, and
    the contexts keep about as many patches. The default ("full") may cover every cell."""
    import statistics

    from lightly.data.ijepa_collate import IJEPAMaskCollator

    from pretextlab.objectives.ijepa import IJEPAConfig, multiblock_masks

    grid = (8, 8)
    ref = multiblock_masks(IJEPAConfig(mask_placement="reference"), grid)
    full = multiblock_masks(IJEPAConfig(), grid)
    oracle = IJEPAMaskCollator(
        input_size=64,
        patch_size=8,
        enc_mask_scale=(0.85, 1.0),
        pred_mask_scale=(0.15, 0.2),
        aspect_ratio=(0.75, 1.5),
        nenc=1,
        npred=4,
        min_keep=4,
    )

    def edge(idx: torch.Tensor) -> bool:
        return bool(((idx // 8 == 7) | (idx % 8 == 7)).any())

    g = torch.Generator().manual_seed(0)
    ctx_ref, ctx_full, ctx_oracle = [], [], []
    full_edge = False
    for _ in range(60):
        c, t = ref.sample(16, generator=g)
        assert not edge(c) and not any(edge(x) for x in t)
        ctx_ref.append(c.shape[1])
        c, t = full.sample(16, generator=g)
        full_edge |= edge(c) or any(edge(x) for x in t)
        ctx_full.append(c.shape[1])
        _, enc, pred = oracle(list(range(16)))
        assert not edge(enc[0]) and not any(edge(x) for x in pred)
        ctx_oracle.append(enc[0].shape[1])
    assert full_edge
    assert abs(statistics.median(ctx_ref) - statistics.median(ctx_oracle)) <= 3, (ctx_ref, ctx_oracle)
    assert statistics.median(ctx_full) > statistics.median(ctx_ref) + 3
