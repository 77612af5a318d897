"""Few-shot evaluation: n labelled training examples per class, repeated with different seeds.

For each n in ``shots`` and each of ``repeats`` seeds, n rows per class are drawn from the training
set (all of a class's rows when it has fewer than n, with a note), a linear probe (fixed ``C``) or a
kNN classifier is fit on them, and the whole test set is scored. The report gives the mean and the
sample standard deviation over repeats, as in the few-shot tables of DINOv2 and MSN. With
``n_boot > 0`` it also gives a percentile-bootstrap CI of the repeat-averaged accuracy over the test
items (a cluster bootstrap over ``groups`` when given): the uncertainty from the finite test set,
which the spread over repeats does not show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from pretextlab.evaluate.knn import knn_predict
from pretextlab.evaluate.linear import linear_probe
from pretextlab.evaluate.metrics import accuracy, balanced_accuracy, macro_f1
from pretextlab.evaluate.stats import BootstrapCI, bootstrap_ci

FewShotMethod = Literal["linear", "knn"]


@dataclass
class FewShotResult:
    """Per-metric mean and std over repeats for one shot count, plus the raw per-repeat values."""

    shots: int
    method: str
    repeats: int
    mean: dict[str, float]
    std: dict[str, float]
    values: dict[str, list[float]]
    notes: list[str] = field(default_factory=list)
    accuracy_ci: BootstrapCI | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``accuracy_ci`` only when a bootstrap CI was asked for)."""
        out = {
            "shots": self.shots,
            "method": self.method,
            "repeats": self.repeats,
            "mean": self.mean,
            "std": self.std,
            "values": self.values,
            "notes": self.notes,
        }
        if self.accuracy_ci is not None:
            out["accuracy_ci"] = self.accuracy_ci.to_dict()
        return out


def sample_shots(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` rows per class (fewer when a class has fewer), drawn without replacement."""
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        picked.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def few_shot(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    shots: Sequence[int] = (1, 5, 10),
    repeats: int = 5,
    method: FewShotMethod = "linear",
    num_classes: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    C: float = 1.0,
    seed: int = 0,
    groups: Any | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
) -> list[FewShotResult]:
    """Score ``method`` trained on n examples per class for each n in ``shots``, ``repeats`` times each.

    ``n_boot > 0``: add ``accuracy_ci``, the bootstrap CI of the mean accuracy over repeats, resampling
    the test items (or their ``groups``: one id per test row, whole groups drawn).
    """
    if method not in ("linear", "knn"):
        raise ValueError(f"few-shot method must be 'linear' or 'knn', got {method!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    tx = np.asarray(train_x.detach().cpu() if hasattr(train_x, "detach") else train_x, dtype=np.float32)
    sx = np.asarray(test_x.detach().cpu() if hasattr(test_x, "detach") else test_x, dtype=np.float32)
    ty = np.asarray(train_y).astype(np.int64).ravel()
    sy = np.asarray(test_y).astype(np.int64).ravel()
    nc = int(num_classes) if num_classes is not None else int(max(ty.max(), sy.max())) + 1
    counts = np.bincount(ty, minlength=nc)
    results = []
    for n in shots:
        if n < 1:
            raise ValueError(f"shot counts must be >= 1, got {n}")
        notes = []
        short = [c for c in range(nc) if 0 < counts[c] < n]
        if short:
            notes.append(f"class(es) {short} have fewer than {n} training rows: all of theirs were used")
        values: dict[str, list[float]] = {"accuracy": [], "balanced_accuracy": [], "macro_f1": []}
        correct = np.zeros(len(sy), dtype=np.float64)
        for r in range(repeats):
            rng = np.random.default_rng([seed, n, r])
            pick = sample_shots(ty, n, rng)
            if method == "knn":
                preds, _ = knn_predict(
                    tx[pick], ty[pick], sx, k=min(k, len(pick)), temperature=temperature, num_classes=nc
                )
            else:
                preds = linear_probe(tx[pick], ty[pick], sx, C=C, num_classes=nc, seed=seed).preds
            correct += np.asarray(preds) == sy
            values["accuracy"].append(accuracy(sy, preds))
            values["balanced_accuracy"].append(balanced_accuracy(sy, preds))
            values["macro_f1"].append(macro_f1(sy, preds))
        mean = {m: float(np.mean(v)) for m, v in values.items()}
        std = {m: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()}
        acc_ci = (
            replace(bootstrap_ci(correct / repeats, groups, n_boot=n_boot, ci=ci, seed=seed), metric="accuracy")
            if n_boot > 0 and len(sy)
            else None
        )
        results.append(FewShotResult(int(n), method, repeats, mean, std, values, notes, acc_ci))
    return results
