"""Classification metrics with percentile-bootstrap 95% confidence intervals.

accuracy, balanced accuracy (mean per-class recall), macro-F1 and AUROC (binary for 2 classes,
one-vs-rest macro average otherwise) give the same values as scikit-learn's ``accuracy_score``,
``balanced_accuracy_score``, ``f1_score(average="macro")`` and ``roc_auc_score``. They are computed
from batched confusion matrices and ranks, so B = 1000 bootstrap resamples take milliseconds, not
the seconds that 4000 scikit-learn calls would. Resamples draw test rows with replacement from a
seeded generator, so the intervals are reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval (``low``, ``high``) and an optional note."""

    value: float
    low: float
    high: float
    n_boot: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN stays NaN; the report turns it into null)."""
        return asdict(self)


def _as_int(y: Any) -> np.ndarray:
    return np.asarray(y).astype(np.int64).ravel()


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(B, C, C) confusion matrices (rows: true class) for (B, N) label arrays."""
    b = y_true.shape[0]
    codes = (np.arange(b)[:, None] * num_classes * num_classes + y_true * num_classes + y_pred).ravel()
    return np.bincount(codes, minlength=b * num_classes * num_classes).reshape(b, num_classes, num_classes)


def _acc(cm: np.ndarray) -> np.ndarray:
    total = cm.sum(axis=(1, 2))
    return np.trace(cm, axis1=1, axis2=2) / np.maximum(total, 1)


def _bal_acc(cm: np.ndarray) -> np.ndarray:
    diag = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    support = cm.sum(axis=2)
    present = support > 0
    recall = np.where(present, diag / np.maximum(support, 1), 0.0)
    return recall.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _macro_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    fn = cm.sum(axis=2) - tp
    fp = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    present = denom > 0  # labels seen in y_true or y_pred, as sklearn's unique_labels
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC per row of (B, N) scores; NaN where a row has only one class."""
    ranks = rankdata(scores, method="average", axis=1)
    n1 = positive.sum(axis=1).astype(np.float64)
    n0 = positive.shape[1] - n1
    u = (ranks * positive).sum(axis=1) - n1 * (n1 + 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def _auroc(y_true: np.ndarray, probs: np.ndarray, num_classes: int) -> np.ndarray:
    """(B,) AUROC for (B, N) labels and (B, N, C) scores: binary for 2 classes, else one-vs-rest macro."""
    if num_classes == 2:
        return _binary_auc(probs[..., 1], y_true == 1)
    per_class = np.stack([_binary_auc(probs[..., c], y_true == c) for c in range(num_classes)], axis=1)
    return per_class.mean(axis=1)  # NaN when any class is absent from the (re)sample


def auroc_note(y_true: Any, num_classes: int) -> str | None:
    """Why AUROC is undefined for these labels (a class absent from ``y_true``), or None when it is defined."""
    present = set(np.unique(_as_int(y_true)).tolist())
    missing = [c for c in range(num_classes) if c not in present]
    if not missing:
        return None
    return f"AUROC undefined: class(es) {missing} absent from the test labels"


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct predictions."""
    yt, yp = _as_int(y_true), _as_int(y_pred)
    c = int(max(yt.max(initial=0), yp.max(initial=0))) + 1
    return float(_acc(_confusion(yt[None], yp[None], c))[0])


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean recall over the classes present in ``y_true`` (robust to class imbalance)."""
    yt, yp = _as_int(y_true), _as_int(y_pred)
    c = int(max(yt.max(initial=0), yp.max(initial=0))) + 1
    return float(_bal_acc(_confusion(yt[None], yp[None], c))[0])


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """Unweighted mean F1 over the labels present in ``y_true`` or ``y_pred``."""
    yt, yp = _as_int(y_true), _as_int(y_pred)
    c = int(max(yt.max(initial=0), yp.max(initial=0))) + 1
    return float(_macro_f1(_confusion(yt[None], yp[None], c))[0])


def auroc(y_true: Any, probs: Any, num_classes: int | None = None) -> float:
    """Binary AUROC (2 classes, score = probs[:, 1]) or one-vs-rest macro AUROC; NaN when a class is absent."""
    p = np.asarray(probs, dtype=np.float64)
    c = int(num_classes or p.shape[1])
    return float(_auroc(_as_int(y_true)[None], p[None], c)[0])


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    probs: Any | None = None,
    num_classes: int | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Accuracy, balanced accuracy, macro-F1 and (with ``probs``) AUROC, each with a percentile-bootstrap CI."""
    yt, yp = _as_int(y_true), _as_int(y_pred)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} rows but y_pred has {len(yp)}")
    if len(yt) == 0:
        raise ValueError("no test rows to score")
    p = None if probs is None else np.asarray(probs, dtype=np.float64)
    c = int(num_classes or (p.shape[1] if p is not None else max(yt.max(), yp.max()) + 1))
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if p is not None and (p.ndim != 2 or p.shape[1] != c or yt.max() >= c):
        raise ValueError(f"probs must be (N, {c}) with labels below {c}, got {p.shape} and label {yt.max()}")
    cc = max(c, int(yt.max()) + 1, int(yp.max()) + 1)  # confusion matrices also hold predicted-only labels
    n = len(yt)
    funcs = {"accuracy": _acc, "balanced_accuracy": _bal_acc, "macro_f1": _macro_f1}
    point = {name: float(f(_confusion(yt[None], yp[None], cc))[0]) for name, f in funcs.items()}
    boots: dict[str, list[np.ndarray]] = {name: [] for name in funcs}
    if p is not None:
        point["auroc"] = float(_auroc(yt[None], p[None], c)[0])
        boots["auroc"] = []
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // max(n * (c if p is not None else 1), 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        cm = _confusion(yt[idx], yp[idx], cc)
        for name, f in funcs.items():
            boots[name].append(f(cm))
        if p is not None:
            boots["auroc"].append(_auroc(yt[idx], p[idx], c))
        done += b
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    out: dict[str, Estimate] = {}
    for name, parts in boots.items():
        vals = np.concatenate(parts) if parts else np.zeros(0)
        finite = vals[np.isfinite(vals)]
        note = None
        if name == "auroc" and not np.isfinite(point[name]):
            out[name] = Estimate(float("nan"), float("nan"), float("nan"), 0, auroc_note(yt, c))
            continue
        if name == "auroc" and len(finite) < len(vals):
            note = f"{len(vals) - len(finite)} of {len(vals)} resamples lacked a class and were dropped"
        if len(finite) == 0:
            out[name] = Estimate(point[name], float("nan"), float("nan"), 0, note)
            continue
        lo, hi = np.percentile(finite, [lo_q, hi_q])
        out[name] = Estimate(point[name], float(lo), float(hi), int(len(finite)), note)
    return out
