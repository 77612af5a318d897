"""The pretraining run config: data stream, objective, views, training loop, validation, storage.

One YAML file (``configs/pretrain/*.yaml``) plus ``key=value`` overrides, validated here before any
Ray worker starts. Sweeps, the study grid and the encoder card all store this model's JSON dump, so
a run can be re-created from its card alone.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pretextlab.core.names import Name
from pretextlab.modalities import ModalityName
from pretextlab.objectives.schedules import ScheduleConfig
from pretextlab.storage.stream import StreamSpec


class ObjectiveSpec(BaseModel):
    """``name`` picks the objective; every other field goes to its config (validated by the registry)."""

    model_config = ConfigDict(extra="allow")

    name: str

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k != "name"}


class TrainSpec(BaseModel):
    """The Ray Train loop: scale, steps, batch, schedules, logging and checkpoint cadence."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(
        200, ge=1, description="total optimiser steps (over all workers, each step is one batch per worker)"
    )
    batch_size: int = Field(32, ge=1, description="images (or clips) per worker per step")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP processes)")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL, bf16 autocast")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs reserved per worker (fractional leaves room for Ray Data on small machines)"
    )
    data_cpus: float = Field(0.5, gt=0, description="CPUs per Ray Data views task")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip: float | None = Field(3.0, gt=0)
    bf16: bool | None = Field(None, description="bf16 autocast (default: on for GPU)")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint")
    seed: int = 0
    prefetch_batches: int = Field(2, ge=0)

    def epoch_at(self, step: int, samples_per_epoch: int) -> int:
        """The stream epoch that step ``step`` reads from: every step takes ``batch_size`` samples on
        each of ``num_workers`` workers. The one formula for resume, sweeps and the worker loop."""
        return int(step) * self.batch_size * self.num_workers // max(1, int(samples_per_epoch))


class ValidationSpec(BaseModel):
    """Online kNN (and optionally a linear probe) on a labelled catalog every ``every`` steps (rank 0,
    frozen features)."""

    model_config = ConfigDict(extra="forbid")

    catalog: str = Field(description="a store whose catalog has the label column")
    label_column: str = "label"
    every: int = Field(50, ge=1)
    k: int = Field(20, ge=1)
    patches_per_slide: int = Field(8, ge=1)
    test_size: float = Field(0.3, gt=0, lt=1)
    linear: bool = Field(False, description="also fit a logistic-regression probe (C=1) and report linear_acc")


class PretrainConfig(BaseModel):
    """Everything one pretraining run needs."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="run name: the run folder under storage and the encoder name")
    modality: ModalityName = Field(description="a registered modality (pretextlab.modalities)")
    data: StreamSpec
    objective: ObjectiveSpec
    views: dict[str, Any] = Field(default_factory=dict, description="view config overrides")
    train: TrainSpec = Field(default_factory=TrainSpec)
    validation: ValidationSpec | None = None
    storage: str = Field("runs", description="run storage (checkpoints, TensorBoard): folder or s3:// prefix")
    registry: str = Field("registry", description="encoder registry root: folder or s3:// prefix")

    @model_validator(mode="after")
    def _cadence(self) -> PretrainConfig:
        if self.train.checkpoint_every > self.train.steps:
            self.train.checkpoint_every = self.train.steps
        return self
