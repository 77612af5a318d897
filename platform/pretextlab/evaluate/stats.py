"""Statistics for comparing encoders on the same test items: CIs, paired differences, Holm, McNemar, verdicts.

- ``bootstrap_ci``: percentile bootstrap CI of a mean of per-item scores (correct / incorrect, a
  per-image localisation score ...) or of a classification metric (``metrics.METRICS``). With
  ``groups`` it is the cluster bootstrap (whole patients / slides / source images / cine loops are
  resampled, see ``resample``), which is what correlated rows need.
- ``paired_bootstrap``: the difference of a metric between two arms scored on the *same* test items.
  Both arms are evaluated on the same resamples, so the item-to-item variation they share cancels
  (Efron & Tibshirani 1993, ch. 16; Koehn 2004 for classifier comparisons). Returns the estimate, the
  percentile CI and a two-sided bootstrap p-value (see ``paired_bootstrap`` for its definition).
- ``seed_summary``: mean and sample sd (ddof = 1) across pretraining seeds.
- ``holm``: Holm (1979) step-down adjusted p-values, which control the family-wise error rate over all
  the comparisons of a study without assuming they are independent.
- ``mcnemar_exact``: McNemar's test for paired correct / incorrect vectors, exact form (a two-sided
  binomial test with p = 1/2 on the discordant pairs; Edwards 1948, Dietterich 1998).
- ``verdict`` / ``rank``: the verdict between two arms: "A > B" or "B > A" only when the Holm-adjusted p-value of
  the difference is below ``alpha`` (i.e. the percentile CI excludes 0 at the corrected level), else
  "tie". ``pairwise`` runs every pair of arms and applies Holm across them; ``best_arms`` names the
  arms no other arm beats.

Pure NumPy / SciPy; no Ray.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy.stats import binom

from pretextlab.evaluate.metrics import METRICS, ResampledMetric
from pretextlab.evaluate.resample import Groups, bootstrap_counts, group_index, percentile_interval

Verdict = Literal["A > B", "B > A", "tie"]


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with its percentile-bootstrap interval and what was resampled.

    ``unit``: ``"group"`` (cluster bootstrap over ``n_units`` groups) or ``"sample"`` (rows);
    ``n_boot``: resamples whose value was finite (a resample may lack a class, e.g. for AUROC).
    """

    metric: str
    value: float
    low: float
    high: float
    ci: float
    n_boot: int
    unit: str
    n_units: int
    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """metric(A) - metric(B) on the same test items, with its paired-bootstrap CI and two-sided p-value.

    ``p_holm`` is filled in by ``holm_adjust`` / ``pairwise`` (None until the family is known).
    """

    metric: str
    arm_a: str
    arm_b: str
    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    p_value: float
    ci: float
    n_boot: int
    unit: str
    n_units: int
    n_samples: int
    p_holm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation (ddof = 1; 0 for one seed) of one metric across seeds."""

    mean: float
    sd: float
    n: int
    values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.sd:.3f} (n={self.n})"


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test: ``a_only`` items only A got right, ``b_only`` only B, two-sided binomial p-value."""

    a_only: int
    b_only: int
    n: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """The verdict between two arms on one metric, with the paired difference it rests on."""

    arm_a: str
    arm_b: str
    verdict: Verdict
    difference: PairedDifference
    alpha: float

    @property
    def sentence(self) -> str:
        """One line: ``dino > mae on accuracy: +0.042 [0.013, 0.071], Holm p = 0.004``."""
        d = self.difference
        rel = {
            "A > B": f"{self.arm_a} > {self.arm_b}",
            "B > A": f"{self.arm_b} > {self.arm_a}",
            "tie": f"{self.arm_a} ~ {self.arm_b} (tie)",
        }[self.verdict]
        p = d.p_holm if d.p_holm is not None else d.p_value
        return (
            f"{rel} on {d.metric}: {d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}], "
            f"{'Holm ' if d.p_holm is not None else ''}p = {p:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "arm_a": self.arm_a,
            "arm_b": self.arm_b,
            "verdict": self.verdict,
            "alpha": self.alpha,
            "sentence": self.sentence,
            "difference": self.difference.to_dict(),
        }


# ---------------------------------------------------------------- resampled statistics


