"""DINOv3 (Siméoni et al. 2025, arXiv 2508.10104; reference code facebookresearch/dinov3): the
DINOv2 recipe (DINO + iBOT + KoLeo + Sinkhorn-Knopp, :mod:`pretextlab.objectives.dino`) plus Gram
anchoring, and the high-resolution adaptation phase as an option.

Gram anchoring (paper Sec. 4): long DINOv2-style training degrades dense (patch) features while the
global ones keep improving. DINOv3 anchors the student's patch-to-patch similarity structure to that
of a *Gram teacher*, an earlier snapshot of the EMA teacher whose patch features are still clean:
``L_gram = ||X_S X_Sᵀ − X_G X_Gᵀ||²_F`` on L2-normalised patch features of the global crops
(:func:`pretextlab.objectives.losses.gram_loss`). The loss switches on at ``gram_start_step`` (the
snapshot is taken then), the Gram teacher is refreshed from the EMA teacher every
``gram_refresh_every`` steps, at most ``gram_max_refreshes`` times (reference config
``dinov3_vit7b16_gram_anchor.yaml``: ``it_first_update``, ``update_frequency`` 10k, ``max_updates``
3). The Gram teacher sees the global crops at ``gram_teacher_upscale`` times their size and its
patch features are resized back to the student's grid (bicubic): DINOv3's "high-resolution Gram"
(Sec. 4.3; ``gram_teacher_crops_size`` 512 for 256 px global crops). Here the crops are upsampled,
whereas DINOv3 crops the source image at the higher resolution; the views are made upstream.

The Gram teacher and the step counter are a registered submodule and buffers, so a checkpoint
(``objective.safetensors``) holds them and a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from pretextlab.models.vit import VisionTransformer, encode_tokens
from pretextlab.objectives.base import ObjectiveOutput, ema_copy
from pretextlab.objectives.dino import DINO, DINOConfig
from pretextlab.objectives.losses import gram_loss
from pretextlab.objectives.registry import register_objective

#: what ``high_res_adaptation: true`` sets, unless the config sets the field itself
#: (reference config dinov3_vit7b16_high_res_adapt.yaml)
HIGH_RES_DEFAULTS = {
    "gram_start_step": 0,  # anchoring from the first step of the phase
    "gram_max_refreshes": 0,  # rep_update: false: the Gram teacher stays the phase's starting teacher
    "gram_weight": 1.5,  # gram loss_weight_schedule 1.5
    "gram_teacher_upscale": 1.5,  # global crops 512/768 -> gram teacher crops 768/1152
    "warmup_teacher_temp_fraction": 0.0,  # teacher_temp 0.07 throughout
}


class DINOv3Config(DINOConfig):
    """DINOv3 defaults where they differ from ``dino``'s (each from the reference configs)."""

    centering: Literal["ema", "sinkhorn_knopp"] = Field("sinkhorn_knopp", description="DINOv3 train.centering")
    koleo_weight: float = Field(0.1, ge=0, description="DINOv3 dino.koleo_loss_weight 0.1")
    ibot: bool = Field(
        True, description="DINOv3: iBOT on, separate head, weight 1.0, mask share 0.1-0.5 on half the images (ibot.*)"
    )
    gram: bool = Field(True, description="Gram anchoring on (gram.use_loss)")
    gram_weight: float = Field(2.0, ge=0, description="DINOv3 gram.loss_weight_schedule end 2.0")
    gram_start_step: int = Field(
        1000,
        ge=0,
        description=(
            "step at which the Gram teacher is snapshot and the loss switches on (DINOv3: after 1M of its "
            "iterations; set it to where the run's patch features are good, e.g. half of train.steps)"
        ),
    )
    gram_refresh_every: int = Field(1000, ge=1, description="refresh period (DINOv3 update_frequency 10k)")
    gram_max_refreshes: int = Field(3, ge=0, description="refreshes after the first snapshot (max_updates 3)")
    gram_teacher_upscale: float = Field(
        2.0,
        ge=1.0,
        description=("the Gram teacher sees the global crops this many times larger (DINOv3 512 vs 256: 2.0)"),
    )
    gram_remove_neg: bool = Field(False, description="clip negative similarities (DINOv3: false)")
    high_res_adaptation: bool = Field(
        False,
        description=(
            "DINOv3's high-resolution adaptation phase: Gram anchoring from step 0 to a fixed Gram teacher "
            "(the starting teacher), weight 1.5, teacher upscale 1.5, teacher temperature 0.07 throughout. "
            "Run it as a second run: objective.init: registry:<the first run's encoder>, a larger "
            "backbone.img_size (position embeddings are resampled) and larger views"
        ),
    )

    @model_validator(mode="after")
    def _high_res(self) -> DINOv3Config:
        if self.high_res_adaptation:
            for key, value in HIGH_RES_DEFAULTS.items():
                if key not in self.model_fields_set:
                    object.__setattr__(self, key, value)
        return self


