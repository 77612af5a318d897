"""VICReg (Bardes et al. 2022): two views, an expander, invariance + variance + covariance."""

from __future__ import annotations

import torch
from pydantic import Field

from pretextlab.models.vit import encode_tokens, pool
from pretextlab.objectives.base import Objective, ObjectiveConfig, ObjectiveOutput
from pretextlab.objectives.distributed import gather_with_grad
from pretextlab.objectives.heads import mlp
from pretextlab.objectives.losses import vicreg_loss
from pretextlab.objectives.registry import register_objective


class VICRegConfig(ObjectiveConfig):
    expander_dim: int = Field(2048, ge=8, description="VICReg: 8192; 2048 keeps small runs cheap")
    expander_layers: int = Field(3, ge=1)
    sim_weight: float = Field(25.0, ge=0, description="lambda, invariance")
    var_weight: float = Field(25.0, ge=0, description="mu, variance")
    cov_weight: float = Field(1.0, ge=0, description="nu, covariance")


@register_objective
class VICReg(Objective):
    """VICReg: variance, invariance and covariance terms on the embeddings of two views, no negatives.

    - Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
      Self-Supervised Learning", ICLR 2022 (arXiv:2105.04906); code:
      https://github.com/facebookresearch/vicreg
    """

    name = "vicreg"
    family = "jea"
    views = "pair"
    config_class = VICRegConfig
    cfg: VICRegConfig
    default_pool = "token"

    def __init__(self, cfg: VICRegConfig):
        super().__init__(cfg)
        self.expander = mlp(self.backbone.embed_dim, cfg.expander_dim, cfg.expander_dim, layers=cfg.expander_layers)

    def forward(self, batch: dict) -> ObjectiveOutput:
        v0, v1 = batch["global"][:2]
        b = v0.shape[0]
        z = self.expander(pool(self.backbone, encode_tokens(self.backbone, torch.cat([v0, v1])))).float()
        c = self.cfg
        loss, parts = vicreg_loss(
            gather_with_grad(z[:b]), gather_with_grad(z[b:]), c.sim_weight, c.var_weight, c.cov_weight
        )
        return ObjectiveOutput(loss=loss, metrics={f"loss_{k}": v for k, v in parts.items()})
