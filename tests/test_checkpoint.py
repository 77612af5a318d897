"""Training-state checkpoints restore a run exactly: the next step after a restore equals the next
step of the uninterrupted run (weights, EMA teacher, optimizer moments, schedules, RNG)."""

from __future__ import annotations

import torch

from pretextlab.modalities import create_views
from pretextlab.objectives import ScheduleConfig, create_objective
from pretextlab.training import Trainer
from pretextlab.training.checkpoint import load_training_state, read_state, save_rng, save_training_state

BACKBONE = {"arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1, "in_chans": 3}


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    obj = create_objective("dino", backbone=BACKBONE, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    trainer = Trainer(obj, ScheduleConfig(lr=1e-3, warmup_steps=2), total_steps=10)
    views = create_views("histopathology", "multicrop", size=32, global_size=32, local_size=16, n_local=2)
    return trainer, views


def _batch(views, i: int):
    g = torch.Generator().manual_seed(100 + i)
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=g)
    return views({"images": images}, torch.Generator().manual_seed(i))


def test_restore_continues_exactly(tmp_path):
    trainer, views = _parts()
    for i in range(3):
        trainer.step(_batch(views, i))
    save_training_state(tmp_path, trainer.objective, trainer.optimizer, trainer.global_step, epoch=0)
    save_rng(tmp_path, rank=0)
    expected = [trainer.step(_batch(views, i)) for i in range(3, 5)]

    resumed, _ = _parts(seed=123)  # different init: everything must come from the checkpoint
    state = load_training_state(tmp_path, resumed.objective, resumed.optimizer, rank=0)
    resumed.global_step = state["step"]
    got = [resumed.step(_batch(views, i)) for i in range(3, 5)]
    assert state["step"] == 3 and read_state(tmp_path)["epoch"] == 0
    for e, g in zip(expected, got, strict=True):
        assert (g.step, g.lr, g.momentum) == (e.step, e.lr, e.momentum)  # schedules continue, not restart
        assert abs(g.loss - e.loss) < 1e-6
    teacher = dict(trainer.objective.named_parameters())
    for name, p in resumed.objective.named_parameters():
        assert torch.equal(p, teacher[name]), name
    assert torch.equal(resumed.objective.center, trainer.objective.center)


def test_incomplete_checkpoint_is_refused(tmp_path):
    trainer, _ = _parts()
    save_training_state(tmp_path, trainer.objective, trainer.optimizer, 1, 0)
    (tmp_path / "state.json").unlink()  # a crash before the last write
    try:
        load_training_state(tmp_path, trainer.objective, trainer.optimizer)
    except FileNotFoundError as exc:
        assert "not a complete checkpoint" in str(exc)
    else:
        raise AssertionError("an incomplete checkpoint was loaded")


def _ijepa_parts(seed: int = 0):
    torch.manual_seed(seed)
    obj = create_objective("ijepa", backbone={**BACKBONE, "in_chans": 1}, predictor_depth=1)
    trainer = Trainer(obj, ScheduleConfig(lr=1e-3, warmup_steps=2), total_steps=10)
    views = create_views("ultrasound", "single", size=32)
    return trainer, views


def _us_batch(views, i: int):
    g = torch.Generator().manual_seed(200 + i)
    images = torch.randint(0, 256, (4, 1, 40, 40), dtype=torch.uint8, generator=g)
    return views({"images": images}, torch.Generator().manual_seed(i))


def test_rng_restore_reproduces_per_step_randomness(tmp_path):
    """I-JEPA draws its masks from the global torch RNG every step, so only a restored RNG reproduces the
    uninterrupted run; the global RNG is deliberately reseeded before loading, and a restore that skips
    the RNG (the negative control) gives different losses."""
    trainer, views = _ijepa_parts()
    for i in range(2):
        trainer.step(_us_batch(views, i))
    save_training_state(tmp_path, trainer.objective, trainer.optimizer, trainer.global_step, epoch=0)
    save_rng(tmp_path, rank=0)
    expected = [trainer.step(_us_batch(views, i)).loss for i in range(2, 5)]

    def resume(rank: int) -> list[float]:
        resumed, _ = _ijepa_parts(seed=7)
        torch.manual_seed(999)  # whatever the process did before loading
        state = load_training_state(tmp_path, resumed.objective, resumed.optimizer, rank=rank)
        resumed.global_step = state["step"]
        return [resumed.step(_us_batch(views, i)).loss for i in range(2, 5)]

    assert resume(rank=0) == expected
    assert resume(rank=1) != expected  # no RNG file for rank 1: masks differ, so the test can tell
