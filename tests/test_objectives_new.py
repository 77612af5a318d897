"""Issue 17's objectives and starting weights: Gram anchoring and SIGReg against hand computations,
the Gram teacher's refresh schedule, exact resume of every new objective, the SALT teacher frozen and
out of reach of gradients, and ``objective.init`` from a registry encoder, a safetensors file and a
timm name found in a local cache (with resampled position embeddings and one-line shape errors)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from pretextlab.core.config import ConfigError
from pretextlab.models import BackboneConfig, EncoderCard, create_backbone, save_encoder
from pretextlab.objectives import ScheduleConfig, create_objective, list_objectives
from pretextlab.objectives.dinov3 import DINOv3
from pretextlab.objectives.losses import gram_loss, sigreg
from pretextlab.training import Trainer
from pretextlab.training.checkpoint import load_training_state, save_rng, save_training_state
from pretextlab.training.weights import apply_weights

BB = {"arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1, "in_chans": 1}
DINO_SMALL = {"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16}


def _hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _teacher(dim_arch: str = "vit_small", patch: int = 8, in_chans: int = 1) -> torch.nn.Module:
    return create_backbone(
        BackboneConfig(arch=dim_arch, img_size=32, patch_size=patch, depth=1, in_chans=in_chans, global_pool="avg")
    )


def _save_teacher(folder, model: torch.nn.Module, cfg: BackboneConfig) -> None:
    card = EncoderCard(
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        global_pool=cfg.global_pool,
        objective="mae",
    )
    save_encoder(model, card, folder)


# -- losses against hand computations ----------------------------------------------------------------
def test_gram_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    total = 0.0
    for b in range(2):
        for i in range(3):
            for j in range(3):
                si = s[b, i] / s[b, i].norm()
                sj = s[b, j] / s[b, j].norm()
                ti = t[b, i] / t[b, i].norm()
                tj = t[b, j] / t[b, j].norm()
                total += (float(si @ sj) - float(ti @ tj)) ** 2
    assert gram_loss(s, t).item() == pytest.approx(total / (2 * 9), rel=1e-5)
    assert gram_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    # scale-invariant per patch (features are L2-normalised), and the teacher gets no gradient
    assert gram_loss(3 * s, t).item() == pytest.approx(gram_loss(s, t).item(), rel=1e-5)
    s.requires_grad_(True)
    t.requires_grad_(True)
    gram_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_sigreg_by_hand():
    """Epps-Pulley on each projection with complex arithmetic and a symmetric trapezoid on [-3, 3]."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, generator=g)
    a = torch.randn(2, 3, generator=g)
    a = a / a.norm(dim=0, keepdim=True)
    got = sigreg(x, knots=17, t_max=3.0, directions=a).item()
    proj = (x @ a).numpy().astype(np.float64)  # (N, M)
    t = np.linspace(-3.0, 3.0, 33)
    stats = []
    for m in range(proj.shape[1]):
        ecf = np.exp(1j * t[None, :] * proj[:, m : m + 1]).mean(axis=0)
        err = np.abs(ecf - np.exp(-(t**2) / 2)) ** 2 * np.exp(-(t**2) / 2)
        integral = float(np.sum((err[1:] + err[:-1]) / 2 * np.diff(t)))
        stats.append(5 * integral)
    assert got == pytest.approx(float(np.mean(stats)), rel=1e-4)


def test_sigreg_separates_gaussian_from_collapse():
    g = torch.Generator().manual_seed(2)
    gauss = torch.randn(512, 16, generator=g)
    collapsed = torch.zeros(512, 16) + 0.01 * torch.randn(512, 16, generator=g)
    low = sigreg(gauss, generator=torch.Generator().manual_seed(0)).item()
    high = sigreg(collapsed, generator=torch.Generator().manual_seed(0)).item()
    assert low < 3.0 and high > 50 * low  # null expectation ~1.06: ∫(1 − e^{−t²}) e^{−t²/2} dt on [−3, 3]


# -- DINOv3 --------------------------------------------------------------------------------------------
def test_gram_refresh_schedule():
    due = [s for s in range(1, 30) if DINOv3.refresh_due(s, start=4, every=5, max_refreshes=2)]
    assert due == [4, 9, 14]
    assert [s for s in range(1, 10) if DINOv3.refresh_due(s, 0, 3, 0)] == []  # fixed Gram teacher

    obj = create_objective(
        "dinov3",
        backbone=BB,
        **DINO_SMALL,
        gram_start_step=2,
        gram_refresh_every=3,
        gram_max_refreshes=1,
        gram_teacher_upscale=1.0,
    )
    snapshots = []
    for step in range(1, 10):
        with torch.no_grad():
            for p in obj.backbone.parameters():
                p.add_(0.01 * step)
        obj.update_ema(0.5)
        same = all(
            torch.equal(a, b)
            for a, b in zip(obj.gram_teacher.parameters(), obj.teacher_backbone.parameters(), strict=True)
        )
        snapshots.append((step, int(obj.gram_snapshots), same))
    assert [s for s, _, same in snapshots if same] == [2, 5]
    assert snapshots[-1][1] == 2 and int(obj.steps_done) == 9


