"""Train / validation / test splits that never leak a patient across splits.

Order of preference: (1) the catalog's own ``split`` column when it names both train and test rows
(or train and val: val then serves as the test set); (2) a patient-grouped split, stratified by
label when possible (scikit-learn's ``StratifiedGroupKFold``, first fold held out), whenever some
patient has several rows; (3) a stratified split of rows (``StratifiedShuffleSplit``), or a plain
shuffled one when a class is too small to stratify.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import ShuffleSplit, StratifiedGroupKFold, StratifiedShuffleSplit

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class Split:
    """Row indices of each split, how they were made, and anything the user should know."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    strategy: str
    notes: list[str] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        """Rows per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _normalise_split(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return SPLIT_ALIASES.get(str(value).strip().lower())


def split_indices(
    labels: Any, groups: Any | None = None, test_size: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: whole groups on one side when groups repeat, stratified by label when possible."""
    train, test, _ = _split(labels, groups, test_size, seed)
    return train, test


def _split(labels: Any, groups: Any | None, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    y = np.asarray(labels).astype(np.int64).ravel()
    n = len(y)
    if n < 2:
        raise ValueError(f"need at least 2 rows to split, got {n}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    idx = np.arange(n)
    if groups is not None:
        g = np.asarray(groups).astype(str).ravel()
        _, gid = np.unique(g, return_inverse=True)
        n_groups = int(gid.max()) + 1
        if n_groups < n:  # some group holds several rows: split by group
            if n_groups < 2:
                raise ValueError("all rows belong to one patient: a patient-grouped split is impossible")
            n_splits = max(2, min(round(1 / test_size), n_groups))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "least populated class has only k members"
                folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                train, test = next(folds.split(idx, y, gid))
            return np.sort(train), np.sort(test), "patient-grouped, stratified by label"
    classes, counts = np.unique(y, return_counts=True)
    n_test = max(1, math.ceil(test_size * n))
    if n_test >= n:
        n_test = n - 1
    if counts.min() >= 2 and n_test >= len(classes) and n - n_test >= len(classes):
        splitter: Any = StratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
        strategy = "stratified by label"
    else:
        splitter = ShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
        strategy = "random (a class is too small to stratify)"
    train, test = next(splitter.split(idx, y))
    return np.sort(train), np.sort(test), strategy


def make_split(
    labels: Any, groups: Any | None = None, explicit: Any | None = None, test_size: float = 0.3, seed: int = 0
) -> Split:
    """Honour an explicit train/val/test column when it is usable, else split by patient (or by row)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    notes: list[str] = []
    if explicit is not None:
        names = np.array([_normalise_split(v) for v in explicit], dtype=object)
        present = set(names[names != None].tolist())  # noqa: E711 (element-wise on an object array)
        if "train" in present and ("test" in present or "val" in present):
            train = np.flatnonzero(names == "train")
            val = np.flatnonzero(names == "val")
            test = np.flatnonzero(names == "test")
            strategy = "catalog split column"
            if len(test) == 0:
                test, val = val, np.zeros(0, dtype=np.int64)
                notes.append("the catalog has train and val rows but no test rows: val is used as the test set")
                strategy = "catalog split column (val as test)"
            left = len(y) - len(train) - len(val) - len(test)
            if left:
                notes.append(f"{left} labelled rows without a train/val/test split were left out")
            if groups is not None:
                g = np.asarray(groups).astype(str)
                owners: dict[str, set[str]] = {}
                for gi, s in zip(g, names, strict=True):
                    if s is not None:
                        owners.setdefault(gi, set()).add(s)
                leaked = sorted(k for k, v in owners.items() if len(v) > 1)
                if leaked:
                    notes.append(
                        f"the catalog split puts {len(leaked)} patient(s) in several splits "
                        f"(e.g. {leaked[0]}); results may be optimistic"
                    )
            return Split(train, val, test, strategy, notes)
        if present:
            notes.append(f"catalog split column has only {sorted(present)}: made a new split instead")
    train, test, strategy = _split(y, groups, test_size, seed)
    return Split(train, np.zeros(0, dtype=np.int64), test, strategy, notes)
