"""DINO (Caron et al. 2021) with the DINOv2/v3 options: iBOT masked patch loss, KoLeo, Sinkhorn-Knopp
centring. Student sees every crop; the EMA teacher sees the global crops; the teacher is kept."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from pretextlab.models.vit import VisionTransformer, encode_tokens
from pretextlab.objectives.base import Objective, ObjectiveConfig, ObjectiveOutput, ema_copy, ema_update
from pretextlab.objectives.distributed import all_reduce_mean
from pretextlab.objectives.heads import DINOHead
from pretextlab.objectives.losses import dino_loss, koleo_loss, sinkhorn_knopp
from pretextlab.objectives.registry import register_objective


class DINOConfig(ObjectiveConfig):
    out_dim: int = Field(4096, ge=2, description="prototypes K (DINO: 65536; smaller suits small medical sets)")
    hidden_dim: int = Field(2048, ge=8)
    bottleneck_dim: int = Field(256, ge=8)
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.07, gt=0, description="after warm-up (DINO: 0.04 -> 0.07)")
    warmup_teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp_fraction: float = Field(0.3, ge=0, le=1, description="share of training to warm up over")
    center_momentum: float = Field(0.9, ge=0, lt=1)
    centering: Literal["ema", "sinkhorn_knopp"] = Field("ema", description="DINO centre, or DINOv2/v3 SK")
    koleo_weight: float = Field(0.0, ge=0, description="DINOv2 uses 0.1")
    ibot: bool = Field(False, description="iBOT masked patch-token loss on the global crops (DINOv2/v3)")
    ibot_weight: float = Field(1.0, ge=0)
    ibot_mask_ratio: tuple[float, float] = Field((0.1, 0.5), description="per-image masked share (DINOv2)")
    ibot_mask_probability: float = Field(0.5, ge=0, le=1, description="share of images that get a mask")


@register_objective
class DINO(Objective):
    """DINO: self-distillation with no labels, with DINOv2's iBOT, KoLeo and Sinkhorn-Knopp as options.

    A student sees global and local crops and matches the centred, sharpened output distribution of an
    EMA teacher that sees only the global crops (cross-entropy over ``out_dim`` prototypes). Options add
    DINOv2's masked-patch iBOT loss, the KoLeo spreading regulariser and Sinkhorn-Knopp centring.

    - Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294);
      code: https://github.com/facebookresearch/dino
    - Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024
      (arXiv:2304.07193); code: https://github.com/facebookresearch/dinov2
    """

    name = "dino"
    family = "jea"
    views = "multicrop"
    config_class = DINOConfig
    cfg: DINOConfig
    center: torch.Tensor
    progress: torch.Tensor
    patch_center: torch.Tensor
    default_pool = "token"

    def __init__(self, cfg: DINOConfig):
        super().__init__(cfg)
        d = self.backbone.embed_dim
        self.head = DINOHead(d, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim)
        self.teacher_backbone = ema_copy(self.backbone)
        self.teacher_head = ema_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("progress", torch.zeros(()))  # fraction of training done, for the temp warm-up
        if cfg.ibot:
            self.mask_token = torch.nn.Parameter(torch.zeros(1, d))
            self.ibot_head = DINOHead(d, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim)
            self.teacher_ibot_head = ema_copy(self.ibot_head)
            self.register_buffer("patch_center", torch.zeros(1, cfg.out_dim))

    def encoder(self) -> VisionTransformer:
        return self.teacher_backbone

    def backbone_twins(self) -> list[VisionTransformer]:
        return [self.teacher_backbone]

    def set_progress(self, fraction: float) -> None:
        self.progress.fill_(float(fraction))

    def teacher_temperature(self) -> float:
        c = self.cfg
        if c.warmup_teacher_temp_fraction <= 0:
            return c.teacher_temp
        t = min(1.0, float(self.progress) / c.warmup_teacher_temp_fraction)
        return c.warmup_teacher_temp + t * (c.teacher_temp - c.warmup_teacher_temp)

    def _ibot_masks(self, batch: int, n: int, device: torch.device) -> torch.Tensor:
        lo, hi = self.cfg.ibot_mask_ratio
        ratios = lo + torch.rand(batch, device=device) * (hi - lo)
        ratios = ratios * (torch.rand(batch, device=device) < self.cfg.ibot_mask_probability)
        scores = torch.rand(batch, n, device=device)
        return scores < ratios[:, None]

    def forward(self, batch: dict) -> ObjectiveOutput:
        return self._forward_parts(batch)[0]

    def _forward_parts(self, batch: dict) -> tuple[ObjectiveOutput, torch.Tensor, torch.Tensor]:
        """(output, global crops (ng*B, C, G, G), student tokens of the global crops): subclasses
        (DINOv3's Gram anchoring) add losses on the same forward pass."""
        c = self.cfg
        globals_, locals_ = batch["global"], batch.get("local", [])
        ng = len(globals_)
        g = torch.cat(globals_)
        temp = self.teacher_temperature()
        with torch.no_grad():
            t_tokens = encode_tokens(self.teacher_backbone, g)
            t_logits = self.teacher_head(t_tokens[:, 0]).float()
        masks = None
        if c.ibot:
            n = t_tokens.shape[1] - self.backbone.num_prefix_tokens
            masks = self._ibot_masks(g.shape[0], n, g.device)
        s_tokens = encode_tokens(self.backbone, g, mask=masks, mask_token=getattr(self, "mask_token", None))
        s_cls = s_tokens[:, 0]
        student = list(self.head(s_cls).float().chunk(ng))
        if locals_:
            l_tokens = encode_tokens(self.backbone, torch.cat(locals_))
            student += list(self.head(l_tokens[:, 0]).float().chunk(len(locals_)))
        if c.centering == "sinkhorn_knopp":
            t_probs = sinkhorn_knopp(t_logits, temp)
            t_logits_for_loss = torch.log(t_probs.clamp_min(1e-12)) * temp  # softmax(x / temp) == t_probs
            loss_dino = dino_loss(
                student, list(t_logits_for_loss.chunk(ng)), torch.zeros_like(self.center), c.student_temp, temp
            )
        else:
            loss_dino = dino_loss(student, list(t_logits.chunk(ng)), self.center, c.student_temp, temp)
            with torch.no_grad():
                batch_center = all_reduce_mean(t_logits.mean(dim=0, keepdim=True))
                self.center.mul_(c.center_momentum).add_(batch_center, alpha=1 - c.center_momentum)
        loss = loss_dino
        metrics = {"loss_dino": loss_dino.detach(), "teacher_temp": torch.tensor(temp)}
        if c.koleo_weight > 0:
            k = torch.stack([koleo_loss(x) for x in s_cls.chunk(ng)]).mean()
            loss = loss + c.koleo_weight * k
            metrics["loss_koleo"] = k.detach()
        if c.ibot and masks is not None and masks.any():
            npt = self.backbone.num_prefix_tokens
            with torch.no_grad():
                t_patch = self.teacher_ibot_head(t_tokens[:, npt:][masks]).float()
                t_patch_p = F.softmax((t_patch - self.patch_center) / temp, dim=-1)
                self.patch_center.mul_(c.center_momentum).add_(
                    all_reduce_mean(t_patch.mean(dim=0, keepdim=True)), alpha=1 - c.center_momentum
                )
            s_patch = self.ibot_head(s_tokens[:, npt:][masks]).float()
            per_token = torch.sum(-t_patch_p * F.log_softmax(s_patch / c.student_temp, dim=-1), dim=-1)
            # average over each image's masked tokens, then over images (DINOv2)
            weights = (1.0 / masks.sum(dim=1).clamp(min=1)).unsqueeze(1).expand_as(masks)[masks]
            ibot = (per_token * weights).sum() / masks.any(dim=1).sum().clamp(min=1)
            loss = loss + c.ibot_weight * ibot
            metrics["loss_ibot"] = ibot.detach()
        return ObjectiveOutput(loss=loss, metrics=metrics), g, s_tokens

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        if self.cfg.ibot:
            ema_update(self.teacher_ibot_head, self.ibot_head, momentum)
