"""Representation-quality diagnostics that need no labels: effective rank, collapse, alignment, uniformity.

- ``rankme`` (Garrido et al. 2023): exp of the Shannon entropy of the normalised singular values of
  the (N, D) embedding matrix; ~D for full-rank, well-spread features, ~1 for rank-1 ones.
- ``embedding_std`` (Chen & He 2021, SimSiam): mean over dimensions of the per-dimension std of the
  l2-normalised embeddings; ~1/sqrt(D) when the embeddings spread over the sphere, ~0 when collapsed.
- ``alignment`` / ``uniformity`` (Wang & Isola 2020), on l2-normalised embeddings: lower is better
  for both.
- ``collapse_verdict``: "no" / "partial" / "complete" collapse from several signals, each with its
  reason, so a collapsed arm is marked rather than ranked silently:

  * RankMe share = rankme / min(N, D): the fraction of the available dimensions the embeddings use.
    Below ``PARTIAL_RANK_SHARE`` (0.05) is dimensional (partial) collapse (Jing et al. 2022); RankMe
    below ``COMPLETE_RANKME`` (1.5: one direction) is complete collapse. RankMe depends on the data as
    well as the encoder: random-init tiny ViTs measured 0.15 on the 48 near-identical stripe images of
    the test stores and 0.36-0.75 on noise and varied stripes, hence the low threshold. Only judged
    when min(N, D) >= 10.
  * std ratio = embedding_std / healthy_std, with healthy_std = 1/sqrt(D): the per-dimension std of
    l2-normalised vectors spread over the sphere (SimSiam's reference). Below ``PARTIAL_STD_RATIO``
    (0.3) is partial, below ``COLLAPSE_THRESHOLD`` (0.1) complete collapse. Random-init ViTs sit at
    ~0.5-0.7, trained ones at ~0.5-1.
  * loss at its uniform value: a DINO-style loss (cross-entropy between teacher and student softmax
    over K prototypes) equals ln(K) when the outputs are uniform, i.e. nothing is learnt. Within
    ``UNIFORM_LOSS_RTOL`` (1 %) of ln(K) at the end of training it is a partial signal alone, and
    complete collapse together with either embedding signal. (Pass the *final* loss: every DINO run
    starts near ln(K).)

  The case that motivated this (DINO, 780 breast-ultrasound stills, 250 steps): loss 6.931 = ln(1024),
  RankMe 4.1 of 192 (share 0.021) and std 0.0096 vs a healthy 0.072 (ratio 0.13) -> "complete"; the
  embeddings alone (no loss) -> "partial".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

#: ``is_collapsed`` flags embeddings whose ``embedding_std`` is below this fraction of 1/sqrt(D).
#: A randomly initialised ViT sits at ~0.6/sqrt(D), trained encoders at ~0.5-1/sqrt(D); a collapsed
#: one (every input mapped to nearly the same vector) at ~0.
COLLAPSE_THRESHOLD = 0.1
#: ``collapse_verdict`` thresholds (see the module docstring for where the figures come from).
PARTIAL_STD_RATIO = 0.3
PARTIAL_RANK_SHARE = 0.05
COMPLETE_RANKME = 1.5
UNIFORM_LOSS_RTOL = 0.01
MIN_RANK_SHARE_DIM = 10

CollapseLevel = Literal["no", "partial", "complete"]
#: The verdict as a number, for scalar logs (TensorBoard, Tune): 0 no, 1 partial, 2 complete.
COLLAPSE_LEVELS: dict[str, int] = {"no": 0, "partial": 1, "complete": 2}


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


def diagnostics(
    features: Any,
    max_rows: int = 4096,
    seed: int = 0,
    loss: float | None = None,
    uniform_loss_value: float | None = None,
) -> dict[str, Any]:
    """rankme, embedding_std (and 1/sqrt(D) beside it), collapse and uniformity of (a subsample of) the features.

    ``collapsed`` (bool) is complete collapse, as before; ``collapse`` is the verdict string of
    ``collapse_verdict`` ("no" | "partial" | "complete") and ``collapse_reasons`` its reasons.
    """
    f = _tensor(features)
    if len(f) > max_rows:
        g = torch.Generator().manual_seed(seed)
        f = f[torch.randperm(len(f), generator=g)[:max_rows]]
    dim = int(f.shape[1])
    rm, std = rankme(f), embedding_std(f)
    verdict = collapse_verdict(f, rankme_value=rm, std=std, loss=loss, uniform_loss_value=uniform_loss_value)
    return {
        "n": int(len(f)),
        "dim": dim,
        "rankme": rm,
        "embedding_std": std,
        "healthy_std": 1.0 / math.sqrt(dim),
        "collapsed": verdict.collapsed == "complete",
        "collapse": verdict.collapsed,
        "collapse_level": COLLAPSE_LEVELS[verdict.collapsed],
        "collapse_reasons": verdict.reasons,
        "uniformity": uniformity(f),
    }


@dataclass(frozen=True)
class CollapseVerdict:
    """``collapsed`` ("no" | "partial" | "complete"), one readable reason per signal that fired, and the signals."""

    collapsed: CollapseLevel
    reasons: list[str] = field(default_factory=list)
    signals: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


def uniform_loss(
    objective: str | None, objective_config: dict[str, Any] | None, metrics: dict[str, Any] | None
) -> tuple[float, float] | None:
    """(final loss, its value for uniform outputs) when the objective has one and the metrics hold it, else None.

    DINO: ``loss_dino`` (or ``loss`` when neither iBOT nor KoLeo adds to it) against ln(out_dim).
    """
    if (objective or "").lower() != "dino" or not objective_config or not metrics:
        return None
    out_dim = objective_config.get("out_dim")
    loss = metrics.get("loss_dino")
    if loss is None and not objective_config.get("ibot") and not objective_config.get("koleo_weight"):
        loss = metrics.get("loss")
    if not out_dim or loss is None or not math.isfinite(float(loss)):
        return None
    return float(loss), math.log(int(out_dim))


def at_uniform_loss(loss: float, uniform_loss_value: float) -> bool:
    """Whether ``loss`` is within ``UNIFORM_LOSS_RTOL`` of the objective's uniform-output value."""
    return abs(loss - uniform_loss_value) <= UNIFORM_LOSS_RTOL * abs(uniform_loss_value)


