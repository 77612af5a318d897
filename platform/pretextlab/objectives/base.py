"""The one interface every objective implements: a batch of views in, a loss and metrics out.

``Objective.forward(batch)`` returns :class:`ObjectiveOutput`; ``encoder()`` returns the timm ViT to
keep (the EMA teacher/target where the recipe evaluates that one); ``update_ema(momentum)`` moves
the teacher/target after each optimiser step (no-op for objectives without one).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from pretextlab.models.vit import BackboneConfig, VisionTransformer, create_backbone


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class ObjectiveConfig(BaseModel):
    """Fields shared by every objective's config."""

    model_config = ConfigDict(extra="forbid")

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    init: str | None = Field(
        None,
        description=(
            "start the backbone from weights: registry:<address> (a pretextlab encoder), timm:<model name> "
            "(timm's pretrained weights from the local Hugging Face cache or $PRETEXTLAB_WEIGHTS_DIR, never "
            "the network) or a local .safetensors file; applied by training setup (pretextlab.training.weights)"
        ),
    )


class Objective(torch.nn.Module):
    """Base class: subclasses set ``name``, ``family``, ``views`` (the view recipe they consume)."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # "jea" | "jepa" | "pixel"
    views: ClassVar[str] = ""  # "multicrop" | "pair" | "single" | "clip"
    config_class: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    #: global pool the kept encoder uses for embeddings when the config does not say
    default_pool: ClassVar[str] = "token"
    #: objectives that train against a frozen teacher (training setup resolves it and calls :meth:`set_teacher`)
    needs_teacher: ClassVar[bool] = False
    #: frames per clip: declared for the clip objectives (``views == "clip"``), which set it from their
    #: config; the others do not have it
    frames: int

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = create_backbone(cfg.backbone)
        #: weights the run started from (init, teacher: address and sha256), set by training setup
        self.provenance: dict[str, str | None] = {}

    def forward(self, batch: dict) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def encoder(self) -> VisionTransformer:
        """The backbone to keep (a timm ViT)."""
        return self.backbone

    def backbone_twins(self) -> list[VisionTransformer]:
        """Copies of the backbone that start equal to it (EMA teacher/target): ``init`` weights go to
        the backbone and to each of these."""
        return []

    def trainable(self) -> torch.nn.Module:
        """The modules the optimiser updates (everything but EMA copies)."""
        return self

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        """Teacher/target <- momentum * teacher + (1 - momentum) * student. Default: nothing to do."""

    def set_progress(self, fraction: float) -> None:
        """The fraction of training done, before each step (schedules inside the loss). Default: nothing to do."""

    def set_teacher(self, teacher: torch.nn.Module) -> None:
        """Objectives with ``needs_teacher`` take their frozen teacher here; the others have none."""
        raise NotImplementedError(f"objective {self.name} takes no teacher")


M = TypeVar("M", bound=torch.nn.Module)


def ema_copy(module: M) -> M:
    """A frozen copy for a teacher/target network (same type as ``module``)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, momentum: float) -> None:
    t_params: list[torch.Tensor] = list(target.parameters())
    o_params: list[torch.Tensor] = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)
