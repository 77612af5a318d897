"""What a study is: labelled datasets x objective arms x seeds, one pretraining budget, one backbone.

``pretextlab study STUDY.yaml [key=value ...]`` validates this model at the edge (one-line errors naming
the field) before any Ray worker starts. Every arm trains the same backbone for the same number of
steps on the same data; a random-init baseline of that backbone is always added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pretextlab.core.config import load_config
from pretextlab.core.names import Name
from pretextlab.modalities import ModalityName

#: the default arms, one per family (view invariance, latent prediction, pixel reconstruction), with the
#: same objective settings as the shipped laptop configs (configs/pretrain/*.yaml); never tuned per result
DEFAULT_ARMS: list[dict[str, Any]] = [
    {
        "name": "dino",
        "objective": "dino",
        "overrides": {"objective": {"out_dim": 1024, "hidden_dim": 512}, "views": {"n_local": 4}},
    },
    {"name": "ijepa", "objective": "ijepa", "overrides": {}},
    {"name": "mae", "objective": "mae", "overrides": {}},
]
#: clip datasets: the cine variants of the predictive and reconstructive families
CINE_ARMS = {"ijepa": "cine_jepa", "mae": "cine_mae"}
RANDOM_INIT = "random-init"


class DatasetSpec(BaseModel):
    """A labelled store and its modality; optionally a second store to score the probes on."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="the dataset's name in reports and cell ids")
    store: str = Field(description="labelled store (folder or s3:// prefix) that pretraining and probes use")
    modality: ModalityName
    label_column: str = "label"
    kind: Literal["patches", "frames", "clips"] | None = Field(
        None, description="training samples (default: the modality's sampling: patches or frames)"
    )
    test_store: str | None = Field(
        None, description="external transfer: fit the probes on `store`, score them on this store"
    )


class ArmSpec(BaseModel):
    """An objective with its own overrides of the pretraining config (objective.*, views.*)."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = Field(None, description="the arm's name (default: the objective's)")
    objective: str
    overrides: dict[str, Any] = Field(default_factory=dict, description="nested PretrainConfig fields")

    @property
    def label(self) -> str:
        return self.name or self.objective.replace("_", "-")


class StudyConfig(BaseModel):
    """Everything one study needs; see configs/study/*.yaml."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="the study folder under `storage`")
    datasets: list[DatasetSpec] = Field(min_length=1)
    arms: list[ArmSpec] = Field(default_factory=lambda: [ArmSpec(**a) for a in DEFAULT_ARMS])
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    steps: int = Field(ge=1, description="pretraining budget: optimiser steps, the same for every arm")
    backbone: dict[str, Any] = Field(
        default_factory=lambda: {"arch": "vit_tiny", "img_size": 64, "patch_size": 8, "depth": 4},
        description="one backbone for every arm (BackboneConfig fields)",
    )
    pretrain: dict[str, Any] = Field(
        default_factory=dict,
        description="PretrainConfig fields shared by every arm (train.*, data.patch, data.clip, views)",
    )
    evaluate: dict[str, Any] = Field(default_factory=dict, description="EvaluateConfig fields for every cell")
    storage: str = Field("studies", description="where the study folder goes (folder or s3:// prefix)")
    registry: str = Field("registry", description="encoder registry: every arm is registered there")
    max_concurrent: int | None = Field(None, ge=1, description="cells at once (default: what the cluster holds)")

    @model_validator(mode="after")
    def _unique(self) -> StudyConfig:
        for what, names in (("datasets", [d.name for d in self.datasets]), ("arms", [a.label for a in self.arms])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what}: names must be unique, repeated: {', '.join(dup)}")
        if RANDOM_INIT in [a.label for a in self.arms]:
            raise ValueError(f"arms: {RANDOM_INIT!r} is the baseline every study adds; name the arm differently")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: repeated seed")
        return self


def load_study(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """The study at ``path`` with ``key=value`` overrides, validated (one-line ConfigError otherwise)."""
    return load_config(StudyConfig, path, overrides)
