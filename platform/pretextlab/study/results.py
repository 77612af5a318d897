"""From the cells' records and evaluations to one table, paired comparisons and a verdict per dataset.

A verdict says "A > B" only when the Holm-corrected paired bootstrap CI of the difference on the same
test items excludes 0 (``evaluate.compare``); otherwise "tie". With several seeds, a winner must win in
every seed. Collapsed arms are marked, never ranked silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from pretextlab.evaluate.compare import compare_arms
from pretextlab.evaluate.stats import best_arms, seed_summary
from pretextlab.study.config import RANDOM_INIT

#: the metric the verdict rests on: balanced accuracy of the linear probe (robust to class imbalance)
PROTOCOL: Literal["linear"] = "linear"
METRIC = "balanced_accuracy"

FAMILY = {
    "dino": "view invariance (JEA)",
    "dinov3": "view invariance (JEA)",
    "simclr": "view invariance (JEA)",
    "vicreg": "view invariance (JEA)",
    "ijepa": "latent prediction (JEPA)",
    "cine_jepa": "latent prediction (JEPA)",
    "lejepa": "latent prediction (JEPA)",
    "salt": "latent prediction (JEPA)",
    "cine_salt": "latent prediction (JEPA)",
    "mae": "pixel reconstruction",
    "cine_mae": "pixel reconstruction",
    "none": "no pretraining",
}


def _estimate(result: Mapping[str, Any], protocol: str, metric: str) -> dict[str, float | None]:
    m = ((result.get(protocol) or {}).get("metrics") or {}).get(metric) or {}
    return {"value": m.get("value"), "low": m.get("low"), "high": m.get("high")}


#: the localisation columns: (column prefix, score, map) for the mean CLS attention and the anchor similarity
LOCALISATION = (
    ("loc_attn_hit", "pointing_game", "attention-mean"),
    ("loc_attn_auroc", "auroc", "attention-mean"),
    ("loc_anchor_auroc", "auroc", "anchor-similarity"),
)


def _localisation(result: Mapping[str, Any]) -> dict[str, Any]:
    """Localisation columns (value, low, high each, and the image count); None when the store has no ROI."""
    loc = result.get("localisation") or {}
    out: dict[str, Any] = {"loc_images": loc.get("n_images")}
    for col, score, name in LOCALISATION:
        est = (loc.get(score) or {}).get(name) or {}
        out.update({col: est.get("value"), f"{col}_low": est.get("low"), f"{col}_high": est.get("high")})
    return out


#: how an encoder's card pools its tokens into the embedding that is evaluated
READOUTS = {"token": "the CLS token", "avg": "the mean of the patch tokens"}
#: the short name of a readout in an arm label: ``random-init (CLS)``
READOUT_LABELS = {"token": "CLS", "avg": "mean"}


def is_baseline(arm: str | None) -> bool:
    """The random-init baseline, under its own readout or read as another arm reads (``random-init (CLS)``)."""
    return bool(arm) and (arm == RANDOM_INIT or str(arm).startswith(f"{RANDOM_INIT} ("))


def with_readouts(cells: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The cells, each baseline followed by one row per further readout it was evaluated with (its
    record's ``readouts``): arm ``random-init (CLS)``, id ``<cell>+token``. Those rows are compared with
    every arm like any other, so an arm read through its CLS token has random init read the same way."""
    out: list[Mapping[str, Any]] = []
    for c in cells:
        out.append(c)
        for pool, extra in (c.get("readouts") or {}).items():
            out.append(
                {
                    **c,
                    "id": f"{c['id']}+{pool}",
                    "arm": f"{c['arm']} ({READOUT_LABELS.get(pool, pool)})",
                    "encoder": extra.get("encoder"),
                    "evaluation": extra.get("evaluation"),
                    "readouts": None,
                }
            )
    return out


