"""Paired comparisons between encoders (arms) evaluated on the same test rows of one dataset.

Each arm's ``evaluate_encoder`` result, run with ``keep_predictions=True`` and the same catalog, split
config and seed, holds the same test rows; this module checks that they do (row indices and item ids
must match exactly, else the comparison would not be paired) and then runs ``stats.pairwise`` on the
chosen protocol's predictions, resampling the rows' groups (patients, else items) as the per-arm CIs
do. Collapsed arms (``diagnostics.collapse`` not "no") are named in ``flagged`` so a report marks them
instead of ranking them silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pretextlab.evaluate.stats import Comparison, pairwise

Protocol = Literal["knn", "linear"]


@dataclass
class ArmComparison:
    """All pairwise verdicts of one metric and protocol on one dataset, Holm-corrected together."""

    dataset: str
    protocol: str
    metric: str
    comparisons: list[Comparison]
    flagged: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "metric": self.metric,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "flagged": dict(self.flagged),
        }


def _predictions(name: str, result: Mapping[str, Any]) -> Mapping[str, Any]:
    pred = result.get("predictions")
    if not pred:
        raise ValueError(f"arm {name!r}: its evaluate result has no predictions; evaluate with keep_predictions=True")
    return pred


def compare_arms(
    results: Mapping[str, Mapping[str, Any]],
    protocol: Protocol = "linear",
    metric: str = "accuracy",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> ArmComparison:
    """Pairwise paired-bootstrap comparisons of ``metric`` between arms (name -> evaluate result), Holm over pairs.

    Raises ``ValueError`` when an arm lacks predictions or the arms were not scored on the same test rows.
    """
    if len(results) < 2:
        raise ValueError("compare_arms needs at least two arms")
    names = list(results)
    first = _predictions(names[0], results[names[0]])
    rows, items = np.asarray(first["rows"]), np.asarray(first["item_ids"]).astype(str)
    for name in names[1:]:
        p = _predictions(name, results[name])
        if not (
            np.array_equal(np.asarray(p["rows"]), rows) and np.array_equal(np.asarray(p["item_ids"]).astype(str), items)
        ):
            raise ValueError(
                f"arms {names[0]!r} and {name!r} were not scored on the same test rows "
                "(different catalog, split or seed): a paired comparison is impossible"
            )
    key = "probs" if metric == "auroc" else "preds"
    arms = {name: np.asarray(_predictions(name, results[name])[protocol][key]) for name in names}
    y = np.asarray(first["y_true"])
    nc = int(np.asarray(arms[names[0]]).shape[1]) if metric == "auroc" else None
    comps = pairwise(arms, np.asarray(first["groups"]).astype(str), metric, y, nc, n_boot, ci, seed, alpha)
    flagged = {
        name: r["diagnostics"]["collapse"]
        for name, r in results.items()
        if r.get("diagnostics", {}).get("collapse", "no") != "no"
    }
    dataset = str(results[names[0]].get("dataset", {}).get("name", ""))
    return ArmComparison(dataset, protocol, metric, comps, flagged)