def uniform_output_warning(
    objective: str | None, objective_config: dict[str, Any] | None, metrics: dict[str, Any] | None
) -> str | None:
    """A one-line warning when a run's final loss sits at its uniform-output value (DINO: ln(out_dim)), else None.

    Printed by ``pretextlab pretrain`` at the end of a run, so a user sees at once what evaluation's collapse
    verdict would say later: at small scale DINO's centring can win over sharpening and every teacher output
    goes uniform (docs/objectives.md, "DINO at ln(out_dim)").
    """
    final = uniform_loss(objective, objective_config, metrics)
    if final is None or not at_uniform_loss(*final):
        return None
    return (
        f"warning: final loss {final[0]:.4g} is at its uniform-output value ln(out_dim) = {final[1]:.4g}: "
        "the teacher's outputs are uniform and the encoder may have learnt nothing; compare it with random "
        "init (pretextlab evaluate) and see docs/objectives.md, 'DINO at ln(out_dim)'"
    )


def collapse_verdict(
    features: Any | None = None,
    *,
    rankme_value: float | None = None,
    dim: int | None = None,
    n: int | None = None,
    std: float | None = None,
    healthy_std: float | None = None,
    loss: float | None = None,
    uniform_loss_value: float | None = None,
) -> CollapseVerdict:
    """Complete / partial / no collapse from RankMe share, embedding std vs healthy, and a loss at its uniform value.

    Give the (N, D) ``features`` (RankMe, std, N and D are computed), or the figures themselves
    (``rankme_value``, ``dim``, ``n``, ``std``); ``healthy_std`` defaults to 1/sqrt(D). ``loss`` and
    ``uniform_loss_value`` (e.g. ln(out_dim) for DINO, see ``uniform_loss``) add the training signal.
    """
    if features is not None:
        f = _tensor(features)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"expected (N >= 2, D) features, got {tuple(f.shape)}")
        n, dim = int(f.shape[0]), int(f.shape[1])
        rankme_value = rankme(f) if rankme_value is None else rankme_value
        std = embedding_std(f) if std is None else std
    healthy = healthy_std if healthy_std is not None else (1.0 / math.sqrt(dim) if dim else None)
    ratio = std / healthy if std is not None and healthy else None
    avail = min(n, dim) if n and dim else dim
    share = rankme_value / avail if rankme_value is not None and avail else None
    complete: list[str] = []
    partial: list[str] = []
    if ratio is not None:
        what = f"embedding std {std:.4g} is {ratio:.2f}x the healthy {healthy:.4g}"
        if ratio < COLLAPSE_THRESHOLD:
            complete.append(f"{what} (< {COLLAPSE_THRESHOLD}): every input maps to nearly the same vector")
        elif ratio < PARTIAL_STD_RATIO:
            partial.append(f"{what} (< {PARTIAL_STD_RATIO}): the embeddings barely spread")
    if rankme_value is not None:
        if rankme_value < COMPLETE_RANKME:
            complete.append(f"RankMe {rankme_value:.2f} < {COMPLETE_RANKME}: the embeddings span one direction")
        elif share is not None and avail is not None and avail >= MIN_RANK_SHARE_DIM and share < PARTIAL_RANK_SHARE:
            partial.append(
                f"RankMe {rankme_value:.1f} of {avail} available dimensions ({share:.1%} < "
                f"{PARTIAL_RANK_SHARE:.0%}): dimensional collapse"
            )
    at_uniform = False
    if loss is not None and uniform_loss_value:
        at_uniform = at_uniform_loss(loss, uniform_loss_value)
        if at_uniform:
            reason = (
                f"training loss {loss:.4g} is at its uniform-output value {uniform_loss_value:.4g}: "
                "the objective's outputs are uniform, nothing is being learnt"
            )
            (complete if partial or complete else partial).append(reason)
    level: CollapseLevel = "complete" if complete else "partial" if partial else "no"
    signals = {
        "rankme": rankme_value,
        "rankme_share": share,
        "embedding_std": std,
        "healthy_std": healthy,
        "std_ratio": ratio,
        "loss": loss,
        "uniform_loss": uniform_loss_value,
    }
    return CollapseVerdict(level, complete + partial, signals)
