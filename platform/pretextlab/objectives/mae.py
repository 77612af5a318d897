"""MAE (He et al. 2022) and its cine variant with tube masking (VideoMAE, Tong et al. 2022): encode
the visible patches, reconstruct the masked ones with a light decoder, per-patch normalised MSE."""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field
from timm.models.vision_transformer import Block

from pretextlab.models.vit import encode_clip_tokens, encode_tokens, sincos_1d, sincos_2d, sincos_3d
from pretextlab.objectives.base import Objective, ObjectiveConfig, ObjectiveOutput
from pretextlab.objectives.losses import mae_loss, patchify
from pretextlab.objectives.masks import random_masks, tube_indices
from pretextlab.objectives.registry import register_objective


class MAEConfig(ObjectiveConfig):
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="MAE: 75 % random masking")
    decoder_dim: int = Field(192, ge=16, description="MAE ViT-B: 512 wide x 8 deep; a light decoder here")
    decoder_depth: int = Field(2, ge=1)
    decoder_heads: int = Field(3, ge=1)
    norm_pix_loss: bool = Field(True, description="per-patch normalised targets (MAE default)")


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (B, M) of ``x`` (B, N, P)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class _Decoder(nn.Module):
    pos: torch.Tensor

    def __init__(self, embed_dim: int, cfg: MAEConfig, pos: torch.Tensor, patch_dim: int):
        super().__init__()
        self.embed = nn.Linear(embed_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("pos", pos[None], persistent=False)
        self.blocks = nn.ModuleList(
            Block(cfg.decoder_dim, cfg.decoder_heads, 4.0, qkv_bias=True) for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.pred = nn.Linear(cfg.decoder_dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor, n: int, predict: torch.Tensor) -> torch.Tensor:
        """tokens (B, 1 + K, D) with CLS first -> pixel predictions (B, M, P) for the patches in
        ``predict`` (B, M): only masked patches are scored, so only they are projected to pixels."""
        x = self.embed(tokens)
        b, _, d = x.shape
        full = self.mask_token.to(x.dtype).expand(b, n, d).clone()
        full.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])
        full = full + self.pos.to(x.dtype)
        x = torch.cat([x[:, :1], full], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = torch.gather(x[:, 1:], 1, predict.unsqueeze(-1).expand(-1, -1, d))
        return self.pred(self.norm(x))


@register_objective
class MAE(Objective):
    """MAE: reconstruct the pixels of randomly masked patches from the visible ones.

    The encoder sees only the ~25 % visible patches; a light decoder with mask tokens reconstructs the
    (per-patch normalised) pixels of the masked ones, and the loss is the MSE on masked patches only.

    - He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (arXiv:2111.06377);
      code: https://github.com/facebookresearch/mae
    """

    name = "mae"
    family = "pixel"
    views = "single"
    config_class = MAEConfig
    cfg: MAEConfig
    default_pool = "avg"

    def __init__(self, cfg: MAEConfig):
        super().__init__(cfg)
        gh, gw = self.backbone.patch_embed.grid_size
        self.grid = (gh, gw)
        self.patch = cfg.backbone.patch_size
        patch_dim = self.patch * self.patch * cfg.backbone.in_chans
        self.decoder = _Decoder(self.backbone.embed_dim, cfg, self._decoder_pos(cfg), patch_dim)

    def _decoder_pos(self, cfg: MAEConfig) -> torch.Tensor:
        return sincos_2d(self.grid[0], self.grid[1], cfg.decoder_dim)

    def forward(self, batch: dict) -> ObjectiveOutput:
        images = batch["images"]
        b = images.shape[0]
        n = self.grid[0] * self.grid[1]
        keep, masked_idx = random_masks(b, n, self.cfg.mask_ratio, device=images.device)
        tokens = encode_tokens(self.backbone, images, keep=keep)
        pred = self.decoder(tokens, keep, n, masked_idx)
        target = _take(patchify(images, self.patch), masked_idx)
        loss = mae_loss(pred.float(), target.float(), None, self.cfg.norm_pix_loss)
        return ObjectiveOutput(loss=loss, metrics={"loss_pixel": loss.detach()})


class CineMAEConfig(MAEConfig):
    mask_ratio: float = Field(0.9, gt=0, lt=1, description="VideoMAE: 90 % tube masking")
    frames: int = Field(8, ge=1)


@register_objective
class CineMAE(MAE):
    """Cine MAE (VideoMAE-style): tube masking at a very high ratio over the frames of a clip, pixels of
    the masked tubes reconstructed from the visible ones.

    - Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video
      Pre-Training", NeurIPS 2022 (arXiv:2203.12602); code: https://github.com/MCG-NJU/VideoMAE
    """

    name = "cine_mae"
    views = "clip"
    config_class = CineMAEConfig
    cfg: CineMAEConfig
    temporal: torch.Tensor

    def __init__(self, cfg: CineMAEConfig):
        self.frames = cfg.frames
        super().__init__(cfg)
        self.register_buffer("temporal", sincos_1d(cfg.frames, self.backbone.embed_dim), persistent=False)

    def _decoder_pos(self, cfg: MAEConfig) -> torch.Tensor:
        return sincos_3d(self.frames, self.grid[0], self.grid[1], cfg.decoder_dim)

    def forward(self, batch: dict) -> ObjectiveOutput:
        clips = batch["clips"]
        b, c, t, h, w = clips.shape
        if t != self.frames:
            raise ValueError(f"clips have {t} frames, the objective was built for frames={self.frames}")
        n = self.grid[0] * self.grid[1]
        keep_sp, masked_sp = random_masks(b, n, self.cfg.mask_ratio, device=clips.device)
        keep = tube_indices(keep_sp, t, n)
        masked = tube_indices(masked_sp, t, n)
        tokens = encode_clip_tokens(self.backbone, clips, self.temporal, keep=keep)
        pred = self.decoder(tokens, keep, t * n, masked)
        frames = clips.transpose(1, 2).reshape(b * t, c, h, w)
        target = _take(patchify(frames, self.patch).reshape(b, t * n, -1), masked)
        loss = mae_loss(pred.float(), target.float(), None, self.cfg.norm_pix_loss)
        return ObjectiveOutput(loss=loss, metrics={"loss_pixel": loss.detach()})
