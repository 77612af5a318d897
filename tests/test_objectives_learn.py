"""Each objective, trained briefly on a tiny generated set with a learnable signal, beats the same
encoder at random initialisation on kNN accuracy; a collapsed encoder is flagged.

The set: blobs (class 0) vs stripes at a random angle (class 1) under random gain and offset (a
nuisance the views' gain jitter teaches to ignore); RGB with random colour casts for the
histopathology variant. Small ViTs (24 px, patch 4, depth 2) keep each run under a minute on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretextlab.evaluate.diagnostics import is_collapsed
from pretextlab.evaluate.knn import knn_predict
from pretextlab.modalities import create_views
from pretextlab.objectives import ScheduleConfig, create_objective
from pretextlab.training import Trainer

SIZE = 24


def make_set(n: int, seed: int, rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images, labels = [], []
    for i in range(n):
        lab = i % 2
        if lab == 0:
            img = np.zeros((SIZE, SIZE))
            for _ in range(6):
                cy, cx = g.uniform(0, SIZE, 2)
                img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0)
        else:
            ang = g.uniform(0, np.pi)
            img = 0.5 + 0.5 * np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * 1.2 + g.uniform(0, 6))
        img = np.clip(img, 0, 1) * g.uniform(0.3, 1.0) + g.uniform(0, 0.5)
        img = img[..., None] * (g.uniform(0.5, 1.0, 3) if rgb else 1.0)
        images.append(np.clip(img * 255, 0, 255).astype(np.uint8))
        labels.append(lab)
    return np.stack(images), np.array(labels)


def knn_accuracy(model: torch.nn.Module, views, train, test) -> float:
    mean = torch.tensor(views.config.mean).view(1, -1, 1, 1)
    std = torch.tensor(views.config.std).view(1, -1, 1, 1)

    def feats(x: np.ndarray) -> torch.Tensor:
        t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std
        model.eval()
        with torch.no_grad():
            return model(t)

    preds, _ = knn_predict(feats(train[0]), torch.from_numpy(train[1]), feats(test[0]), k=20)
    return float((np.asarray(preds) == test[1]).mean())


# objective -> (modality of the data/views, steps, schedule, extra objective config)
CASES = {
    "dino": (
        "ultrasound",
        120,
        dict(lr=5e-4, momentum=0.95, momentum_end=0.99),
        dict(out_dim=256, hidden_dim=256, bottleneck_dim=64, warmup_teacher_temp_fraction=0.0, teacher_temp=0.04),
    ),
    "simclr": ("ultrasound", 100, dict(lr=5e-4), dict(proj_hidden_dim=256)),
    "vicreg": ("ultrasound", 100, dict(lr=5e-4), dict(expander_dim=256)),
    "mae": ("ultrasound", 100, dict(lr=5e-4), {}),
    "ijepa": ("histopathology", 250, dict(lr=3e-4, momentum=0.98, momentum_end=0.995), dict(predictor_depth=2)),
    "cine_mae": ("ultrasound", 150, dict(lr=5e-4, momentum=0.99), dict(frames=4)),
    "cine_jepa": ("histopathology", 150, dict(lr=3e-4, momentum=0.98, momentum_end=0.995), dict(frames=4)),
    # issue 17, with dino's settings (lejepa and salt cases: not yet verified on the shared machine)
    "dinov3": (
        "ultrasound",
        120,
        dict(lr=5e-4, momentum=0.95, momentum_end=0.99),
        dict(
            out_dim=256,
            hidden_dim=256,
            bottleneck_dim=64,
            warmup_teacher_temp_fraction=0.0,
            teacher_temp=0.04,
            gram_start_step=60,
            gram_refresh_every=20,
            gram_teacher_upscale=1.0,
        ),
    ),  # 1.0: test time
}


def train_steps(obj, views, train, steps: int, schedule: dict, clip: bool) -> None:
    trainer = Trainer(obj, ScheduleConfig(warmup_steps=20, **schedule), total_steps=steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(train[0]), (48,), generator=g).numpy()
        images = torch.from_numpy(train[0][idx]).permute(0, 3, 1, 2)
        if clip:  # still images as clips of identical frames: the tube masks must still be learnt
            batch = views({"clips": images[:, :, None].expand(-1, -1, 6, -1, -1)}, g)
        else:
            batch = views({"images": images}, g)
        trainer.step(batch)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_objective_beats_random_init_on_knn(name):
    modality, steps, schedule, extra = CASES[name]
    rgb = modality == "histopathology"
    torch.manual_seed(0)
    train, test = make_set(512, 0, rgb), make_set(256, 1, rgb)
    obj = create_objective(
        name, backbone={"img_size": SIZE, "patch_size": 4, "in_chans": 3 if rgb else 1, "depth": 2}, **extra
    )
    clip = obj.views == "clip"
    views = create_views(
        modality,
        obj.views,
        size=SIZE,
        global_size=SIZE,
        local_size=SIZE // 2,
        n_local=2,
        **({"frames": extra["frames"], "strides": (1,)} if clip else {}),
    )
    before = knn_accuracy(obj.encoder(), views, train, test)
    train_steps(obj, views, train, steps, schedule, clip)
    after = knn_accuracy(obj.encoder(), views, train, test)
    assert after > before, f"{name}: kNN accuracy {before:.3f} at random init, {after:.3f} after {steps} steps"


def test_collapsed_encoder_is_flagged_and_trained_one_is_not():
    obj = create_objective("simclr", backbone={"img_size": SIZE, "patch_size": 4, "in_chans": 1, "depth": 2})
    x = torch.randn(64, 1, SIZE, SIZE)
    enc = obj.encoder().eval()
    with torch.no_grad():
        assert not is_collapsed(enc(x))
        enc.norm.weight.zero_()  # every embedding becomes the LayerNorm bias: a collapsed encoder
        assert is_collapsed(enc(x))