def test_gram_loss_switches_on_at_start_step():
    torch.manual_seed(0)
    obj = create_objective("dinov3", backbone=BB, **DINO_SMALL, gram_start_step=2, gram_refresh_every=10)
    trainer = Trainer(obj, ScheduleConfig(lr=1e-3), total_steps=6)
    x = torch.randn(4, 1, 32, 32)
    batch = {"global": [x, x.flip(-1)], "local": [x[..., :16, :16]]}
    res = [trainer.step(batch) for _ in range(4)]
    assert ["loss_gram" in r.metrics for r in res] == [False, False, True, True]
    assert all(math.isfinite(r.loss) for r in res)
    assert 0 < res[2].metrics["loss_gram"] < 4  # cosine Gram entries lie in [-1, 1]


def test_dinov3_defaults_and_high_res_phase():
    cfg = create_objective("dinov3", backbone=BB, **DINO_SMALL).cfg
    assert (cfg.centering, cfg.koleo_weight, cfg.ibot, cfg.gram_weight, cfg.gram_teacher_upscale) == (
        "sinkhorn_knopp",
        0.1,
        True,
        2.0,
        2.0,
    )
    hr = create_objective("dinov3", backbone=BB, **DINO_SMALL, high_res_adaptation=True, gram_weight=1.0).cfg
    assert (hr.gram_start_step, hr.gram_max_refreshes, hr.gram_teacher_upscale, hr.warmup_teacher_temp_fraction) == (
        0,
        0,
        1.5,
        0.0,
    )
    assert hr.gram_weight == 1.0  # set explicitly: kept
    assert {"dinov3", "lejepa", "salt", "cine_salt"} <= set(list_objectives())


# -- exact resume of every new objective ---------------------------------------------------------------
def _objective(name: str, teacher: torch.nn.Module | None):
    if name == "dinov3":
        obj = create_objective(
            name, backbone=BB, **DINO_SMALL, gram_start_step=2, gram_refresh_every=2, gram_teacher_upscale=2.0
        )
    elif name == "cine_salt":
        obj = create_objective(name, backbone=BB, frames=2, predictor_depth=1, num_targets=2)
    else:
        obj = create_objective(name, backbone=BB, predictor_depth=1, num_targets=2)
    if teacher is not None:
        obj.set_teacher(teacher)
    return obj


def _batch(name: str, i: int) -> dict:
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(4, 1, 32, 32, generator=g)
    if name == "dinov3":
        return {"global": [x, x.flip(-1)], "local": [x[..., :16, :16]]}
    if name == "cine_salt":
        return {"clips": torch.randn(4, 1, 2, 32, 32, generator=g)}
    return {"images": x}


@pytest.mark.parametrize("name", ["dinov3", "lejepa", "salt", "cine_salt"])
def test_new_objectives_resume_exactly(tmp_path, name):
    teacher = _teacher() if "salt" in name else None
    torch.manual_seed(0)
    trainer = Trainer(_objective(name, teacher), ScheduleConfig(lr=1e-3, warmup_steps=1), total_steps=10)
    for i in range(3):
        trainer.step(_batch(name, i))
    save_training_state(tmp_path, trainer.objective, trainer.optimizer, trainer.global_step, epoch=0)
    save_rng(tmp_path, rank=0)
    expected = [trainer.step(_batch(name, i)) for i in range(3, 5)]

    torch.manual_seed(123)  # another init: everything must come from the checkpoint (and the same teacher)
    resumed = Trainer(_objective(name, teacher), ScheduleConfig(lr=1e-3, warmup_steps=1), total_steps=10)
    resumed.global_step = load_training_state(tmp_path, resumed.objective, resumed.optimizer, rank=0)["step"]
    got = [resumed.step(_batch(name, i)) for i in range(3, 5)]
    for e, g in zip(expected, got, strict=True):
        assert g.loss == pytest.approx(e.loss, abs=1e-6)
        assert g.metrics == pytest.approx(e.metrics, abs=1e-6)
    a, b = trainer.objective.state_dict(), resumed.objective.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if name == "dinov3":
        assert "gram_teacher.pos_embed" in a and int(b["gram_snapshots"]) == 2  # snapshots at steps 2 and 4


