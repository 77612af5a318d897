"""Random draws from an explicit ``torch.Generator``: same seed, same views, on any data device.

Parameters are drawn on the generator's device (CPU for ``None``) and moved to the data afterwards,
so a CPU generator gives identical crops and jitter for CPU and CUDA batches.
"""

from __future__ import annotations

import torch


def _device(g: torch.Generator | None) -> torch.device:
    """Where draws happen: the generator's device, or the CPU default generator for None."""
    return g.device if g is not None else torch.device("cpu")


def uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator | None) -> torch.Tensor:
    """float32 draws from U(low, high)."""
    u = torch.rand(shape, generator=g, device=_device(g), dtype=torch.float32)
    return low + (high - low) * u


def bernoulli(n: int, p: float, g: torch.Generator | None) -> torch.Tensor:
    """n booleans, each True with probability p (always drawn, so the stream does not depend on p)."""
    return torch.rand((n,), generator=g, device=_device(g)) < p


def randint_below(high: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Per-element integers in [0, high) for an integer tensor ``high`` >= 1."""
    u = torch.rand(high.shape, generator=g, device=_device(g), dtype=torch.float64)
    h = high.to(u.device)
    return torch.minimum((u * h).floor().long(), h - 1)


def choice(options: torch.Tensor, n: int, g: torch.Generator | None) -> torch.Tensor:
    """n draws, uniformly among the values of a 1-D tensor ``options``."""
    idx = randint_below(torch.full((n,), len(options), dtype=torch.long), g)
    return options.to(idx.device)[idx]
