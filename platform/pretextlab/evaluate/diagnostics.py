"""Representation-quality diagnostics that need no labels: effective rank, collapse, alignment, uniformity.

- ``rankme`` (Garrido et al. 2023): exp of the Shannon entropy of the normalised singular values of
  the (N, D) embedding matrix; ~D for full-rank, well-spread features, ~1 for rank-1 ones.
- ``embedding_std`` (Chen & He 2021, SimSiam): mean over dimensions of the per-dimension std of the
  l2-normalised embeddings; ~1/sqrt(D) when the embeddings spread over the sphere, ~0 when collapsed.
- ``alignment`` / ``uniformity`` (Wang & Isola 2020), on l2-normalised embeddings: lower is better
  for both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: ``is_collapsed`` flags embeddings whose ``embedding_std`` is below this fraction of 1/sqrt(D).
#: A randomly initialised ViT sits at ~0.6/sqrt(D), trained encoders at ~0.5-1/sqrt(D); a collapsed
#: one (every input mapped to nearly the same vector) at ~0.
COLLAPSE_THRESHOLD = 0.1


def _tensor(x: Any) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    return t.detach().to(torch.float64)


def rankme(features: Any, eps: float = 1e-7) -> float:
    """Effective rank exp(H(p)), p = sigma / ||sigma||_1 + eps, of the (N, D) embeddings (0 for all-zero ones)."""
    f = _tensor(features)
    if f.ndim != 2 or f.numel() == 0:
        raise ValueError(f"expected (N, D) features, got {tuple(f.shape)}")
    s = torch.linalg.svdvals(f)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_std(features: Any) -> float:
    """Mean per-dimension std of the l2-normalised embeddings (~1/sqrt(D) healthy, ~0 collapsed)."""
    f = _tensor(features)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"expected (N >= 2, D) features, got {tuple(f.shape)}")
    return float(F.normalize(f, dim=1).std(dim=0).mean())


def is_collapsed(features: Any, threshold: float = COLLAPSE_THRESHOLD) -> bool:
    """True when ``embedding_std`` < ``threshold`` / sqrt(D): the encoder maps inputs to (almost) one point."""
    f = _tensor(features)
    return embedding_std(f) < threshold / math.sqrt(f.shape[1])


def alignment(x: Any, y: Any, alpha: float = 2.0) -> float:
    """Mean ||f(x_i) - f(y_i)||^alpha over positive pairs (rows of ``x`` and ``y``), on l2-normalised features."""
    fx, fy = F.normalize(_tensor(x), dim=1), F.normalize(_tensor(y), dim=1)
    if fx.shape != fy.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(fx.shape)} and {tuple(fy.shape)}")
    return float((fx - fy).norm(dim=1).pow(alpha).mean())


def uniformity(x: Any, t: float = 2.0) -> float:
    """log mean exp(-t ||f_i - f_j||^2) over all pairs i < j of l2-normalised features (lower = more uniform)."""
    f = F.normalize(_tensor(x), dim=1)
    if len(f) < 2:
        raise ValueError("uniformity needs at least 2 rows")
    return float(torch.pdist(f, p=2).pow(2).mul(-t).exp().mean().log())


def diagnostics(features: Any, max_rows: int = 4096, seed: int = 0) -> dict[str, float | bool | int]:
    """rankme, embedding_std (and 1/sqrt(D) beside it), is_collapsed and uniformity of (a subsample of) the features."""
    f = _tensor(features)
    if len(f) > max_rows:
        g = torch.Generator().manual_seed(seed)
        f = f[torch.randperm(len(f), generator=g)[:max_rows]]
    dim = int(f.shape[1])
    return {
        "n": int(len(f)),
        "dim": dim,
        "rankme": rankme(f),
        "embedding_std": embedding_std(f),
        "healthy_std": 1.0 / math.sqrt(dim),
        "collapsed": is_collapsed(f),
        "uniformity": uniformity(f),
    }
