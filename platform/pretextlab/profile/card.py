"""The recommendation card: a short Markdown card and a self-contained HTML card (inline PNGs, no script).

Renders the report dict of ``pretextlab recommend`` (profile, recommendation, reasons, notes): the
locality curve (informedness per window size with its CI, and the whole image) and a few example images.
Pure; matplotlib's Agg backend only.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np


def _fmt_ci(ci: Any) -> str:
    return "n/a" if ci is None else f"{ci[0]:.2f}-{ci[1]:.2f}"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The few lines the CLI prints: sample, profile, recommendation, reasons."""
    rec = report["recommendation"]
    s = report["sample"]
    lines = [
        f"recommend {report['store']}: {s['profiled']} {report['modality']} image(s) sampled of "
        f"{s['rows_in_store']} rows ({s['labelled']} labelled), {report['seconds']:.1f} s",
    ]
    loc = report.get("locality")
    if loc is None:
        lines.append("locality: not measured (no labels): noise profile only")
    else:
        lines.append(f"locality index {loc['index']:.2f} (95 % CI {_fmt_ci(loc['index_ci'])}), 0 = global, 1 = local")
    n = report["noise"]
    if n["measured"]:
        lines.append(
            f"noise ({n['model']}): {n['statistic']} {n['value']:.3g} -> {'strong' if n['strong'] else 'weak'}"
        )
    else:
        lines.append(f"noise ({n['model']}): not assessed: {n['note']}")
    extra = " (borderline)" if rec["borderline"] else ""
    lines.append(f"recommendation: {rec['family']} -> {rec['objective']}{extra} [{rec['basis']}]")
    lines += [f"  - {r['text']}" for r in rec["reasons"]]
    if rec["avoid"]:
        lines.append(f"  avoid: {', '.join(rec['avoid'])}")
    lines += [f"  note: {t}" for t in report.get("notes", [])]
    return lines