def results_table(cells: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per cell (a baseline read several ways: one row per readout): identity, status, probe
    metrics with CIs, diagnostics, cost."""
    rows = []
    for c in with_readouts(cells):
        ev = c.get("evaluation") or {}
        diag = ev.get("diagnostics") or {}
        knn, lin = _estimate(ev, "knn", METRIC), _estimate(ev, "linear", METRIC)
        lin_acc = _estimate(ev, "linear", "accuracy")
        loc = _localisation(ev)
        rows.append(
            {
                "cell": c["id"],
                "dataset": c["dataset"],
                "arm": c["arm"],
                "objective": c["objective"],
                "family": FAMILY.get(c["objective"], "other"),
                "seed": c["seed"],
                "status": c.get("status"),
                "error": c.get("error"),
                "encoder": c.get("encoder"),
                "knn_bal_acc": knn["value"],
                "knn_bal_acc_low": knn["low"],
                "knn_bal_acc_high": knn["high"],
                "linear_bal_acc": lin["value"],
                "linear_bal_acc_low": lin["low"],
                "linear_bal_acc_high": lin["high"],
                "linear_acc": lin_acc["value"],
                "rankme": diag.get("rankme"),
                "embedding_std": diag.get("embedding_std"),
                "collapse": diag.get("collapse"),
                "final_loss": (c.get("train") or {}).get("loss"),
                "steps": (c.get("train") or {}).get("step"),
                "wall_s": c.get("wall_s"),
                "images_per_s": (c.get("train") or {}).get("images_per_s"),
                "peak_rss_mib": c.get("peak_rss_mib"),
                **loc,
            }
        )
    return pd.DataFrame(rows)


@dataclass
class DatasetVerdict:
    """The comparisons on one dataset and the sentence a clinician reads."""

    dataset: str
    seeds: list[int]
    comparisons: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    winners: dict[int, list[str]] = field(default_factory=dict)
    flagged: dict[str, str] = field(default_factory=dict)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    sentence: str = ""
    winner: str | None = None
    readout_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "seeds": self.seeds,
            "winner": self.winner,
            "sentence": self.sentence,
            "readout_note": self.readout_note,
            "winners_by_seed": {str(k): v for k, v in self.winners.items()},
            "flagged": self.flagged,
            "summary": self.summary,
            "comparisons": {str(k): v for k, v in self.comparisons.items()},
        }


def dataset_verdict(
    dataset: str, cells: Sequence[Mapping[str, Any]], n_boot: int = 2000, alpha: float = 0.05
) -> DatasetVerdict:
    """Paired comparisons of every pair of arms (the baseline under each readout included) per seed, and
    the verdict."""
    cells = with_readouts(cells)
    done = [c for c in cells if c["dataset"] == dataset and c.get("status") == "complete" and c.get("evaluation")]
    seeds = sorted({c["seed"] for c in done})
    out = DatasetVerdict(dataset, seeds)
    arms = sorted({c["arm"] for c in done})
    for arm in arms:
        raw = [_estimate(c["evaluation"], PROTOCOL, METRIC)["value"] for c in done if c["arm"] == arm]
        vals = [float(v) for v in raw if v is not None]
        if vals:
            s = seed_summary(vals)
            out.summary[arm] = {"mean": s.mean, "sd": s.sd, "n": s.n}
    for seed in seeds:
        results = {c["arm"]: c["evaluation"] for c in done if c["seed"] == seed}
        if len(results) < 2:
            continue
        comp = compare_arms(results, protocol=PROTOCOL, metric=METRIC, n_boot=n_boot, seed=seed, alpha=alpha)
        out.comparisons[seed] = [c.to_dict() for c in comp.comparisons]
        out.flagged.update(comp.flagged)
        out.winners[seed] = best_arms(comp.comparisons)
    out.winner, out.sentence = _sentence(out, cells, alpha)
    out.readout_note = readout_note(done)
    if out.readout_note:
        out.sentence = f"{out.sentence} {out.readout_note}"
    return out


def readout_note(cells: Sequence[Mapping[str, Any]]) -> str:
    """A caveat when an arm's embedding pools its tokens in a way no random-init row of its dataset does.

    Why: each objective has its own readout (DINO, SimCLR and VICReg the CLS token; I-JEPA, MAE and
    their kin the mean of the patch tokens). A difference from random init read another way mixes
    what pretraining learnt with how the tokens are read: on the controlled benchmark's local
    histology set, random init's own CLS token read 0.692 balanced accuracy where its mean read 0.642
    (``benchmarks/pooling_probe.py``; docs/benchmark.md). A study evaluates its baseline under every
    readout its arms use (:func:`with_readouts`), so this speaks only of records from before that, or
    of a baseline that failed under a readout. Empty when every arm has its match or no record says."""
    pools = {c["arm"]: ((c.get("evaluation") or {}).get("encoder") or {}).get("global_pool") for c in cells}
    base = {p for a, p in pools.items() if is_baseline(a) and p is not None}
    if not base:
        return ""
    other = sorted(a for a, p in pools.items() if not is_baseline(a) and p is not None and p not in base)
    if not other:
        return ""
    named = ", ".join(f"{a} reads {READOUTS.get(str(pools[a]), pools[a])}" for a in other)
    have = " and ".join(READOUTS.get(str(p), str(p)) for p in sorted(base))
    return (
        f"Readouts differ: random init was read through {have} only, while {named}; a difference "
        "from random init there mixes pretraining with the readout (benchmarks/pooling_probe.py re-reads "
        "a finished study under each pooling)."
    )


def _sentence(v: DatasetVerdict, cells: Sequence[Mapping[str, Any]], alpha: float) -> tuple[str | None, str]:
    objective = {c["arm"]: c["objective"] for c in cells}
    if not v.winners:
        return None, f"{v.dataset}: not enough finished arms to compare."
    single = {tuple(w) for w in v.winners.values()}
    if len(single) == 1 and len(next(iter(single))) == 1:
        (winner,) = next(iter(single))
        if winner in v.flagged:
            return None, f"{v.dataset}: the best arm ({winner}) looks collapsed ({v.flagged[winner]}); no verdict."
        mean = v.summary.get(winner, {}).get("mean")
        rest = {a: s["mean"] for a, s in v.summary.items() if a != winner}
        runner_up = max(rest, key=lambda a: rest[a]) if rest else None
        by = (
            f" by {100 * (mean - rest[runner_up]):.1f} points of balanced accuracy over {runner_up}"
            if runner_up and mean is not None
            else ""
        )
        seeds = f"in all {len(v.winners)} seeds" if len(v.winners) > 1 else "with one seed"
        return winner, (
            f"{v.dataset}: {winner} ({FAMILY.get(objective.get(winner, ''), 'other')}) gives the best "
            f"frozen features{by}; every other arm is worse with 95 % confidence (Holm-corrected paired "
            f"bootstrap, {seeds})."
        )
    tied = sorted({a for w in v.winners.values() for a in w})
    beats_baseline = [a for a in tied if not is_baseline(a)]
    note = "" if beats_baseline else " Not even the random-init baseline is beaten."
    return None, (
        f"{v.dataset}: no single best objective: {', '.join(tied)} are tied (the differences' 95 % CIs "
        f"include 0 after Holm correction{', or the winner changes between seeds' if len(v.winners) > 1 else ''})."
        f"{note}"
    )


def summarise(cells: Sequence[Mapping[str, Any]], n_boot: int = 2000) -> dict[str, DatasetVerdict]:
    """The verdict of every dataset in the study."""
    return {d: dataset_verdict(d, cells, n_boot) for d in sorted({c["dataset"] for c in cells})}


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and bool(np.isfinite(x))
