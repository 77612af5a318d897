"""I-JEPA's narrow ViT predictor: context tokens + mask tokens at target positions -> target latents."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from pretextlab.models.vit import sincos_3d


class Predictor(nn.Module):
    """Embeds context tokens to ``dim``, appends position-embedded mask tokens, runs ``depth`` blocks,
    projects the mask-token outputs back to the encoder width. Positions cover T frames x (h x w)."""

    pos: torch.Tensor

    def __init__(self, embed_dim: int, dim: int, depth: int, heads: int, grid: tuple[int, int], frames: int = 1):
        super().__init__()
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_3d(frames, grid[0], grid[1], dim)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, embed_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def _pos(self, idx: torch.Tensor) -> torch.Tensor:
        pos = self.pos.expand(idx.shape[0], -1, -1)
        return torch.gather(pos, 1, idx.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """context (B, Kc, D), indices (B, Kc) and (B', Kt) -> predictions (B', Kt, D).

        B' may be a multiple M x B: M target blocks of one size stacked block-major (``torch.cat`` of M
        (B, Kt) index tensors), predicted in one pass over the context repeated M times, as the
        reference predictor does for its list of masks (``x.repeat(len(masks), 1, 1)``). The context is
        embedded once, before the repeat."""
        x = self.embed(context) + self._pos(context_idx).to(context.dtype)
        if target_idx.shape[0] != x.shape[0]:
            if target_idx.shape[0] % x.shape[0]:
                raise ValueError(f"{target_idx.shape[0]} target rows for a context batch of {x.shape[0]}")
            x = x.repeat(target_idx.shape[0] // x.shape[0], 1, 1)
        m = self.mask_token.to(x.dtype) + self._pos(target_idx).to(x.dtype)
        x = torch.cat([x, m], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x[:, -target_idx.shape[1] :])
        return self.proj(x)
