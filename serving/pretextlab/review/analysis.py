"""Numbers from a review's answers: mean ratings with bootstrap CIs, Bradley-Terry strengths, agreement.

Pure numpy/pandas (plus the ``krippendorff`` package). Input is the export table
(:func:`pretextlab.review.service.export_answers`: one row per answer).

- Mean Likert rating per encoder, per encoder x map type and per encoder x modality, each with a
  percentile bootstrap 95% CI over answers (seeded, so a report is reproducible).
- Pairwise preferences as Bradley-Terry strengths (Bradley & Terry 1952), fitted with Hunter's (2004)
  MM iteration ``p_i <- W_i / sum_j n_ij / (p_i + p_j)``; a tie counts half a win to each side; strengths
  are normalised to sum to 1.
- Inter-rater agreement on the Likert ratings: Krippendorff's alpha for ordinal data
  (Krippendorff 2011, via the ``krippendorff`` package; a unit is one image x encoder x map type) and
  ICC(2,1), the two-way random-effects, absolute-agreement, single-rater intraclass correlation of
  Shrout & Fleiss (1979), on the units every reviewer rated.
"""

from __future__ import annotations

import math
from typing import Any

import krippendorff
import numpy as np
import pandas as pd

N_BOOTSTRAP = 2000


def bootstrap_ci(values: np.ndarray, n: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; (nan, nan) for fewer than 2 values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mean_ratings(answers: pd.DataFrame, by: list[str], seed: int = 0) -> pd.DataFrame:
    """Mean rating, n and 95% CI per group of ``by`` columns (Likert answers only)."""
    lik = answers[(answers["kind"] == "likert") & answers["rating"].notna()]
    rows = []
    for key, grp in lik.groupby(by, dropna=False, sort=True):
        r = grp["rating"].astype(float).to_numpy()
        lo, hi = bootstrap_ci(r, seed=seed)
        rows.append(
            {
                **dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                "n": len(r),
                "mean": float(r.mean()),
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "ci_low", "ci_high"])


def bradley_terry(wins: np.ndarray, iters: int = 10_000, tol: float = 1e-12) -> np.ndarray:
    """Strengths (sum 1) from ``wins[i, j]`` = times i was preferred over j (ties as 0.5 each way).

    Hunter's MM algorithm; an item that never won gets strength 0 (the MLE is on the boundary).
    """
    w = np.asarray(wins, dtype=np.float64)
    k = w.shape[0]
    n = w + w.T
    total_wins = w.sum(axis=1)
    p = np.full(k, 1.0 / k)
    for _ in range(iters):
        denom = np.array([sum(n[i, j] / (p[i] + p[j]) for j in range(k) if j != i and n[i, j] > 0) for i in range(k)])
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1.0), p)
        new = new / new.sum()
        if np.max(np.abs(new - p)) < tol:
            p = new
            break
        p = new
    return p


def pairwise_strengths(answers: pd.DataFrame) -> pd.DataFrame:
    """Bradley-Terry strength, wins and comparisons per encoder, from the pairwise answers."""
    pw = answers[(answers["kind"] == "pairwise") & answers["preference"].notna()]
    if pw.empty:
        return pd.DataFrame(columns=["encoder", "strength", "wins", "comparisons"])
    names = sorted(set(pw["encoder"]) | set(pw["encoder_b"]))
    idx = {n: i for i, n in enumerate(names)}
    wins = np.zeros((len(names), len(names)))
    for a, b, pref in zip(pw["encoder"], pw["encoder_b"], pw["preference"], strict=True):
        i, j = idx[a], idx[b]
        if pref == "a":
            wins[i, j] += 1
        elif pref == "b":
            wins[j, i] += 1
        else:
            wins[i, j] += 0.5
            wins[j, i] += 0.5
    p = bradley_terry(wins)
    comps = (wins + wins.T).sum(axis=1)
    return pd.DataFrame({"encoder": names, "strength": p, "wins": wins.sum(axis=1), "comparisons": comps})


def ratings_matrix(answers: pd.DataFrame) -> pd.DataFrame:
    """Reviewers x units (image, encoder, map type) of Likert ratings (NaN where a reviewer did not rate)."""
    lik = answers[(answers["kind"] == "likert") & answers["rating"].notna()].copy()
    lik["unit"] = lik["image"].astype(str) + "|" + lik["encoder"].astype(str) + "|" + lik["map_type"].astype(str)
    return lik.pivot_table(index="reviewer", columns="unit", values="rating", aggfunc="mean")


def krippendorff_alpha(matrix: np.ndarray, scale: int | None = None) -> float:
    """Ordinal Krippendorff's alpha of a raters x units matrix (NaN = missing); nan when it is undefined."""
    data = np.asarray(matrix, dtype=np.float64)
    if data.shape[0] < 2 or data.shape[1] < 1 or np.sum(~np.isnan(data)) < 2:
        return math.nan
    values = np.unique(data[~np.isnan(data)])
    if len(values) < 2:  # every rating the same: expected disagreement is 0, alpha is undefined (0/0)
        return math.nan
    domain = np.arange(1, scale + 1) if scale else values
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=domain))


