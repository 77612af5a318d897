"""I-JEPA (Assran et al. 2023) and its spatio-temporal variant for cine loops (V-JEPA style,
Bardes et al. 2024): predict the EMA target encoder's latents of masked blocks from a context block.
The target encoder is the one kept (as in the I-JEPA evaluations)."""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import Field

from pretextlab.models.vit import VisionTransformer, encode_clip_tokens, encode_tokens, sincos_1d
from pretextlab.objectives.base import Objective, ObjectiveConfig, ObjectiveOutput, ema_copy, ema_update
from pretextlab.objectives.losses import latent_regression_loss
from pretextlab.objectives.masks import MultiBlockMasks, tube_indices
from pretextlab.objectives.predictor import Predictor
from pretextlab.objectives.registry import register_objective


class IJEPAConfig(ObjectiveConfig):
    num_targets: int = Field(4, ge=1, description="I-JEPA: 4 target blocks")
    target_scale: tuple[float, float] = Field((0.15, 0.2), description="I-JEPA target block scale")
    target_aspect: tuple[float, float] = Field((0.75, 1.5), description="I-JEPA target aspect ratio")
    context_scale: tuple[float, float] = Field((0.85, 1.0), description="I-JEPA context block scale")
    min_keep: int = Field(4, ge=1)
    predictor_depth: int = Field(6, ge=1, description="I-JEPA ViT-H: 12; narrow and shallower for small ViTs")
    predictor_dim: int | None = Field(None, description="default: half the encoder width")
    predictor_heads: int | None = Field(None)
    loss: str = Field("smooth_l1", description="smooth_l1 (reference code) | l2 (paper) | l1")
    mask_placement: Literal["full", "reference"] = Field(
        "full",
        description=(
            "full: mask blocks may span the patch grid and touch every edge; reference: as "
            "facebookresearch/ijepa (and lightly) place them, at most (H-1) x (W-1) and never on the last "
            "row or column, which leaves a smaller context (objectives/masks.py)"
        ),
    )


def multiblock_masks(cfg: IJEPAConfig, grid: tuple[int, int]) -> MultiBlockMasks:
    """The multi-block mask sampler of an I-JEPA-family config (I-JEPA, LeJEPA, SALT) on ``grid``."""
    return MultiBlockMasks(
        grid[0],
        grid[1],
        cfg.num_targets,
        cfg.target_scale,
        cfg.target_aspect,
        cfg.context_scale,
        min_keep=cfg.min_keep,
        reference_placement=cfg.mask_placement == "reference",
    )


