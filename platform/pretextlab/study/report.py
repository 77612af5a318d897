"""The study report: ``report.md``, one self-contained ``report.html`` (inline PNGs, no network fetch,
opens offline), ``results.parquet`` and ``results.json``. Plots are matplotlib (Agg), embedded as base64.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pretextlab.study.results import METRIC, PROTOCOL, DatasetVerdict, finite, is_baseline

_COLS = [
    "arm",
    "family",
    "seed",
    "status",
    "linear_bal_acc",
    "knn_bal_acc",
    "rankme",
    "collapse",
    "final_loss",
    "steps",
    "wall_s",
    "images_per_s",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_base64(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def metric_figure(table: pd.DataFrame, dataset: str) -> str | None:
    """Linear-probe balanced accuracy per arm and seed with its 95 % CI (base64 PNG)."""
    rows = table[(table["dataset"] == dataset) & table["linear_bal_acc"].notna()]
    if rows.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.2))
    labels = [f"{r.arm} (s{r.seed})" for r in rows.itertuples()]
    y = np.arange(len(rows))
    v = rows["linear_bal_acc"].to_numpy(float)
    lo = v - rows["linear_bal_acc_low"].fillna(rows["linear_bal_acc"]).to_numpy(float)
    hi = rows["linear_bal_acc_high"].fillna(rows["linear_bal_acc"]).to_numpy(float) - v
    colors = ["#888888" if is_baseline(a) else "#2a6f97" for a in rows["arm"]]
    ax.errorbar(v, y, xerr=[lo, hi], fmt="none", ecolor="#333333", capsize=3)
    ax.scatter(v, y, c=colors, zorder=3)
    ax.set_yticks(y, labels)
    ax.set_xlabel(f"{PROTOCOL} probe {METRIC.replace('_', ' ')} (95 % CI)")
    ax.set_title(dataset)
    ax.grid(axis="x", alpha=0.3)
    return png_base64(fig)


def forest_figure(verdict: DatasetVerdict) -> str | None:
    """Paired differences between arms (A - B) with their Holm-corrected verdicts (base64 PNG)."""
    comps = [(seed, c) for seed, cs in verdict.comparisons.items() for c in cs]
    if not comps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.42 * len(comps) + 1.2))
    for i, (_seed, c) in enumerate(comps):
        d = c["difference"]
        colour = "#2a9d8f" if c["verdict"] != "tie" else "#999999"
        ax.plot([d["low"], d["high"]], [i, i], color=colour, lw=2)
        ax.plot([d["difference"]], [i], "o", color=colour)
    ax.axvline(0, color="#444444", lw=1, ls="--")
    ax.set_yticks(range(len(comps)), [f"{c['arm_a']} - {c['arm_b']} (s{seed})" for seed, c in comps])
    ax.set_xlabel("paired difference, 95 % CI (green: excludes 0 after Holm)")
    ax.set_title(f"{verdict.dataset}: paired comparisons")
    ax.grid(axis="x", alpha=0.3)
    return png_base64(fig)


def curves_figure(curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], dataset: str) -> str | None:
    """Loss and RankMe over steps of each trained cell of ``dataset`` (from the runs' TensorBoard)."""
    mine = {cell: c for cell, c in curves.items() if cell.startswith(f"{dataset}.") and c}
    if not mine:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for cell, series in sorted(mine.items()):
        for ax, tag in zip(axes, ("loss", "train_rankme"), strict=True):
            pts = series.get(tag) or []
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=cell.split(".", 1)[1])
    for ax, tag in zip(axes, ("loss", "RankMe on the training stream"), strict=True):
        ax.set_xlabel("step")
        ax.set_title(tag)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return png_base64(fig)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}" if finite(x) else "-"
    return "-" if x is None else str(x)


def _with_ci(r: pd.Series, key: str) -> str:
    v = r.get(key)
    if not finite(v):
        return "-"
    lo, hi = r.get(f"{key}_low"), r.get(f"{key}_high")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if finite(lo) and finite(hi) else f"{v:.3f}"


