"""LeJEPA (Balestriero & LeCun 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning Without
the Heuristics", arXiv 2511.08544; reference code rbalestr-lab/lejepa): a JEPA whose collapse is
prevented by SIGReg alone, with no teacher, no EMA and no stop-gradient.

pretextlab's ``lejepa`` uses I-JEPA's latent prediction task (multi-block masks, a narrow predictor
from the context block's tokens to the target blocks' latents, :mod:`pretextlab.objectives.ijepa`),
but the targets are the *same* encoder's tokens of the full image, with gradients flowing through
both branches. SIGReg (:func:`pretextlab.objectives.losses.sigreg`) pushes the embeddings towards an
isotropic Gaussian. ``sigreg_on: both`` (default) averages two statistics: one on the pooled
embedding of each image (the mean of its patch tokens, the embedding the kept encoder gives), which
is where the paper applies it (each view's embedding), and one on the patch tokens (at most
``sigreg_max_tokens``, sampled), the prediction targets, which rules out the trivial solution of
tokens that are constant within an image (predictable from any context). ``pooled`` or ``tokens``
keeps one of them. The loss is LeJEPA's convex combination
``(1 − λ) · prediction + λ · SIGReg`` with λ = 0.05, the paper's recommended value (the minimal
example, MINIMAL.md, uses 0.02). Because the encoder of both branches is trained, the online
encoder is the one kept.

Differences from the paper's reference recipe, said plainly: the paper predicts the mean embedding
of the global views from every view (multi-crop) and applies SIGReg to a projector's outputs of
each view; here the prediction is I-JEPA's masked-latent task on one view, and there is no projector
(SIGReg sees the encoder's own embedding). SIGReg runs per process (the reference
all-reduces the empirical characteristic function); the random directions are drawn from a
generator seeded with the step, so every process uses the same ones, as the reference does.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pretextlab.models.vit import encode_tokens
from pretextlab.objectives.base import Objective, ObjectiveOutput
from pretextlab.objectives.ijepa import IJEPA, IJEPAConfig, _predictor, multiblock_masks
from pretextlab.objectives.losses import sigreg
from pretextlab.objectives.registry import register_objective


class LeJEPAConfig(IJEPAConfig):
    loss: str = Field("l2", description="LeJEPA's prediction loss is the squared error")
    sigreg_weight: float = Field(0.05, gt=0, lt=1, description="λ of (1 − λ)·prediction + λ·SIGReg (paper: 0.05)")
    sigreg_slices: int = Field(256, ge=1, description="random 1-D projections per step (reference: 256)")
    sigreg_knots: int = Field(17, ge=3, description="quadrature points on [0, t_max] (reference: 17)")
    sigreg_t_max: float = Field(3.0, gt=0, description="integration bound of the Epps-Pulley test (reference: 3)")
    sigreg_on: Literal["both", "pooled", "tokens"] = Field(
        "both",
        description=(
            "pooled: each image's mean patch token (the paper regularises each view's embedding); "
            "tokens: the patch tokens (the prediction targets); both: the mean of the two statistics"
        ),
    )
    sigreg_max_tokens: int = Field(2048, ge=8, description="patch tokens per step SIGReg sees (sampled)")


@register_objective
class LeJEPA(Objective):
    """LeJEPA: latent prediction with SIGReg only, no teacher, no EMA, no stop-gradient (module docstring).

    - Balestriero and LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
      Heuristics", 2025 (arXiv:2511.08544); code: https://github.com/rbalestr-lab/lejepa
    """

    name = "lejepa"
    family = "jepa"
    views = "single"
    config_class = LeJEPAConfig
    cfg: LeJEPAConfig
    steps_done: torch.Tensor
    default_pool = "avg"

    # I-JEPA's mask sampling and per-block prediction loss, shared rather than copied
    _sample_masks = IJEPA._sample_masks
    _predict_loss = IJEPA._predict_loss

    def __init__(self, cfg: LeJEPAConfig):
        super().__init__(cfg)
        grid = tuple(self.backbone.patch_embed.grid_size)
        self.grid = grid
        self.masks = multiblock_masks(cfg, grid)
        self.predictor = _predictor(cfg, self.backbone.embed_dim, grid)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))

    def directions(self, dim: int) -> torch.Tensor:
        """This step's SIGReg directions (D, M): the same on every process, new each step."""
        g = torch.Generator().manual_seed(int(self.steps_done))
        a = torch.randn(dim, self.cfg.sigreg_slices, generator=g)
        return a / a.norm(dim=0, keepdim=True)

    def forward(self, batch: dict) -> ObjectiveOutput:
        c = self.cfg
        images = batch["images"]
        b = images.shape[0]
        ctx_idx, tgt_idx = self._sample_masks(batch, b, images.device)
        npt = self.backbone.num_prefix_tokens
        h = encode_tokens(self.backbone, images)[:, npt:]  # targets: no stop-gradient, no EMA
        z = encode_tokens(self.backbone, images, keep=ctx_idx)[:, npt:]
        pred = self._predict_loss(z, ctx_idx, h, tgt_idx)
        directions = self.directions(h.shape[-1]).to(h.device)
        stats = []
        if c.sigreg_on in ("both", "pooled"):
            stats.append(sigreg(h.mean(dim=1), knots=c.sigreg_knots, t_max=c.sigreg_t_max, directions=directions))
        if c.sigreg_on in ("both", "tokens"):
            tokens = h.reshape(-1, h.shape[-1])
            if tokens.shape[0] > c.sigreg_max_tokens:
                tokens = tokens[torch.randperm(tokens.shape[0], device=tokens.device)[: c.sigreg_max_tokens]]
            stats.append(sigreg(tokens, knots=c.sigreg_knots, t_max=c.sigreg_t_max, directions=directions))
        reg = torch.stack(stats).sum() / len(stats)
        loss = (1 - c.sigreg_weight) * pred + c.sigreg_weight * reg
        return ObjectiveOutput(loss=loss, metrics={"loss_latent": pred.detach(), "loss_sigreg": reg.detach()})

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        """No EMA: only the step counter that seeds SIGReg's directions moves."""
        self.steps_done += 1
