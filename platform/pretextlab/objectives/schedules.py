"""Per-step schedules as in the DINO / I-JEPA / MAE recipes: cosine with linear warm-up for the
learning rate, cosine for weight decay and for the EMA momentum (0.996 -> 1.0)."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field


def cosine(step: int, total: int, start: float, end: float, warmup: int = 0, warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``start`` over ``warmup`` steps, then cosine to ``end``."""
    if warmup > 0 and step < warmup:
        return warmup_start + (start - warmup_start) * step / warmup
    span = max(1, total - warmup)
    t = min(max(step - warmup, 0), span) / span
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


class ScheduleConfig(BaseModel):
    """Optimiser schedules; defaults from DINO (lr warm-up, wd 0.04 -> 0.4, momentum 0.996 -> 1)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(5e-4, gt=0, description="peak learning rate (after warm-up)")
    min_lr: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    momentum: float = Field(0.996, ge=0, le=1, description="EMA momentum of the teacher/target")
    momentum_end: float = Field(1.0, ge=0, le=1)


class Schedules:
    """The values of every schedule at a step: ``lr(step)``, ``weight_decay(step)``, ``momentum(step)``."""

    def __init__(self, cfg: ScheduleConfig, total_steps: int):
        self.cfg, self.total = cfg, max(1, total_steps)

    def lr(self, step: int) -> float:
        c = self.cfg
        return cosine(step, self.total, c.lr, c.min_lr, c.warmup_steps)

    def weight_decay(self, step: int) -> float:
        c = self.cfg
        return cosine(step, self.total, c.weight_decay, c.weight_decay_end)

    def momentum(self, step: int) -> float:
        c = self.cfg
        return cosine(step, self.total, c.momentum, c.momentum_end)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set lr on every group and weight decay on the groups that decay."""
        lr, wd = self.lr(step), self.weight_decay(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if group.get("apply_wd", True):
                group["weight_decay"] = wd


def param_groups(module: torch.nn.Module) -> list[dict]:
    """Two groups: decayed weights, and biases/norms/tokens/positional embeddings without decay."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "token" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]