def _table_rows(table: pd.DataFrame, dataset: str) -> tuple[list[str], list[list[str]]]:
    head = [
        "arm",
        "family",
        "seed",
        "status",
        "linear bal. acc [95 % CI]",
        "kNN bal. acc [95 % CI]",
        "RankMe",
        "collapse",
        "final loss",
        "steps",
        "wall s",
        "images/s",
        "peak MiB",
    ]
    body = []
    for _, r in table[table["dataset"] == dataset].iterrows():
        body.append(
            [
                str(r["arm"]),
                str(r["family"]),
                str(r["seed"]),
                str(r["status"]),
                _with_ci(r, "linear_bal_acc"),
                _with_ci(r, "knn_bal_acc"),
                _fmt(r["rankme"]),
                _fmt(r["collapse"]),
                _fmt(r["final_loss"]),
                _fmt(r["steps"]),
                _fmt(r["wall_s"]),
                _fmt(r["images_per_s"]),
                _fmt(r["peak_rss_mib"]),
            ]
        )
    return head, body


def _localisation_rows(table: pd.DataFrame, dataset: str) -> tuple[list[str], list[list[str]]]:
    """Pointing game and AUROC against the ROI masks, per arm; no rows when the dataset has no masks."""
    rows = table[(table["dataset"] == dataset) & table["loc_images"].notna()] if "loc_images" in table else table[:0]
    head = [
        "arm",
        "seed",
        "images",
        "pointing game, mean attention",
        "AUROC, mean attention",
        "AUROC, anchor similarity",
    ]
    body = [
        [
            str(r["arm"]),
            str(r["seed"]),
            _fmt(int(r["loc_images"])),
            _with_ci(r, "loc_attn_hit"),
            _with_ci(r, "loc_attn_auroc"),
            _with_ci(r, "loc_anchor_auroc"),
        ]
        for _, r in rows.iterrows()
    ]
    return head, body


LOCALISATION_NOTE = (
    "How well each encoder's feature maps fall on the clinical ROI of the test images (95 % bootstrap CIs): "
    "pointing game = share of images whose map maximum lies inside the ROI; AUROC = map values inside vs "
    "outside the ROI (0.5 = no preference). It measures where the features look, not diagnostic accuracy."
)


CLINICIAN_NOTE = (
    "Clinicians rated each arm's feature maps on the same images without knowing which arm drew which map "
    "(a letter shuffled per reviewer; no arm, objective or file name in their pages). The arms are named here "
    "only. Means with 95 % bootstrap CIs over answers; Bradley-Terry strengths of the pairwise preferences "
    "(sum 1); agreement as Krippendorff's alpha (ordinal) and ICC(2,1)."
)


def _f2(x: Any) -> str:
    return f"{x:.2f}" if finite(x) else "-"


def _mean_ci(r: Mapping[str, Any]) -> str:
    m, lo, hi = r.get("mean"), r.get("ci_low"), r.get("ci_high")
    if not finite(m):
        return "-"
    return f"{m:.2f} [{lo:.2f}, {hi:.2f}]" if finite(lo) and finite(hi) else f"{m:.2f}"