# -- SALT ----------------------------------------------------------------------------------------------
def test_salt_teacher_is_frozen_and_unreachable():
    torch.manual_seed(0)
    teacher = _teacher("vit_small")  # wider than the student: the predictor projects to its width
    obj = create_objective("salt", backbone=BB)
    obj.set_teacher(teacher)
    before = _hash(teacher)
    trainer = Trainer(obj, ScheduleConfig(lr=1e-2), total_steps=5)
    student_before = _hash(obj.backbone)
    for i in range(3):
        res = trainer.step(_batch("salt", i))
        assert math.isfinite(res.loss)
    assert _hash(teacher) == before and _hash(obj.backbone) != student_before
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert not {id(p) for p in obj.parameters()} & {id(p) for p in teacher.parameters()}  # DDP sees no teacher
    assert not any(k.startswith("_teacher") or "teacher" in k for k in obj.state_dict())
    obj.train()
    assert not teacher.training  # no drop-path or dropout in the targets
    assert obj.predictor.proj.out_features == teacher.embed_dim == 384
    assert obj.encoder() is obj.backbone


def test_salt_rejects_teacher_on_another_grid_and_runs_without_one_never():
    obj = create_objective("salt", backbone=BB)
    with pytest.raises(RuntimeError, match="no teacher set"):
        obj(_batch("salt", 0))
    with pytest.raises(ConfigError, match="patch size"):
        obj.set_teacher(_teacher(patch=4))
    with pytest.raises(ConfigError, match="channel"):
        obj.set_teacher(_teacher(in_chans=3))


def test_salt_teacher_from_folder_and_registry_recorded_on_card(tmp_path):
    from pretextlab.registry import EncoderRegistry

    cfg = BackboneConfig(arch="vit_small", img_size=32, patch_size=8, depth=1, in_chans=1, global_pool="avg")
    model = create_backbone(cfg)
    _save_teacher(tmp_path / "teacher", model, cfg)
    sha = json.loads((tmp_path / "teacher" / "card.json").read_text())["weights_sha256"]
    obj = apply_weights(create_objective("salt", backbone=BB, teacher=str(tmp_path / "teacher")), str(tmp_path / "r"))
    assert obj.provenance == {"teacher": str((tmp_path / "teacher").resolve()), "teacher_sha256": sha}
    assert _hash(obj.teacher) == _hash(model)

    ref = EncoderRegistry(str(tmp_path / "reg")).register(
        model, EncoderCard.model_validate_json((tmp_path / "teacher" / "card.json").read_text()), "us-mae"
    )
    obj = apply_weights(create_objective("salt", backbone=BB, teacher="us-mae:latest"), str(tmp_path / "reg"))
    assert obj.provenance["teacher"] == ref.id and obj.provenance["teacher_sha256"] == sha
    with pytest.raises(ConfigError, match=r"^objective.teacher: nope: .*no encoder named 'nope'"):
        apply_weights(create_objective("salt", backbone=BB, teacher="nope"), str(tmp_path / "reg"))
    with pytest.raises(ConfigError, match="needs a frozen teacher"):
        apply_weights(create_objective("salt", backbone=BB), str(tmp_path / "reg"))


def test_card_records_teacher(tmp_path):
    from pretextlab.training.config import PretrainConfig
    from pretextlab.training.setup import check, encoder_card

    cfg = BackboneConfig(arch="vit_small", img_size=32, patch_size=8, depth=1, in_chans=1, global_pool="avg")
    _save_teacher(tmp_path / "teacher", create_backbone(cfg), cfg)
    run = PretrainConfig.model_validate(
        {
            "name": "us-salt",
            "modality": "ultrasound",
            "data": {"kind": "frames", "sources": [{"uri": str(tmp_path / "store"), "modality": "ultrasound"}]},
            "objective": {
                "name": "salt",
                "backbone": {k: v for k, v in BB.items() if k != "in_chans"},
                "teacher": str(tmp_path / "teacher"),
            },
            "registry": str(tmp_path / "reg"),
        }
    )
    objective, views = check(run)
    card = encoder_card(run, objective, views)
    assert card.teacher == str((tmp_path / "teacher").resolve())
    assert card.teacher_sha256 == json.loads((tmp_path / "teacher" / "card.json").read_text())["weights_sha256"]


# -- starting from weights -----------------------------------------------------------------------------
def _tiny_timm(img_size: int = 64, in_chans: int = 3) -> torch.nn.Module:
    """A tiny ViT as timm saves pretrained ones: classifier head, RGB, its own image size."""
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=img_size,
        patch_size=8,
        depth=1,
        in_chans=in_chans,
        num_classes=10,
    )


def _check_loaded(obj, source_state: dict[str, torch.Tensor]) -> None:
    """Backbone and twins carry the source's blocks; position embeddings are resampled to 4x4 patches."""
    for m in [obj.backbone, *obj.backbone_twins()]:
        sd = m.state_dict()
        assert torch.equal(sd["blocks.0.attn.qkv.weight"], source_state["blocks.0.attn.qkv.weight"])
        assert sd["pos_embed"].shape == (1, 1 + 16, 192)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = obj.encoder().eval()(x)
    assert out.shape == (2, 192) and torch.isfinite(out).all()