def markdown_card(report: dict[str, Any]) -> str:
    """The short Markdown card."""
    rec = report["recommendation"]
    out = [f"# Recommendation for `{report['store']}`", ""]
    out.append(
        f"**{rec['family']} -> `{rec['objective']}`**"
        + (" (borderline: confirm with `--pilot`)" if rec["borderline"] else "")
        + f", based on {rec['basis']}."
        + (f" Alternative: `{rec['alternative']}`." if rec["alternative"] else "")
        + (f" Avoid: {', '.join(rec['avoid'])}." if rec["avoid"] else "")
    )
    out += ["", "## Why", ""] + [f"- {r['text']}" for r in rec["reasons"]]
    cfg = rec["config"]
    out += ["", "## Starting config", "", f"`{cfg['objective']}`: {cfg['why']}", "", "```"]
    out += [f"{k}={v}" for k, v in cfg["overrides"].items()]
    out += ["```", "", "## Profile", ""]
    s = report["sample"]
    out.append(
        f"{s['profiled']} {report['modality']} images of shape {tuple(s['image_shape'])} sampled (seed {s['seed']}) "
        f"from {s['rows_in_store']} rows; {s['labelled']} labelled."
    )
    if s.get("slide_patch_px"):
        mpp = s.get("slide_mpp")
        out.append(
            f"Slides: {s['slide_patch_px']} px level-0 tissue patches (up to {s['slide_patches_per_slide']} a slide), "
            + (f"measured at {mpp:g} µm/px." if mpp else "pixel size unknown (the slides carry no mpp).")
        )
    loc = report.get("locality")
    if loc is not None:
        out += [
            "",
            "| window (fraction of side) | px | balanced acc. (95 % CI) | informedness (95 % CI) |",
            "|---|---|---|---|",
        ]
        for sc in [*loc["scales"], loc["whole_image"]]:
            name = "whole image" if sc["fraction"] == 1.0 else f"{sc['fraction']:g}"
            out.append(
                f"| {name} | {sc['window_px']} | {sc['balanced_accuracy']:.3f} ({_fmt_ci(sc['balanced_accuracy_ci'])}) "
                f"| {sc['informedness']:.3f} ({_fmt_ci(sc['informedness_ci'])}) |"
            )
        out += ["", f"Probe: {loc['probe']}; bootstrap over {loc['bootstrap_units']} {loc['bootstrap_unit']}s."]
        out += [f"- {t}" for t in loc["notes"]]
    else:
        out += ["", "**Partial profile: no labels, so the signal's locality was not measured (noise only).**"]
    n = report["noise"]
    out += [
        "",
        f"Noise ({n['model']}): "
        + (
            f"{n['statistic']} = {n['value']:.3g} (strong at >= {n['threshold']:g})"
            if n["measured"]
            else f"not assessed: {n['note']}"
        ),
    ]
    if n.get("note") and n["measured"]:
        out.append(f"({n['note']})")
    if report.get("notes"):
        out += ["", "Notes:"] + [f"- {t}" for t in report["notes"]]
    if report.get("pilot"):
        out += ["", "## Pilot", "", report["pilot"]["summary"]]
        arms = report["pilot"].get("arms") or []
        if arms:
            out += [
                "",
                "| arm | family | linear probe, balanced accuracy [95 % CI] | collapse |",
                "|---|---|---|---|",
            ]
            for a in arms:
                ci = f" [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]" if a.get("ci95") else " (no CI)"
                out.append(
                    f"| {a['arm']} | {a['family']} | {a['linear_bal_acc']:.3f}{ci} | {a.get('collapse') or '-'} |"
                )
    out += ["", f"Rule: {rec['rule_source']}. See docs/recommend.md.", ""]
    return "\n".join(out)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def profile_plot(locality: dict[str, Any] | None) -> str | None:
    """Informedness vs window fraction (CI bars) with the whole image and the index marked; base64 PNG."""
    if locality is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [*locality["scales"], locality["whole_image"]]
    x = np.array([s["fraction"] for s in scales])
    y = np.array([s["informedness"] for s in scales])
    lo = np.array([s["informedness_ci"][0] for s in scales])
    hi = np.array([s["informedness_ci"][1] for s in scales])
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(locality["index_fraction"], color="tab:orange", ls="--", lw=0.8, label="index window")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:g}" if v < 1 else "whole" for v in x])
    ax.set_xlabel("window (fraction of image side)")
    ax.set_ylabel("probe informedness")
    ax.set_ylim(-0.2, 1.0)
    ax.legend(fontsize=7)
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def example_strip(examples: list[tuple[str, np.ndarray]]) -> str | None:
    """A row of example images with their labels; base64 PNG."""
    if not examples:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(examples), figsize=(1.6 * len(examples), 1.9))
    axes = np.atleast_1d(axes)
    for ax, (title, im) in zip(axes, examples, strict=True):
        a = im[..., 0] if im.shape[-1] == 1 else im[..., :3]
        ax.imshow(a, cmap="gray" if a.ndim == 2 else None)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def html_card(report: dict[str, Any], examples: list[tuple[str, np.ndarray]]) -> str:
    """The Markdown card's content as one self-contained HTML page, plus the profile plot and examples."""
    body = []
    for line in markdown_card(report).splitlines():
        esc = html.escape(line)
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.startswith("```"):
            continue
        elif esc:
            body.append(f"<p>{esc}</p>")
    text = "\n".join(body)
    text = text.replace("</p>\n<tr>", "</p>\n<table><tr>").replace("</tr>\n<p>", "</tr></table>\n<p>")
    figs = []
    plot = profile_plot(report.get("locality"))
    if plot:
        figs.append(f'<h2>Locality profile</h2><img alt="locality profile" src="data:image/png;base64,{plot}">')
    strip = example_strip(examples)
    if strip:
        figs.append(f'<h2>Example images</h2><img alt="examples" src="data:image/png;base64,{strip}">')
    style = "body{font-family:sans-serif;max-width:52em;margin:2em auto}td{border:1px solid #ccc;padding:2px 6px}"
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>pretextlab recommend</title>'
        f"<style>{style}</style></head><body>\n{text}\n{''.join(figs)}\n</body></html>\n"
    )