def clinician_review_tables(review: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of one linked review's analysis, arms unblinded (``review`` as written by
    ``pretextlab review report`` into the study folder's reviews/)."""
    a = review.get("analysis") or {}
    scale = a.get("scale") or "?"
    rating = f"mean rating, 1-{scale} [95 % CI]"
    tables = [
        (
            "Mean rating per arm",
            ["arm", "answers", rating],
            [[str(r["encoder"]), str(r["n"]), _mean_ci(r)] for r in a.get("by_encoder") or []],
        ),
        (
            "Per arm and map type",
            ["arm", "map type", "answers", rating],
            [
                [str(r["encoder"]), str(r["map_type"]), str(r["n"]), _mean_ci(r)]
                for r in a.get("by_encoder_map_type") or []
            ],
        ),
        (
            "Per map type (all arms)",
            ["map type", "answers", rating],
            [[str(r["map_type"]), str(r["n"]), _mean_ci(r)] for r in a.get("by_map_type") or []],
        ),
    ]
    if a.get("pairwise"):
        tables.append(
            (
                "Pairwise preference (Bradley-Terry strength)",
                ["arm", "strength", "wins", "comparisons"],
                [
                    [str(r["encoder"]), _fmt(r["strength"]), f"{r['wins']:g}", f"{r['comparisons']:g}"]
                    for r in a["pairwise"]
                ],
            )
        )
    return tables


def clinician_review_lines(review: Mapping[str, Any]) -> list[str]:
    """The sentences of one linked review: who rated what, agreement, ratings vs localisation."""
    a = review.get("analysis") or {}
    ag = a.get("agreement") or {}
    lines = [
        f"Review {review.get('review')} ({review.get('status')}), dataset {review.get('dataset')}, seed "
        f"{review.get('seed')}: {a.get('answers', 0)} answers from {review.get('reviewers', ag.get('reviewers'))} "
        f"reviewer(s) on {review.get('images')} image(s); analysed {review.get('generated_at')}.",
        f"Agreement: Krippendorff's alpha (ordinal) {_fmt(ag.get('krippendorff_alpha_ordinal'))}, ICC(2,1) "
        f"{_fmt(ag.get('icc_2_1'))}, over {ag.get('units', 0)} rated units (image x arm x map type) "
        f"and {ag.get('reviewers', 0)} reviewers.",
    ]
    loc = a.get("localisation")
    if loc and loc.get("spearman_rho") is not None:
        lines.append(
            f"Ratings vs automatic localisation: Spearman rho {loc['spearman_rho']:.2f} "
            f"[{_f2(loc.get('ci_low'))}, {_f2(loc.get('ci_high'))}] between each arm x image's mean rating and "
            f"the AUROC of its attention map on the ROI mask, over {loc['units']} units."
        )
    elif loc:
        lines.append(f"Ratings vs automatic localisation: not computed ({loc.get('units', 0)} scored units).")
    return lines


def clinician_review_markdown(reviews: Sequence[Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    for rv in reviews:
        lines += ["", f"## Clinician review: {rv.get('title')}", "", CLINICIAN_NOTE, ""]
        lines += clinician_review_lines(rv)
        for title, head, body in clinician_review_tables(rv):
            lines += ["", f"{title}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def clinician_review_html(reviews: Sequence[Mapping[str, Any]]) -> list[str]:
    e = html.escape
    parts: list[str] = []
    for rv in reviews:
        parts.append(f"<h2>Clinician review: {e(str(rv.get('title')))}</h2><p>{e(CLINICIAN_NOTE)}</p>")
        parts += [f"<p>{e(line)}</p>" for line in clinician_review_lines(rv)]
        for title, head, body in clinician_review_tables(rv):
            parts.append(f"<h3>{e(title)}</h3><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body]
            parts.append("</table>")
    return parts


def markdown(
    meta: Mapping[str, Any],
    table: pd.DataFrame,
    verdicts: Mapping[str, DatasetVerdict],
    reviews: Sequence[Mapping[str, Any]] = (),
) -> str:
    lines = [f"# Study {meta['name']}", "", f"{len(table)} cells: {meta['summary']}", "", "## Verdicts", ""]
    lines += [f"- {v.sentence}" for v in verdicts.values()]
    for dataset, v in verdicts.items():
        head, body = _table_rows(table, dataset)
        lines += ["", f"## {dataset}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        loc_head, loc_body = _localisation_rows(table, dataset)
        if loc_body:
            lines += ["", "Localisation against the ROI masks. " + LOCALISATION_NOTE, ""]
            lines += ["| " + " | ".join(loc_head) + " |", "|" + "---|" * len(loc_head)]
            lines += ["| " + " | ".join(row) + " |" for row in loc_body]
        if v.flagged:
            lines += ["", "Collapsed arms (not ranked): " + ", ".join(f"{a} ({k})" for a, k in v.flagged.items())]
        for seed, comps in v.comparisons.items():
            lines += ["", f"Paired comparisons, seed {seed} ({PROTOCOL} probe {METRIC}, Holm-corrected):", ""]
            lines += [f"- {c['sentence']}" for c in comps]  # the sentence holds the difference, CI and p
    failed = table[table["status"] == "failed"]
    if len(failed):
        lines += ["", "## Failed cells", ""] + [f"- {r.cell}: {r.error}" for r in failed.itertuples()]
    lines += clinician_review_markdown(reviews)
    lines += [
        "",
        "## Reproduce",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"git commit: {meta.get('git_commit')}",
        "",
        "Data checksums:",
        "",
    ] + [f"- {k}: {v}" for k, v in (meta.get("data") or {}).items()]
    lines += ["", "Config:", "", "```json", json.dumps(meta["config"], indent=1), "```", ""]
    return "\n".join(lines)


def html_report(
    meta: Mapping[str, Any],
    table: pd.DataFrame,
    verdicts: Mapping[str, DatasetVerdict],
    curves: Mapping[str, Any],
    grids: Mapping[str, str] | None = None,
    reviews: Sequence[Mapping[str, Any]] = (),
) -> str:
    """One self-contained page: inline CSS and PNGs, no script, no external URL."""
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Study {e(meta['name'])}</title><style>",
        "body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}",
        "th{background:#f2f2f2}.verdict{background:#eef6f3;padding:.6em 1em;border-left:4px solid #2a9d8f}",
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}",
        "</style></head><body>",
        f"<h1>Study {e(meta['name'])}</h1>",
        f"<p>{e(meta['summary'])}</p>",
        "<h2>Verdicts</h2>",
    ]
    parts += [f"<p class='verdict'>{e(v.sentence)}</p>" for v in verdicts.values()]
    for dataset, v in verdicts.items():
        head, body = _table_rows(table, dataset)
        parts += [f"<h2>{e(dataset)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body]
        parts.append("</table>")
        loc_head, loc_body = _localisation_rows(table, dataset)
        if loc_body:
            parts += [
                f"<h3>Localisation against the ROI masks</h3><p>{e(LOCALISATION_NOTE)}</p><table><tr>"
                + "".join(f"<th>{e(h)}</th>" for h in loc_head)
                + "</tr>"
            ]
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in loc_body]
            parts.append("</table>")
        if v.flagged:
            parts.append(
                "<p><b>Collapsed arms (not ranked):</b> "
                + e(", ".join(f"{a} ({k})" for a, k in v.flagged.items()))
                + "</p>"
            )
        for title, png in (
            ("Probe accuracy", metric_figure(table, dataset)),
            ("Paired differences", forest_figure(v)),
            ("Learning curves", curves_figure(curves, dataset)),
            ("Feature maps (same test images, every arm)", (grids or {}).get(dataset)),
        ):
            if png:
                parts.append(
                    f"<h3>{e(title)}</h3><img alt='{e(title)} - {e(dataset)}' src='data:image/png;base64,{png}'>"
                )
    failed = table[table["status"] == "failed"]
    if len(failed):
        parts.append(
            "<h2>Failed cells</h2><ul>"
            + "".join(f"<li>{e(str(r.cell))}: {e(str(r.error))}</li>" for r in failed.itertuples())
            + "</ul>"
        )
    parts += clinician_review_html(reviews)
    parts += [
        "<h2>Reproduce</h2>",
        f"<pre>{e(meta['command'])}</pre>",
        f"<p>git commit: {e(str(meta.get('git_commit')))}</p><ul>",
    ]
    parts += [f"<li>{e(k)}: {e(str(val))}</li>" for k, val in (meta.get("data") or {}).items()]
    parts += ["</ul>", f"<pre>{e(json.dumps(meta['config'], indent=1))}</pre>", "</body></html>"]
    return "\n".join(parts)


def results_json(
    meta: Mapping[str, Any],
    table: pd.DataFrame,
    verdicts: Mapping[str, DatasetVerdict],
    reviews: Sequence[Mapping[str, Any]] = (),
) -> str:
    rows = json.loads(table.to_json(orient="records"))
    return json.dumps(
        {
            "study": meta,
            "cells": rows,
            "verdicts": {k: v.to_dict() for k, v in verdicts.items()},
            "clinician_reviews": list(reviews),
        },
        indent=1,
        default=str,
    )