@register_objective
class DINOv3(DINO):
    """DINOv3: the DINOv2 recipe plus Gram anchoring of the patch features (see the module docstring).

    - Siméoni et al., "DINOv3", 2025 (arXiv:2508.10104); code: https://github.com/facebookresearch/dinov3
    """

    name = "dinov3"
    config_class = DINOv3Config
    cfg: DINOv3Config
    steps_done: torch.Tensor
    gram_snapshots: torch.Tensor

    def __init__(self, cfg: DINOv3Config):
        super().__init__(cfg)
        #: the Gram teacher: a frozen snapshot of the EMA teacher (checkpointed with the objective)
        self.gram_teacher = ema_copy(self.teacher_backbone)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))
        self.register_buffer("gram_snapshots", torch.zeros((), dtype=torch.int64))

    def backbone_twins(self) -> list[VisionTransformer]:
        return [self.teacher_backbone, self.gram_teacher]

    def gram_active(self) -> bool:
        """Whether the current step has the Gram loss (the snapshot exists from ``gram_start_step`` on)."""
        return bool(self.cfg.gram) and int(self.steps_done) >= self.cfg.gram_start_step

    @staticmethod
    def refresh_due(steps_done: int, start: int, every: int, max_refreshes: int) -> bool:
        """Snapshot the EMA teacher into the Gram teacher when ``steps_done`` steps are done: at
        ``start`` and at ``start + k * every`` for k = 1..max_refreshes."""
        if steps_done < start:
            return False
        k, rem = divmod(steps_done - start, every)
        return rem == 0 and k <= max_refreshes

    @torch.no_grad()
    def refresh_gram_teacher(self) -> None:
        self.gram_teacher.load_state_dict(self.teacher_backbone.state_dict())
        self.gram_snapshots += 1

    def _gram_targets(self, g: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The Gram teacher's patch features of the global crops, on the student's patch grid."""
        c = self.cfg
        npt = self.gram_teacher.num_prefix_tokens
        with torch.no_grad():
            if c.gram_teacher_upscale > 1.0:
                size = [
                    round(s * c.gram_teacher_upscale / self.cfg.backbone.patch_size) * self.cfg.backbone.patch_size
                    for s in g.shape[-2:]
                ]
                g = F.interpolate(g, size=size, mode="bicubic", align_corners=False)
            t = encode_tokens(self.gram_teacher, g)[:, npt:]
            h = g.shape[-2] // self.cfg.backbone.patch_size
            w = g.shape[-1] // self.cfg.backbone.patch_size
            if (h, w) != grid:
                t = t.reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2).float()
                t = F.interpolate(t, size=grid, mode="bicubic", align_corners=False)
                t = t.flatten(2).transpose(1, 2)
        return t

    def forward(self, batch: dict) -> ObjectiveOutput:
        out, g, s_tokens = self._forward_parts(batch)
        if not self.gram_active():
            return out
        c = self.cfg
        npt = self.backbone.num_prefix_tokens
        p = c.backbone.patch_size
        grid = (g.shape[-2] // p, g.shape[-1] // p)
        loss_gram = gram_loss(s_tokens[:, npt:], self._gram_targets(g, grid), remove_neg=c.gram_remove_neg)
        out.metrics["loss_gram"] = loss_gram.detach()
        return ObjectiveOutput(loss=out.loss + c.gram_weight * loss_gram, metrics=out.metrics)

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        super().update_ema(momentum)
        self.steps_done += 1
        c = self.cfg
        if c.gram and self.refresh_due(
            int(self.steps_done), c.gram_start_step, c.gram_refresh_every, c.gram_max_refreshes
        ):
            self.refresh_gram_teacher()