def test_init_from_safetensors_file_resamples_and_adapts(tmp_path):
    src = _tiny_timm()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    obj = apply_weights(create_objective("ijepa", backbone=BB, init=str(path)), str(tmp_path))
    _check_loaded(obj, src.state_dict())
    # RGB filters summed to the one grayscale channel (timm's adapt_input_conv)
    w = obj.backbone.patch_embed.proj.weight
    assert torch.allclose(w[:, 0], src.patch_embed.proj.weight.sum(dim=1))
    assert obj.provenance["init"] == str(path.resolve()) and len(obj.provenance["init_sha256"]) == 64


def test_init_from_timm_name_in_hf_cache_and_weights_dir(tmp_path, monkeypatch):
    name = "vit_tiny_patch16_224.augreg_in21k"
    src = _tiny_timm()
    snap = tmp_path / "hub" / f"models--timm--{name}" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 10}))
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("PRETEXTLAB_WEIGHTS_DIR", raising=False)
    obj = apply_weights(create_objective("dinov3", backbone=BB, **DINO_SMALL, init=f"timm:{name}"), str(tmp_path))
    _check_loaded(obj, src.state_dict())
    assert obj.provenance["init"] == f"timm:{name}"
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"

    other = _tiny_timm(img_size=48)
    (tmp_path / "wd" / "my_vit").mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()},
        str(tmp_path / "wd" / "my_vit" / "model.safetensors"),
    )
    monkeypatch.setenv("PRETEXTLAB_WEIGHTS_DIR", str(tmp_path / "wd"))
    obj = apply_weights(create_objective("ijepa", backbone=BB, init="timm:my_vit"), str(tmp_path))
    _check_loaded(obj, other.state_dict())
    with pytest.raises(ConfigError, match="timm:absent_vit: no local weights .*never downloads"):
        apply_weights(create_objective("ijepa", backbone=BB, init="timm:absent_vit"), str(tmp_path))


def test_init_from_registry_encoder(tmp_path):
    from pretextlab.registry import EncoderRegistry

    cfg = BackboneConfig(img_size=64, patch_size=8, depth=1, in_chans=1, global_pool="avg")
    src = create_backbone(cfg)
    card = EncoderCard(
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=192,
        img_size=64,
        patch_size=8,
        in_chans=1,
        global_pool="avg",
        objective="ijepa",
    )
    ref = EncoderRegistry(str(tmp_path / "reg")).register(src, card, "us-ijepa")
    obj = apply_weights(create_objective("ijepa", backbone=BB, init="registry:us-ijepa"), str(tmp_path / "reg"))
    _check_loaded(obj, src.state_dict())
    assert obj.provenance == {"init": f"registry:{ref.id}", "init_sha256": ref.card.weights_sha256}
    with pytest.raises(ConfigError, match="^objective.init: missing: .*no encoder named 'missing'"):
        apply_weights(create_objective("ijepa", backbone=BB, init="registry:missing"), str(tmp_path / "reg"))


def test_mismatched_weights_give_one_line_error(tmp_path):
    small = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=0
    )
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    with pytest.raises(ConfigError) as err:
        apply_weights(create_objective("ijepa", backbone=BB, init=str(path)), str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"objective.init: {path}: weights do not fit the backbone")
    assert "18 of another shape (" in msg and "blocks.0.attn.proj.weight (384, 384) vs (192, 192)" in msg
    assert "12 unexpected (blocks.1." in msg
    for bad, match in [("x.pt", "expected registry:<address>"), (str(tmp_path / "none.safetensors"), "no such file")]:
        with pytest.raises(ConfigError, match=match):
            apply_weights(create_objective("ijepa", backbone=BB, init=bad), str(tmp_path))


def test_cli_bad_init_is_one_line_exit_2(tmp_path):
    import yaml

    from conftest import run_cli

    cfg = {
        "name": "bad-init",
        "modality": "ultrasound",
        "data": {"kind": "frames", "sources": [{"uri": str(tmp_path / "store"), "modality": "ultrasound"}]},
        "objective": {
            "name": "lejepa",
            "backbone": {k: v for k, v in BB.items() if k != "in_chans"},
            "init": "timm:not_cached_vit",
        },
        "storage": str(tmp_path / "runs"),
        "registry": str(tmp_path / "reg"),
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli(
        "pretrain", str(path), env={"PRETEXTLAB_WEIGHTS_DIR": str(tmp_path), "HF_HUB_CACHE": str(tmp_path)}, timeout=120
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "objective.init: timm:not_cached_vit: no local weights" in res.stderr
