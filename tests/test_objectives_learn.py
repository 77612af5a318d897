"""Each objective, trained briefly on a tiny generated set with a learnable signal, beats the same
encoder at random initialisation on kNN accuracy by a stated margin with a paired test; the same steps
with the loss detached gain nothing (negative control); a collapsed encoder is flagged.

The set: blobs (class 0) vs stripes at a random angle (class 1) under random gain and offset (a
nuisance the views' gain jitter teaches to ignore); RGB with random colour casts for the
histopathology variant. Small ViTs (24 px, patch 4, depth 2) keep each run to 20-100 s on 2 cores.

The claim "it learned" is: on 512 test images, the trained encoder's kNN accuracy exceeds its own
random init's by >= MARGIN, and the exact McNemar test on the paired per-image outcomes (only images
one of them gets right count) gives p < ALPHA. Random init is not near chance on this set (0.91
grayscale, 0.77 RGB). On the near-chance ``background`` set (a faint texture over a strong smooth random
background, random init ~0.55) SimCLR must pass the same test; the other objectives do not gain there at
this budget, the limit reported with its figures and command in docs/objectives.md ("Does it learn at
laptop scale?").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from pretextlab.evaluate.diagnostics import is_collapsed
from pretextlab.evaluate.knn import knn_predict
from pretextlab.evaluate.stats import mcnemar_exact
from pretextlab.modalities import create_views
from pretextlab.objectives import ScheduleConfig, create_objective
from pretextlab.training import Trainer

SIZE = 24


def _pattern(g: np.random.Generator, label: int, size: int) -> np.ndarray:
    """Class 0: six Gaussian blobs; class 1: stripes at a random angle and phase; values in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size]
    if label == 0:
        img = np.zeros((size, size))
        for _ in range(6):
            cy, cx = g.uniform(0, size, 2)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0)
        return np.clip(img, 0, 1)
    ang = g.uniform(0, np.pi)
    return 0.5 + 0.5 * np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * 1.2 + g.uniform(0, 6))


def _to_uint8(img: np.ndarray, g: np.random.Generator, rgb: bool) -> np.ndarray:
    """Grey, or RGB with a random colour cast; clipped to 0-255."""
    img = img[..., None] * (g.uniform(0.5, 1.0, 3) if rgb else 1.0)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def make_set(n: int, seed: int, rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    images = []
    for i in range(n):
        img = _pattern(g, i % 2, SIZE) * g.uniform(0.3, 1.0) + g.uniform(0, 0.5)
        images.append(_to_uint8(img, g, rgb))
    return np.stack(images), np.arange(n) % 2


#: near-chance sets: a faint texture (the label) over a nuisance that dominates random-init features:
#: ``offset``: texture amplitude 0.1 under a random brightness offset up to 0.9 (random init ~0.52);
#: ``background``: amplitude 0.3 over a strong smooth random background (random init ~0.55)
VARIANTS = {"offset": (0.1, 0.0, 0.9), "background": (0.3, 0.6, 0.2)}


def variant_set(n: int, seed: int, rgb: bool, amp: float, background: float, offset: float, size: int | None = None):
    """Blobs vs stripes at amplitude ``amp`` (x a random gain 0.5-1), plus a smooth random background of
    strength ``background`` and a random brightness offset up to ``offset``; ``size`` px (the test's)."""
    g = np.random.default_rng(seed)
    size = size or SIZE
    images = []
    for i in range(n):
        img = _pattern(g, i % 2, size) * amp * g.uniform(0.5, 1.0)
        if background:
            img = img + background * gaussian_filter(g.normal(size=(size, size)), 4) * 8
        images.append(_to_uint8(img + g.uniform(0, offset), g, rgb))
    return np.stack(images), np.arange(n) % 2


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
    # I-JEPA and cine MAE at 250 / 150 steps gained, but not significantly (p = 0.07 both) and, for I-JEPA,
    # not at every seed; 500 / 250 steps pass at seeds 0, 1, 2 (docs/objectives.md). Cine MAE's clips
    # are 2 identical frames: tube masking over time is exercised at half the tokens of 4.
    "ijepa": ("histopathology", 500, dict(lr=3e-4, momentum=0.98, momentum_end=0.995), dict(predictor_depth=2)),
    "cine_mae": ("ultrasound", 250, dict(lr=5e-4, momentum=0.99), dict(frames=2)),
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
    # issue 17: LeJEPA (no teacher, no EMA) and SALT with a frozen random-init teacher of the same shape
    # (SALT's stage 1 is any pretrained encoder; a random one is the weakest teacher it can have)
    "lejepa": ("ultrasound", 100, dict(lr=5e-4), dict(predictor_depth=2)),
    "salt": ("ultrasound", 100, dict(lr=5e-4), dict(predictor_depth=2)),
}


def train_steps(obj, views, train, steps: int, schedule: dict, clip: bool, detached: bool = False) -> None:
    trainer = Trainer(obj, ScheduleConfig(warmup_steps=20, **schedule), total_steps=steps)
    if detached:
        trainer.forward_module = DetachedLoss(obj)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(train[0]), (48,), generator=g).numpy()
        images = torch.from_numpy(train[0][idx]).permute(0, 3, 1, 2)
        if clip:  # still images as clips of identical frames: the tube masks must still be learnt
            batch = views({"clips": images[:, :, None].expand(-1, -1, 6, -1, -1)}, g)
        else:
            batch = views({"images": images}, g)
        trainer.step(batch)