def _predictor(cfg: IJEPAConfig, embed_dim: int, grid: tuple[int, int], frames: int = 1) -> Predictor:
    dim = cfg.predictor_dim or max(32, embed_dim // 2)
    heads = cfg.predictor_heads or max(1, dim // 32)
    return Predictor(embed_dim, dim, cfg.predictor_depth, heads, grid, frames)


class _MaskedLatentPrediction(Protocol):
    """What I-JEPA's mask sampling and per-block loss read: ``lejepa`` and ``salt`` bind the same two
    methods (``_sample_masks = IJEPA._sample_masks``), so they are typed against this, not IJEPA."""

    masks: MultiBlockMasks
    predictor: Predictor

    @property
    def cfg(self) -> IJEPAConfig: ...


@register_objective
class IJEPA(Objective):
    """I-JEPA: predict the latent representations of masked target blocks from a visible context block.

    A context encoder sees the image minus the target blocks; a narrow ViT predictor, given mask
    tokens at the target positions, regresses the EMA target encoder's (layer-normalised) patch
    features there. No pixel loss and no hand-made view invariance.

    - Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive
      Architecture", CVPR 2023 (arXiv:2301.08243); code: https://github.com/facebookresearch/ijepa
      (masks: ``src/masks/multiblock.py``)
    """

    name = "ijepa"
    family = "jepa"
    views = "single"
    config_class = IJEPAConfig
    cfg: IJEPAConfig
    default_pool = "avg"

    def __init__(self, cfg: IJEPAConfig):
        super().__init__(cfg)
        grid = tuple(self.backbone.patch_embed.grid_size)
        self.grid = grid
        self.masks = multiblock_masks(cfg, grid)
        self.predictor = _predictor(cfg, self.backbone.embed_dim, grid)
        self.target_backbone = ema_copy(self.backbone)

    def encoder(self) -> VisionTransformer:
        return self.target_backbone

    def backbone_twins(self) -> list[VisionTransformer]:
        return [self.target_backbone]

    def _sample_masks(
        self: _MaskedLatentPrediction, batch: dict, b: int, device: torch.device
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if "context_idx" in batch:  # masks made by the data pipeline (as the reference collator)
            return batch["context_idx"].to(device), [t.to(device) for t in batch["target_idx"]]
        ctx, tgts = self.masks.sample(b)
        return ctx.to(device), [t.to(device) for t in tgts]

    def _predict_loss(
        self: _MaskedLatentPrediction,
        ctx_tokens: torch.Tensor,
        ctx_idx: torch.Tensor,
        targets: torch.Tensor,
        tgt_idx: list[torch.Tensor],
    ) -> torch.Tensor:
        m = len(tgt_idx)
        if len({t.shape[1] for t in tgt_idx}) == 1:
            # one predictor pass for every block (they share a size: MultiBlockMasks draws one block size
            # per batch), as the reference does; the mean over equal-size blocks is the mean of their means
            t_all = torch.cat(tgt_idx)  # (M * B, Kt), block-major
            pred = self.predictor(ctx_tokens, ctx_idx, t_all)
            tgt = torch.cat(
                [torch.gather(targets, 1, t.unsqueeze(-1).expand(-1, -1, targets.shape[-1])) for t in tgt_idx]
            )
            return latent_regression_loss(pred.float(), tgt.float(), self.cfg.loss)
        losses = []
        for t_idx in tgt_idx:  # blocks of different sizes (masks from a data pipeline): one pass each
            pred = self.predictor(ctx_tokens, ctx_idx, t_idx)
            tgt = torch.gather(targets, 1, t_idx.unsqueeze(-1).expand(-1, -1, targets.shape[-1]))
            losses.append(latent_regression_loss(pred.float(), tgt.float(), self.cfg.loss))
        return torch.stack(losses).sum() / m

    def forward(self, batch: dict) -> ObjectiveOutput:
        images = batch["images"]
        b = images.shape[0]
        ctx_idx, tgt_idx = self._sample_masks(batch, b, images.device)
        npt = self.backbone.num_prefix_tokens
        with torch.no_grad():
            h = encode_tokens(self.target_backbone, images)[:, npt:]
            h = F.layer_norm(h, (h.shape[-1],))
        z = encode_tokens(self.backbone, images, keep=ctx_idx)[:, npt:]
        loss = self._predict_loss(z, ctx_idx, h, tgt_idx)
        return ObjectiveOutput(
            loss=loss, metrics={"loss_latent": loss.detach(), "context_patches": torch.tensor(float(ctx_idx.shape[1]))}
        )

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        ema_update(self.target_backbone, self.backbone, momentum)


class CineJEPAConfig(IJEPAConfig):
    frames: int = Field(8, ge=1, description="frames per clip (the views' temporal crop)")


@register_objective
class CineJEPA(IJEPA):
    """Cine JEPA (V-JEPA-style): multi-block masks repeated over every frame (tubes); a 2-D ViT encodes
    the T x N tokens jointly with fixed temporal embeddings; the frame encoder is what is kept.

    - Bardes et al., "Revisiting Feature Prediction for Learning Visual Representations from Video"
      (V-JEPA), TMLR 2024 (arXiv:2404.08471); code: https://github.com/facebookresearch/jepa
    """

    name = "cine_jepa"
    views = "clip"
    config_class = CineJEPAConfig
    cfg: CineJEPAConfig
    temporal: torch.Tensor

    def __init__(self, cfg: CineJEPAConfig):
        super().__init__(cfg)
        self.frames = cfg.frames
        self.predictor = _predictor(cfg, self.backbone.embed_dim, self.grid, cfg.frames)
        self.register_buffer("temporal", sincos_1d(cfg.frames, self.backbone.embed_dim), persistent=False)

    def forward(self, batch: dict) -> ObjectiveOutput:
        clips = batch["clips"]
        b, t = clips.shape[0], clips.shape[2]
        if t != self.frames:
            raise ValueError(f"clips have {t} frames, the objective was built for frames={self.frames}")
        n = self.grid[0] * self.grid[1]
        ctx_sp, tgt_sp = self._sample_masks(batch, b, clips.device)
        ctx_idx = tube_indices(ctx_sp, t, n)
        tgt_idx = [tube_indices(x, t, n) for x in tgt_sp]
        with torch.no_grad():
            h = encode_clip_tokens(self.target_backbone, clips, self.temporal)[:, 1:]
            h = F.layer_norm(h, (h.shape[-1],))
        z = encode_clip_tokens(self.backbone, clips, self.temporal, keep=ctx_idx)[:, 1:]
        loss = self._predict_loss(z, ctx_idx, h, tgt_idx)
        return ObjectiveOutput(loss=loss, metrics={"loss_latent": loss.detach()})
