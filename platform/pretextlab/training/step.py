"""One optimisation step of an objective: schedules, bf16 autocast on CUDA, gradient clipping, EMA.

Pure PyTorch. The Ray Train loop (jobs/pretrain) wraps the same ``Trainer`` in DDP.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from pretextlab.objectives.base import Objective
from pretextlab.objectives.schedules import ScheduleConfig, Schedules, param_groups


def build_optimizer(
    objective: Objective, cfg: ScheduleConfig, device: torch.device | str = "cpu"
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, no decay on biases/norms/tokens; fused on CUDA."""
    groups = param_groups(objective.trainable())
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), fused=fused)


@dataclass
class StepResult:
    step: int
    loss: float
    lr: float
    momentum: float
    seconds: float
    metrics: dict[str, float]


class Trainer:
    """Holds objective, optimiser and schedules; ``step(batch)`` runs one update and returns figures."""

    def __init__(
        self,
        objective: Objective,
        schedule: ScheduleConfig,
        total_steps: int,
        device: torch.device | str = "cpu",
        grad_clip: float | None = 3.0,
        bf16: bool | None = None,
    ):
        self.objective = objective.to(device)
        self.device = torch.device(device)
        self.schedules = Schedules(schedule, total_steps)
        self.optimizer = build_optimizer(objective, schedule, self.device)
        self.total_steps = total_steps
        self.grad_clip = grad_clip
        self.bf16 = (self.device.type == "cuda") if bf16 is None else bf16
        self.global_step = 0
        #: the module whose forward runs the step: the objective, or a DDP wrapper of it
        self.forward_module: torch.nn.Module = self.objective

    def autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast on the trainer's device when enabled, else a no-op context."""
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def step(self, batch: dict) -> StepResult:
        t0 = time.perf_counter()
        s = self.global_step
        self.schedules.apply(self.optimizer, s)
        if hasattr(self.objective, "set_progress"):
            self.objective.set_progress(s / self.total_steps)
        self.objective.train()
        with self.autocast():
            out = self.forward_module(batch)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"loss is {float(out.loss)} at step {s}")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.objective.trainable().parameters(), self.grad_clip)
        self.optimizer.step()
        momentum = self.schedules.momentum(s)
        self.objective.update_ema(momentum)
        self.global_step += 1
        return StepResult(
            step=s,
            loss=float(out.loss.detach()),
            lr=self.schedules.lr(s),
            momentum=momentum,
            seconds=time.perf_counter() - t0,
            metrics={k: float(v) for k, v in out.metrics.items()},
        )
