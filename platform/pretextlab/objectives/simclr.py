"""SimCLR (Chen et al. 2020): two views, MLP projection, NT-Xent over the (gathered) batch."""

from __future__ import annotations

import torch
from pydantic import Field

from pretextlab.models.vit import encode_tokens, pool
from pretextlab.objectives.base import Objective, ObjectiveConfig, ObjectiveOutput
from pretextlab.objectives.distributed import gather_with_grad
from pretextlab.objectives.heads import mlp
from pretextlab.objectives.losses import ntxent_loss
from pretextlab.objectives.registry import register_objective


class SimCLRConfig(ObjectiveConfig):
    temperature: float = Field(0.1, gt=0, description="SimCLR: 0.1 for large batches, 0.5 small")
    proj_hidden_dim: int = Field(2048, ge=8)
    proj_dim: int = Field(128, ge=2)


@register_objective
class SimCLR(Objective):
    """SimCLR: contrast two augmented views of each image against the rest of the batch (NT-Xent).

    - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020
      (arXiv:2002.05709); code: https://github.com/google-research/simclr; loss as lightly's
      ``NTXentLoss`` (https://github.com/lightly-ai/lightly/blob/master/lightly/loss/ntx_ent_loss.py)
    """

    name = "simclr"
    family = "jea"
    views = "pair"
    config_class = SimCLRConfig
    cfg: SimCLRConfig
    default_pool = "token"

    def __init__(self, cfg: SimCLRConfig):
        super().__init__(cfg)
        self.projection = mlp(self.backbone.embed_dim, cfg.proj_hidden_dim, cfg.proj_dim, layers=2)

    def forward(self, batch: dict) -> ObjectiveOutput:
        v0, v1 = batch["global"][:2]
        b = v0.shape[0]
        h = pool(self.backbone, encode_tokens(self.backbone, torch.cat([v0, v1])))
        z = self.projection(h).float()
        z0, z1 = gather_with_grad(z[:b]), gather_with_grad(z[b:])
        loss = ntxent_loss(z0, z1, self.cfg.temperature)
        return ObjectiveOutput(loss=loss, metrics={"loss_ntxent": loss.detach()})
