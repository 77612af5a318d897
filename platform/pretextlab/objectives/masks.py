"""Masks for masked-prediction objectives, on a (H, W) grid of patches, as index tensors.

- ``random_masks`` (MAE): keep a random (1 - ratio) of patches per sample.
- ``MultiBlockMasks`` (I-JEPA, Assran et al. 2023, facebookresearch/ijepa ``src/masks/multiblock.py``):
  M target blocks of scale (0.15, 0.2) and aspect ratio (0.75, 1.5), one context block of scale
  (0.85, 1.0) and aspect 1 with every target patch removed, at least ``min_keep`` patches each.
  Per batch, masks are trimmed to the smallest size so they stack into rectangular tensors.
  One deliberate difference from the reference (and lightly's ``IJEPAMaskCollator``, which copies it):
  there a block is capped at (H-1) x (W-1) patches and its corner drawn from ``randint(0, H - h)``,
  so the last patch row and column are never in a target or the context. Here a block may span the
  grid and touch every edge. The context keeps more patches (a median of 20-22 of 64 against 12-13 at
  64 px, patch 8, batch 32), so an I-JEPA step costs more (``benchmarks/objectives.py``: ``ijepa`` vs
  ``ijepa_same_masks``). ``reference_placement=True`` (I-JEPA's ``mask_placement: reference``)
  places blocks as the reference does.
- ``tube`` variants (V-JEPA / VideoMAE): one spatial mask repeated over all T frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def random_masks(
    batch: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, masked) index tensors of shape (B, K) and (B, N - K), each sorted, per-sample random."""
    n_keep = max(1, int(round(num_patches * (1.0 - ratio))))
    noise = torch.rand(batch, num_patches, generator=generator).to(device)
    order = noise.argsort(dim=1)
    keep = order[:, :n_keep].sort(dim=1).values
    masked = order[:, n_keep:].sort(dim=1).values
    return keep, masked


def tube_indices(spatial: torch.Tensor, frames: int, num_patches: int) -> torch.Tensor:
    """Spatial patch indices (B, K) -> the same patches in every frame (B, T*K), frame-major."""
    offsets = torch.arange(frames, device=spatial.device) * num_patches
    return (spatial.unsqueeze(1) + offsets.view(1, -1, 1)).flatten(1)


@dataclass
class MultiBlockMasks:
    """I-JEPA multi-block masking on a ``height x width`` patch grid."""

    height: int
    width: int
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    min_keep: int = 4
    max_tries: int = 20
    #: True: place blocks as the reference does (a block at most (H-1) x (W-1), its corner drawn from
    #: ``randint(0, H - h)``: the last row and column never in a block); False: blocks may span the grid
    reference_placement: bool = False

    def _block_size(
        self, g: torch.Generator, scale: tuple[float, float], aspect: tuple[float, float]
    ) -> tuple[int, int]:
        s = scale[0] + torch.rand(1, generator=g).item() * (scale[1] - scale[0])
        max_keep = int(self.height * self.width * s)
        lo, hi = math.log(aspect[0]), math.log(aspect[1])
        ar = math.exp(lo + torch.rand(1, generator=g).item() * (hi - lo))
        h = int(round(math.sqrt(max_keep * ar)))
        w = int(round(math.sqrt(max_keep / ar)))
        cap = 1 if self.reference_placement else 0  # the reference shrinks a block until h < H, w < W
        return max(1, min(h, self.height - cap)), max(1, min(w, self.width - cap))

    def _place(self, g: torch.Generator, h: int, w: int, allowed: torch.Tensor | None) -> torch.Tensor:
        """A (H, W) bool block of size h x w; if ``allowed`` is given, only its True cells are kept."""
        # the reference's corner comes from randint(0, H - h): never the last start row / column
        last = 0 if self.reference_placement else 1
        for _ in range(self.max_tries):
            top = int(torch.randint(0, max(1, self.height - h + last), (1,), generator=g))
            left = int(torch.randint(0, max(1, self.width - w + last), (1,), generator=g))
            block = torch.zeros(self.height, self.width, dtype=torch.bool)
            block[top : top + h, left : left + w] = True
            if allowed is not None:
                block &= allowed
            if int(block.sum()) >= self.min_keep:
                return block
        return block  # the caller enforces min_keep by shrinking the requirement

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(context (B, Kc), [target_m (B, Kt)] * M): flat patch indices, sorted within each mask.

        One block size per batch for targets and for context (as the reference collator does), so
        that trimming to the batch minimum loses few patches.
        """
        g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
        th, tw = self._block_size(g, self.target_scale, self.target_aspect)
        ch, cw = self._block_size(g, self.context_scale, self.context_aspect)
        contexts: list[torch.Tensor] = []
        targets: list[list[torch.Tensor]] = [[] for _ in range(self.num_targets)]
        for _ in range(batch):
            tgt_union = torch.zeros(self.height, self.width, dtype=torch.bool)
            for m in range(self.num_targets):
                block = self._place(g, th, tw, None)
                tgt_union |= block
                targets[m].append(block.flatten().nonzero().squeeze(1))
            ctx = self._place(g, ch, cw, ~tgt_union)
            if int(ctx.sum()) < self.min_keep:  # context crowded out by targets: keep all non-target patches
                ctx = ~tgt_union
            contexts.append(ctx.flatten().nonzero().squeeze(1))
        k_ctx = min(len(c) for c in contexts)
        context = torch.stack([c[:k_ctx] for c in contexts])
        target_list = []
        for m in range(self.num_targets):
            k = min(len(t) for t in targets[m])
            target_list.append(torch.stack([t[:k] for t in targets[m]]))
        return context, target_list