def icc_2_1(matrix: np.ndarray) -> float:
    """ICC(2,1) of a raters x units matrix, on the units every rater rated (Shrout & Fleiss 1979, case 2)."""
    x = np.asarray(matrix, dtype=np.float64).T  # units x raters
    x = x[~np.isnan(x).any(axis=1)]
    n, k = x.shape
    if n < 2 or k < 2:
        return math.nan
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    bms, jms, ems = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    denom = bms + (k - 1) * ems + k * (jms - ems) / n
    return float((bms - ems) / denom) if denom > 0 else math.nan


def localisation_agreement(
    answers: pd.DataFrame, scores: pd.DataFrame, seed: int = 0, n_boot: int = N_BOOTSTRAP
) -> dict[str, Any]:
    """Do clinicians rate higher the maps that fall on the ROI? Spearman's rho between each (encoder, image,
    map type)'s mean Likert rating and its automatic localisation AUROC, with a percentile bootstrap 95% CI
    over those units (seeded). Units without a score (no mask, or a map type that is not scored) are left out.
    """
    ratings = answers[(answers["kind"] == "likert") & answers["rating"].notna()] if len(answers) else answers
    out: dict[str, Any] = {"units": 0, "spearman_rho": None, "ci_low": None, "ci_high": None, "score": "auroc"}
    if ratings is None or not len(ratings) or not len(scores):
        return out
    mean = ratings.groupby(["encoder", "item_id", "map_type"], as_index=False)["rating"].mean()
    units = mean.merge(scores, on=["encoder", "item_id", "map_type"]).dropna(subset=["auroc"])
    out["units"] = int(len(units))
    if len(units) < 3 or units["rating"].nunique() < 2 or units["auroc"].nunique() < 2:
        return out
    from scipy.stats import spearmanr

    x, y = units["rating"].to_numpy(float), units["auroc"].to_numpy(float)
    out["spearman_rho"] = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boots.append(spearmanr(x[i], y[i]).statistic)
    if boots:
        out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(boots, [0.025, 0.975]))
    return out


def analyse(answers: pd.DataFrame, seed: int = 0, scores: pd.DataFrame | None = None) -> dict[str, Any]:
    """Every number of the report, as plain lists/dicts (JSON-ready; NaN becomes None). ``scores``: the
    automatic localisation scores of the reviewed maps (review.localisation.roi_scores), when the store has
    ROI masks."""
    scale = int(answers["scale"].iloc[0]) if len(answers) else None
    mat = ratings_matrix(answers) if len(answers) else pd.DataFrame()
    agreement = {
        "reviewers": int(mat.shape[0]),
        "units": int(mat.shape[1]),
        "krippendorff_alpha_ordinal": krippendorff_alpha(mat.to_numpy(), scale) if mat.size else math.nan,
        "icc_2_1": icc_2_1(mat.to_numpy()) if mat.size else math.nan,
    }

    def table(df: pd.DataFrame) -> list[dict[str, Any]]:
        return [{k: _clean(v) for k, v in r.items()} for r in df.to_dict("records")]

    return {
        "answers": len(answers),
        "scale": scale,
        "by_encoder": table(mean_ratings(answers, ["encoder"], seed)),
        "by_encoder_map_type": table(mean_ratings(answers, ["encoder", "map_type"], seed)),
        "by_map_type": table(mean_ratings(answers, ["map_type"], seed)),
        "by_encoder_modality": table(
            mean_ratings(answers.assign(modality=answers["modality"].fillna("unknown")), ["encoder", "modality"], seed)
        ),
        "pairwise": table(pairwise_strengths(answers)),
        "agreement": {k: _clean(v) for k, v in agreement.items()},
        "localisation": None if scores is None else localisation_agreement(answers, scores, seed),
    }


def _clean(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(float(v)) else float(v)
    return v


def render_text(report: dict[str, Any]) -> str:
    """The report as a plain-text table (CLI)."""

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [f"answers: {report['answers']}", "", "mean rating per encoder (95% bootstrap CI)"]
    lines += [
        f"  {r['encoder']:<40} {f(r['mean'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]  n={r['n']}"
        for r in report["by_encoder"]
    ]
    lines += ["", "per encoder and map type"]
    lines += [
        f"  {r['encoder']:<40} {r['map_type']:<11} {f(r['mean'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]  n={r['n']}"
        for r in report["by_encoder_map_type"]
    ]
    lines += ["", "per encoder and modality"]
    lines += [
        f"  {r['encoder']:<40} {r['modality']:<15} {f(r['mean'])}  n={r['n']}" for r in report["by_encoder_modality"]
    ]
    if report["pairwise"]:
        lines += ["", "pairwise preference (Bradley-Terry strength)"]
        lines += [
            f"  {r['encoder']:<40} {f(r['strength'])}  wins={f(r['wins'])} of {f(r['comparisons'])}"
            for r in report["pairwise"]
        ]
    a = report["agreement"]
    lines += [
        "",
        f"agreement: {a['reviewers']} reviewers, {a['units']} units; Krippendorff's alpha (ordinal) "
        f"{f(a['krippendorff_alpha_ordinal'])}; ICC(2,1) {f(a['icc_2_1'])}",
    ]
    loc = report.get("localisation")
    if loc is not None:
        lines += [
            "",
            f"ratings vs automatic localisation (AUROC of the attention map on the ROI): Spearman rho "
            f"{f(loc['spearman_rho'])} [{f(loc['ci_low'])}, {f(loc['ci_high'])}] over {loc['units']} "
            "encoder x image units",
        ]
    return "\n".join(lines)