class _Mean:
    """The mean of per-item scores, evaluated on group-count resamples (vectorised: counts @ group sums)."""

    def __init__(self, scores: Any, groups: Groups) -> None:
        x = np.asarray(scores, dtype=np.float64).ravel()
        if not np.all(np.isfinite(x)):
            raise ValueError("scores must be finite")
        self.sums = np.bincount(groups.ids, weights=x, minlength=groups.count)
        self.sizes = groups.sizes.astype(np.float64)
        self.value = float(x.mean()) if len(x) else float("nan")

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        w = counts.astype(np.float64)
        return (w @ self.sums) / (w @ self.sizes)


def _statistic(metric: str, groups: Groups, scores: Any | None, y_true: Any | None, num_classes: int | None) -> Any:
    """``"mean"`` of per-item ``scores``, or a classification metric of predictions (``scores`` = y_pred or probs)."""
    if metric == "mean":
        return _Mean(scores, groups)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use 'mean' or one of {', '.join(METRICS)}")
    if y_true is None:
        raise ValueError(f"{metric} needs y_true")
    if metric == "auroc":
        return ResampledMetric(metric, y_true, probs=scores, num_classes=num_classes, groups=groups)
    return ResampledMetric(metric, y_true, y_pred=scores, num_classes=num_classes, groups=groups)


