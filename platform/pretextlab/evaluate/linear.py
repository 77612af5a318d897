"""Linear probe: class-balanced logistic regression on standardised frozen features.

The regularisation strength ``C`` is chosen by balanced accuracy on a validation split (given, or
carved from the training rows, grouped by patient when groups are given), then the probe is refit on
train + validation with that ``C``, as in the DINOv2 linear evaluation. With too few rows to carve a
validation split (e.g. few-shot) the fixed ``C`` is used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pretextlab.evaluate.metrics import balanced_accuracy

DEFAULT_CS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)


@dataclass
class LinearProbeResult:
    """Test predictions and class probabilities, plus the chosen ``C`` and how it was chosen."""

    preds: np.ndarray
    probs: np.ndarray
    C: float
    selection: str
    val_scores: dict[float, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _np(x: object) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    return np.asarray(x)


def _fit_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    C: float,
    num_classes: int,
    max_iter: int,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Fit scaler + balanced logistic regression on train, return (preds, probs over all classes) on test."""
    scaler = StandardScaler().fit(train_x)
    classes = np.unique(train_y)
    probs = np.zeros((len(test_x), num_classes), dtype=np.float64)
    if len(classes) == 1:  # a single class: nothing to fit
        probs[:, classes[0]] = 1.0
        return np.full(len(test_x), classes[0], dtype=np.int64), probs
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(train_x), train_y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        note = f"logistic regression (C={C:g}) did not converge in {max_iter} iterations"
        if note not in notes:
            notes.append(note)
    if len(test_x):
        probs[:, clf.classes_] = clf.predict_proba(scaler.transform(test_x))
    return probs.argmax(axis=1).astype(np.int64), probs


def carve_validation(
    labels: np.ndarray, groups: np.ndarray | None = None, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Indices (fit, val) that hold out ~``fraction`` of the rows (whole groups), or None if too few rows."""
    from pretextlab.evaluate.splits import split_indices

    counts = np.bincount(labels.astype(np.int64))
    if len(labels) < 10 or (counts[counts > 0] < 2).any():
        return None
    try:
        fit, val = split_indices(labels, groups, test_size=fraction, seed=seed)
    except ValueError:
        return None
    if len(val) == 0 or len(np.unique(labels[fit])) < 2:
        return None
    return fit, val


def linear_probe(
    train_x: object,
    train_y: object,
    test_x: object,
    val_x: object | None = None,
    val_y: object | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    C: float | None = None,
    num_classes: int | None = None,
    groups: object | None = None,
    max_iter: int = 1000,
    seed: int = 0,
) -> LinearProbeResult:
    """Class-balanced logistic regression on standardised features; ``C`` fixed or chosen on a validation split.

    ``C`` given: used as is. Otherwise each of ``Cs`` is scored by balanced accuracy on (``val_x``,
    ``val_y``), or on a split carved from the training rows (by ``groups`` when given); the best is
    refit on all the training (+ validation) rows. Too few rows to carve -> ``C = 1.0``.
    """
    tx, ty, sx = _np(train_x).astype(np.float64), _np(train_y).astype(np.int64).ravel(), _np(test_x).astype(np.float64)
    nc = int(num_classes) if num_classes is not None else int(ty.max()) + 1
    notes: list[str] = []
    if C is not None:
        preds, probs = _fit_predict(tx, ty, sx, float(C), nc, max_iter, notes)
        return LinearProbeResult(preds, probs, float(C), "fixed", notes=notes)
    if val_x is not None and val_y is not None and len(_np(val_y)):
        fx, fy = tx, ty
        vx, vy = _np(val_x).astype(np.float64), _np(val_y).astype(np.int64).ravel()
        refit_x, refit_y = np.concatenate([tx, vx]), np.concatenate([ty, vy])
        selection = "validation split"
    else:
        carved = carve_validation(ty, None if groups is None else _np(groups), seed=seed)
        if carved is None:
            preds, probs = _fit_predict(tx, ty, sx, 1.0, nc, max_iter, notes)
            notes.append("too few training rows to choose C on a validation split; used C=1")
            return LinearProbeResult(preds, probs, 1.0, "fixed (too few rows)", notes=notes)
        fit, val = carved
        fx, fy, vx, vy = tx[fit], ty[fit], tx[val], ty[val]
        refit_x, refit_y = tx, ty
        selection = "held-out 20% of train"
    scores: dict[float, float] = {}
    for c in Cs:
        vpred, _ = _fit_predict(fx, fy, vx, float(c), nc, max_iter, notes)
        scores[float(c)] = balanced_accuracy(vy, vpred)
    best = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))  # ties: the C closest to 1
    preds, probs = _fit_predict(refit_x, refit_y, sx, best, nc, max_iter, notes)
    return LinearProbeResult(preds, probs, best, selection, scores, notes)
