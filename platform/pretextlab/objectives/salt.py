"""SALT, static-teacher asymmetric latent training (Li et al. 2025, "Rethinking JEPA: Compute-Efficient
Video SSL with Frozen Teachers", arXiv 2509.24317), and its clip variant ``cine_salt``.

Stage 1 trains a teacher (in the paper a VideoMAE-style pixel-reconstruction encoder; here any
registered encoder: ``teacher: <registry address or encoder folder>``). Stage 2, this objective,
freezes it and trains a student encoder plus a narrow predictor to predict the teacher's latents of
masked blocks from the visible context, with I-JEPA / V-JEPA multi-block masks
(:mod:`pretextlab.objectives.ijepa`). There is no EMA: the targets never move, so the step is one
teacher forward without gradients plus the student and predictor, and the *student* is the encoder
kept. Targets are layer-normed teacher tokens and the loss is L1 by default, as in V-JEPA, whose
training SALT keeps apart from the frozen teacher.

The teacher is not part of the objective's parameters or state dict: training setup
(``pretextlab.training.weights``) loads it, sha256-checked, and hands it over with
:meth:`SALT.set_teacher`. So the optimiser never sees it, DDP neither broadcasts nor all-reduces it,
``objective.train()`` leaves it in eval mode (no drop-path), and checkpoints stay student-sized; a
resumed run reloads the same teacher from its address. Its parameters have ``requires_grad=False``,
it runs under ``torch.no_grad`` and, on CUDA, in bf16 autocast. The teacher's patch grid must match
the student's (same patch size); its width may differ (the predictor projects to the teacher's width).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from pretextlab.core.config import ConfigError
from pretextlab.models.vit import VisionTransformer, encode_clip_tokens, encode_tokens, sincos_1d
from pretextlab.objectives.base import Objective, ObjectiveOutput
from pretextlab.objectives.ijepa import IJEPA, CineJEPAConfig, IJEPAConfig, _predictor, multiblock_masks
from pretextlab.objectives.masks import tube_indices
from pretextlab.objectives.registry import register_objective


class SALTConfig(IJEPAConfig):
    teacher: str | None = Field(
        None,
        description=(
            "the frozen teacher: a registry address (name, name:version, chosen:<modality>) in the run's "
            "registry, or an encoder folder; resolved by training setup"
        ),
    )
    loss: str = Field("l1", description="V-JEPA / SALT: L1 on layer-normed teacher latents")
    target_norm: bool = Field(True, description="layer-norm the teacher's tokens (V-JEPA / I-JEPA)")


class CineSALTConfig(SALTConfig, CineJEPAConfig):
    pass


def _no_teacher(name: str) -> RuntimeError:
    return RuntimeError(
        f"{name}: no teacher set (training setup loads objective.teacher; in code call objective.set_teacher(encoder))"
    )


@register_objective
class SALT(Objective):
    """SALT: a student and predictor regress a frozen (static) teacher's latents of masked blocks.

    - "SALT: static-teacher asymmetric latent training", 2025 (arXiv:2509.24317); it builds on the V-JEPA
      code, https://github.com/facebookresearch/jepa (the masks and predictor follow it here)
    """

    name = "salt"
    family = "jepa"
    views = "single"
    config_class = SALTConfig
    cfg: SALTConfig
    default_pool = "avg"
    #: training setup resolves ``cfg.teacher`` and calls :meth:`set_teacher`
    needs_teacher = True
    #: the frozen teacher, held outside the submodules (set with ``object.__setattr__``)
    _teacher: VisionTransformer | None

    _sample_masks = IJEPA._sample_masks
    _predict_loss = IJEPA._predict_loss

    def __init__(self, cfg: SALTConfig):
        super().__init__(cfg)
        grid = tuple(self.backbone.patch_embed.grid_size)
        self.grid = grid
        self.masks = multiblock_masks(cfg, grid)
        self.predictor = _predictor(cfg, self.backbone.embed_dim, grid, getattr(cfg, "frames", 1))
        object.__setattr__(self, "_teacher", None)  # deliberately not a submodule (see the module doc)

    @property
    def teacher(self) -> VisionTransformer | None:
        return self._teacher

    def set_teacher(self, teacher: nn.Module) -> None:
        """Freeze ``teacher`` (a timm ViT) and use it for the targets."""
        mine = self.backbone.patch_embed
        theirs = getattr(teacher, "patch_embed", None)
        if theirs is None or not hasattr(teacher, "embed_dim"):
            raise ConfigError(f"objective.teacher: {type(teacher).__name__} is not a timm ViT")
        if tuple(theirs.patch_size) != tuple(mine.patch_size):
            raise ConfigError(
                f"objective.teacher: the teacher's patch size {tuple(theirs.patch_size)} differs "
                f"from the student's {tuple(mine.patch_size)}: their patch grids must match"
            )
        if theirs.proj.in_channels != mine.proj.in_channels:
            raise ConfigError(
                f"objective.teacher: the teacher takes {theirs.proj.in_channels} channel(s), "
                f"the student's views have {mine.proj.in_channels}"
            )
        for p in teacher.parameters():
            p.requires_grad_(False)
        device = next(self.backbone.parameters()).device
        # a timm ViT by the checks above, read the way encode_tokens reads one
        vit = cast(VisionTransformer, teacher.to(device).eval())
        object.__setattr__(self, "_teacher", vit)
        if vit.embed_dim != self.predictor.proj.out_features:
            self.predictor.proj = nn.Linear(self.predictor.proj.in_features, vit.embed_dim).to(device)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> Self:
        """``.to(device)`` / ``.cuda()`` move the teacher too."""
        super()._apply(fn, *args, **kwargs)  # type: ignore[no-untyped-call]  # torch's Module._apply is unannotated
        teacher: VisionTransformer | None = getattr(self, "_teacher", None)
        if teacher is not None:
            teacher._apply(fn, *args, **kwargs)  # type: ignore[no-untyped-call]  # as above
        return self

    def _teacher_context(self, x: torch.Tensor) -> torch.autocast:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda)

    def _targets(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.float()
        return F.layer_norm(tokens, (tokens.shape[-1],)) if self.cfg.target_norm else tokens

    def forward(self, batch: dict) -> ObjectiveOutput:
        if self._teacher is None:
            raise _no_teacher(self.name)
        images = batch["images"]
        b = images.shape[0]
        ctx_idx, tgt_idx = self._sample_masks(batch, b, images.device)
        with torch.no_grad(), self._teacher_context(images):
            h = encode_tokens(self._teacher, images)[:, self._teacher.num_prefix_tokens :]
        h = self._targets(h)
        z = encode_tokens(self.backbone, images, keep=ctx_idx)[:, self.backbone.num_prefix_tokens :]
        loss = self._predict_loss(z, ctx_idx, h, tgt_idx)
        return ObjectiveOutput(loss=loss, metrics={"loss_latent": loss.detach()})


@register_objective
class CineSALT(SALT):
    """SALT on clips, as the paper's video setting: tube masks, the 2-D frame ViTs encode all T×N
    tokens jointly with fixed temporal sin-cos embeddings (as ``cine_jepa`` / ``cine_mae``).

    - arXiv:2509.24317 (SALT); V-JEPA code: https://github.com/facebookresearch/jepa
    """

    name = "cine_salt"
    views = "clip"
    config_class = CineSALTConfig
    cfg: CineSALTConfig
    temporal: torch.Tensor

    def __init__(self, cfg: CineSALTConfig):
        super().__init__(cfg)
        self.frames = cfg.frames
        self.register_buffer("temporal", sincos_1d(cfg.frames, self.backbone.embed_dim), persistent=False)

    def forward(self, batch: dict) -> ObjectiveOutput:
        if self._teacher is None:
            raise _no_teacher(self.name)
        clips = batch["clips"]
        b, t = clips.shape[0], clips.shape[2]
        if t != self.frames:
            raise ValueError(f"clips have {t} frames, the objective was built for frames={self.frames}")
        n = self.grid[0] * self.grid[1]
        ctx_sp, tgt_sp = self._sample_masks(batch, b, clips.device)
        ctx_idx = tube_indices(ctx_sp, t, n)
        tgt_idx = [tube_indices(x, t, n) for x in tgt_sp]
        with torch.no_grad(), self._teacher_context(clips):
            temporal = sincos_1d(t, self._teacher.embed_dim).to(clips.device)
            h = encode_clip_tokens(self._teacher, clips, temporal)[:, 1:]
        h = self._targets(h)
        z = encode_clip_tokens(self.backbone, clips, self.temporal, keep=ctx_idx)[:, 1:]
        loss = self._predict_loss(z, ctx_idx, h, tgt_idx)
        return ObjectiveOutput(loss=loss, metrics={"loss_latent": loss.detach()})