def _check(ci: float, n_boot: int) -> None:
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def bootstrap_ci(
    scores: Any,
    groups: Any | None = None,
    metric: str = "mean",
    y_true: Any | None = None,
    num_classes: int | None = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile-bootstrap CI of ``metric`` over the test items; with ``groups``, a cluster bootstrap.

    ``metric="mean"``: ``scores`` are per-item values (1/0 correct, a per-image AUROC ...).
    ``metric`` in ``METRICS``: ``scores`` are the predicted labels (N,) (probs (N, C) for ``"auroc"``)
    and ``y_true`` the labels. ``groups``: one id per item; whole groups are resampled.
    """
    _check(ci, n_boot)
    n = len(np.asarray(scores))
    grp = group_index(groups, n)
    stat = _statistic(metric, grp, scores, y_true, num_classes)
    rng = np.random.default_rng(seed)
    vals = np.concatenate([stat(c) for c in bootstrap_counts(grp.count, n_boot, rng)])
    lo, hi = percentile_interval(vals, ci)
    return BootstrapCI(metric, stat.value, lo, hi, ci, int(np.isfinite(vals).sum()), grp.unit, grp.count, n)


def bootstrap_p_value(deltas: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap differences: 2 min(P*(d <= 0), P*(d >= 0)).

    This is the percentile-interval duality: p < alpha exactly when the (1 - alpha) percentile
    interval excludes 0. Each tail count gets +1 in numerator and denominator so p is never 0
    (the smallest reportable p is 2 / (B + 1)).
    """
    d = deltas[np.isfinite(deltas)]
    if len(d) == 0:
        return float("nan")
    below = (np.count_nonzero(d <= 0) + 1) / (len(d) + 1)
    above = (np.count_nonzero(d >= 0) + 1) / (len(d) + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_bootstrap(
    scores_a: Any,
    scores_b: Any,
    groups: Any | None = None,
    metric: str = "mean",
    y_true: Any | None = None,
    num_classes: int | None = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    arm_a: str = "A",
    arm_b: str = "B",
) -> PairedDifference:
    """metric(A) - metric(B) with a paired percentile-bootstrap CI and two-sided p-value.

    Both arms were scored on the same test items, in the same order: each resample (of items, or of
    whole ``groups``) is applied to both arms, so the difference's interval reflects only how the arms
    disagree. ``scores_*`` as in ``bootstrap_ci`` (per-item values for ``"mean"``, predictions for a
    classification metric). p-value: ``bootstrap_p_value``.
    """
    _check(ci, n_boot)
    a, b = np.asarray(scores_a), np.asarray(scores_b)
    if a.shape != b.shape:
        raise ValueError(f"the two arms must be scored on the same items: shapes {a.shape} and {b.shape}")
    grp = group_index(groups, len(a))
    sa = _statistic(metric, grp, a, y_true, num_classes)
    sb = _statistic(metric, grp, b, y_true, num_classes)
    rng = np.random.default_rng(seed)
    deltas = np.concatenate([sa(c) - sb(c) for c in bootstrap_counts(grp.count, n_boot, rng)])
    lo, hi = percentile_interval(deltas, ci)
    return PairedDifference(
        metric,
        arm_a,
        arm_b,
        sa.value,
        sb.value,
        sa.value - sb.value,
        lo,
        hi,
        bootstrap_p_value(deltas),
        ci,
        int(np.isfinite(deltas).sum()),
        grp.unit,
        grp.count,
        len(a),
    )


# ---------------------------------------------------------------- seeds, multiplicity, McNemar


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """Mean ± sample sd (ddof = 1) of one metric over pretraining seeds (sd 0 for a single seed)."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("seed_summary needs at least one value")
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return SeedSummary(float(np.mean(v)), sd, len(v), v)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)); rejecting every hypothesis
    whose adjusted p is <= alpha is Holm's step-down test at family-wise level alpha. NaNs are left out
    of the family and stay NaN.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out.tolist()


def holm_adjust(diffs: Sequence[PairedDifference]) -> list[PairedDifference]:
    """The same differences with ``p_holm`` set, Holm's correction taken over all of them as one family."""
    adjusted = holm([d.p_value for d in diffs])
    return [replace(d, p_holm=float(p)) for d, p in zip(diffs, adjusted, strict=True)]


def mcnemar_exact(correct_a: Any, correct_b: Any) -> McNemarResult:
    """Exact McNemar test of two classifiers' correct / incorrect vectors on the same items.

    Only the discordant items count: ``a_only`` (A right, B wrong) and ``b_only``. Under "equally
    accurate" each discordant item is a fair coin, so p = min(1, 2 P(X <= min(a_only, b_only))) with
    X ~ Binomial(a_only + b_only, 1/2); p = 1 with no discordant item. (Items are assumed independent:
    with grouped items use ``paired_bootstrap`` with groups instead.)
    """
    a = np.asarray(correct_a).astype(bool).ravel()
    b = np.asarray(correct_b).astype(bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"correct_a has {len(a)} items but correct_b has {len(b)}")
    n10, n01 = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    n = n10 + n01
    p = 1.0 if n == 0 else float(min(1.0, 2 * binom.cdf(min(n10, n01), n, 0.5)))
    return McNemarResult(n10, n01, n, p)


# ---------------------------------------------------------------- verdicts


def verdict(diff: PairedDifference, alpha: float = 0.05) -> Comparison:
    """ "A > B" / "B > A" when the (Holm-adjusted when set) p-value is below ``alpha``, else "tie"."""
    p = diff.p_holm if diff.p_holm is not None else diff.p_value
    if not math.isfinite(p) or p >= alpha:
        v: Verdict = "tie"
    else:
        v = "A > B" if diff.difference > 0 else "B > A" if diff.difference < 0 else "tie"
    return Comparison(diff.arm_a, diff.arm_b, v, diff, alpha)


def rank(diffs: Sequence[PairedDifference], alpha: float = 0.05) -> list[Comparison]:
    """Holm-correct a family of paired differences and give each its verdict."""
    return [verdict(d, alpha) for d in holm_adjust(diffs)]


def pairwise(
    arms: Mapping[str, Any],
    groups: Any | None = None,
    metric: str = "mean",
    y_true: Any | None = None,
    num_classes: int | None = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[Comparison]:
    """Every pair of arms (in the mapping's order), paired-bootstrapped on the same resamples, Holm over all pairs.

    ``arms``: name -> per-item scores or predictions, all on the same test items (see ``bootstrap_ci``).
    """
    names = list(arms)
    if len(names) < 2:
        raise ValueError("pairwise needs at least two arms")
    diffs = [
        paired_bootstrap(arms[a], arms[b], groups, metric, y_true, num_classes, n_boot, ci, seed, a, b)
        for a, b in itertools.combinations(names, 2)
    ]
    return rank(diffs, alpha)


def best_arms(comparisons: Sequence[Comparison]) -> list[str]:
    """The arms no other arm beats (in the comparisons' order of appearance): one name is a winner, several a tie.

    Collapsed arms should be left out of ``comparisons`` (or marked) by the caller before reading this.
    """
    names = list(dict.fromkeys(n for c in comparisons for n in (c.arm_a, c.arm_b)))
    beaten = {c.arm_b if c.verdict == "A > B" else c.arm_a for c in comparisons if c.verdict != "tie"}
    return [n for n in names if n not in beaten]