MARGIN = 0.02  # kNN accuracy points over random init, on N_TEST paired test images
ALPHA = 0.01  # exact McNemar, two-sided
N_TEST = 512
#: objectives measured not to pass at this budget: (the measured figures, the command). strict xfail, so a
#: recipe fix that makes one pass shows up as XPASS and the entry must go.
LIMITS: dict[str, str] = {}


class DetachedLoss(torch.nn.Module):
    """The objective with its loss cut from the graph: the optimiser steps, EMA and schedules run as in
    training, but no gradient reaches a weight (the negative control)."""

    def __init__(self, objective: torch.nn.Module):
        super().__init__()
        self.objective = objective

    def forward(self, batch):
        out = self.objective(batch)
        return dataclasses.replace(out, loss=out.loss.detach().requires_grad_())


def knn_correct(model: torch.nn.Module, views, train, test) -> np.ndarray:
    mean = torch.tensor(views.config.mean).view(1, -1, 1, 1)
    std = torch.tensor(views.config.std).view(1, -1, 1, 1)

    def feats(x: np.ndarray) -> torch.Tensor:
        t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std
        model.eval()
        with torch.no_grad():
            return model(t)

    preds, _ = knn_predict(feats(train[0]), torch.from_numpy(train[1]), feats(test[0]), k=20)
    return np.asarray(preds) == test[1]


def run_case(name: str, detached: bool = False, seed: int = 0, data=None):
    """(correct before, correct after, steps) of one objective on its case's data, views and budget;
    ``seed`` sets the initial weights and the masks / views drawn (the test uses 0; benchmarks/learning.py
    --seeds checks that a pass does not hang on it)."""
    modality, steps, schedule, extra = CASES[name]
    rgb = modality == "histopathology"
    torch.manual_seed(seed)
    make = data or make_set  # data(n, seed, rgb) -> (images, labels): the set to learn
    train, test = make(512, 0, rgb), make(N_TEST, 1, rgb)
    obj = create_objective(
        name, backbone={"img_size": SIZE, "patch_size": 4, "in_chans": 3 if rgb else 1, "depth": 2}, **extra
    )
    if name == "salt":
        torch.manual_seed(seed + 1)
        teacher = create_objective(
            "mae", backbone={"img_size": SIZE, "patch_size": 4, "in_chans": 3 if rgb else 1, "depth": 2}
        )
        obj.set_teacher(teacher.encoder())
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
    before = knn_correct(obj.encoder(), views, train, test)
    train_steps(obj, views, train, steps, schedule, clip, detached)
    return before, knn_correct(obj.encoder(), views, train, test), steps


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=LIMITS[n])) if n in LIMITS else n for n in CASES],
)
def test_objective_beats_random_init_on_knn(name):
    before, after, steps = run_case(name)
    test = mcnemar_exact(after, before)
    gain = after.mean() - before.mean()
    assert gain >= MARGIN and test.p_value < ALPHA, (
        f"{name}: kNN accuracy {before.mean():.3f} at random init, {after.mean():.3f} after {steps} steps "
        f"(gain {gain:+.3f}, needs >= {MARGIN}); McNemar {test.a_only} vs {test.b_only} discordant, "
        f"p = {test.p_value:.2g} (needs < {ALPHA})"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simclr", "dino"])
def test_the_same_steps_with_the_loss_detached_gain_nothing(name):
    """Negative control: the harness itself (views, schedules, EMA teacher, evaluation) cannot produce a
    gain; only the gradient of the loss can."""
    before, after, _ = run_case(name, detached=True)
    np.testing.assert_array_equal(after, before)


@pytest.mark.slow
def test_simclr_learns_from_near_chance_on_the_background_set():
    """Where random init is near chance (the ``background`` set: the texture under a strong smooth random
    background), SimCLR at its case's budget still gains with the same margin and paired test. The other
    objectives do not at this budget; their figures are the reported limit (docs/objectives.md)."""
    before, after, steps = run_case(
        "simclr", data=lambda n, seed, rgb: variant_set(n, seed, rgb, *VARIANTS["background"])
    )
    test = mcnemar_exact(after, before)
    assert before.mean() <= 0.60, f"random init {before.mean():.3f}: the set is not near chance (<= 0.60)"
    assert after.mean() - before.mean() >= MARGIN and test.p_value < ALPHA, (
        f"simclr on the background set: {before.mean():.3f} -> {after.mean():.3f} after {steps} steps; "
        f"McNemar {test.a_only} vs {test.b_only}, p = {test.p_value:.2g}"
    )


def test_collapsed_encoder_is_flagged_and_trained_one_is_not():
    obj = create_objective("simclr", backbone={"img_size": SIZE, "patch_size": 4, "in_chans": 1, "depth": 2})
    x = torch.randn(64, 1, SIZE, SIZE)
    enc = obj.encoder().eval()
    with torch.no_grad():
        assert not is_collapsed(enc(x))
        enc.norm.weight.zero_()  # every embedding becomes the LayerNorm bias: a collapsed encoder
        assert is_collapsed(enc(x))
