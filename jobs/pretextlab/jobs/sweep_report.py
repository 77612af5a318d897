"""What a sweep shows people: its status file, the live table, the best trial and the end-of-sweep
summary (Markdown plus PNG charts). No Ray here, so ``pretextlab sweep status`` starts fast and works
on any machine that can read the sweep's storage."""

from __future__ import annotations

import datetime as _dt
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: the driver's status file in the sweep folder (atomic rewrites; read by ``pretextlab sweep status``)
STATUS_FILE = "pretextlab-sweep.json"
SUMMARY_DIR = "summary"
STATES = ("RUNNING", "PENDING", "DONE", "STOPPED", "ERROR")


@dataclass
class TrialRow:
    """One trial in the status file."""

    id: str
    dir: str
    config: dict[str, Any] = field(default_factory=dict)
    state: str = "PENDING"  # PENDING | RUNNING | DONE | STOPPED (early, by the scheduler or budget) | ERROR
    step: int | None = None
    metric: float | None = None  # the last reported value of the sweep's metric
    metric_step: int | None = None
    best: float | None = None  # the best value it reported
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def read_status(sweep_uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    from pretextlab.storage import fs as sfs

    try:
        return json.loads(sfs.read_bytes(sfs.join(sweep_uri, STATUS_FILE), storage_options))
    except (FileNotFoundError, OSError):
        return None


# -- the table -----------------------------------------------------------------------------------
def fmt_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def short(path: str) -> str:
    """``train.schedule.lr`` -> ``lr``; ``objective.target_scale`` -> ``target_scale``."""
    return path.rsplit(".", 1)[-1]


def _state(row: dict[str, Any], steps: int) -> str:
    if row["state"] == "STOPPED":
        return f"stopped @{row.get('step') or 0}/{steps}"
    if row["state"] == "ERROR":
        return "error: " + (row.get("error") or "")[:60]
    return row["state"].lower()


def render_table(status: dict[str, Any]) -> str:
    """The live table: trial, its hyperparameters, step, metric, state; a header line of counts."""
    rows = status.get("trials") or []
    space = status.get("space") or []
    metric, steps = status.get("metric", "metric"), int(status.get("steps") or 0)
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    parts = [f"{counts[s]} {s.lower()}" for s in STATES if counts[s]]
    head = (
        f"sweep {status.get('name')}: {len(rows)} trial(s) ({', '.join(parts) or 'none yet'}) | "
        f"{metric} ({status.get('mode', 'max')}) | {status.get('status', 'running')}, "
        f"updated {status.get('updated', '?')}"
    )
    cols = ["trial", *[short(p) for p in space], "step", metric, "state"]
    body = [
        [
            r["id"],
            *[fmt_value(r["config"].get(p)) for p in space],
            "-" if r.get("step") is None else f"{r['step']}/{steps}",
            fmt_value(r.get("metric")),
            _state(r, steps),
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [head, line(cols), line(["-" * w for w in widths])] + [line(b) for b in body]
    best = status.get("best")
    if best:
        enc = f", encoder {best['encoder']}" if best.get("encoder") else ""
        out.append(f"best: {best['trial']} {metric} {fmt_value(best['metric'])}{enc}")
    return "\n".join(out)


# -- curves, best trial --------------------------------------------------------------------------
def read_curve(
    sweep_uri: str, trial_dir: str, metric: str, storage_options: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The trial's reports from Tune's ``result.json`` (one JSON line per report), one per step (the
    last wins where a restarted trial reported a step again)."""
    from pretextlab.storage import fs as sfs

    try:
        text = sfs.read_bytes(sfs.join(sweep_uri, trial_dir, "result.json"), storage_options).decode()
    except (FileNotFoundError, OSError):
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(rec.get("step"), (int, float)):
            by_step[int(rec["step"])] = {k: v for k, v in rec.items() if k != "config"}
    return [by_step[s] for s in sorted(by_step)]


def finalize(
    rows: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]], metric: str, steps: int
) -> list[dict[str, Any]]:
    """Rows with step and metric taken from the result files (the source of truth after restores)."""
    out = []
    for row in rows:
        row = dict(row)
        curve = curves.get(row["id"]) or []
        if curve and int(curve[-1]["step"]) >= (row.get("step") or 0):  # not a file a crash cut short
            row["step"] = int(curve[-1]["step"])
            values = [(int(r["step"]), float(r[metric])) for r in curve if _finite(r.get(metric))]
            if values:
                row["metric_step"], row["metric"] = values[-1]
        if row["state"] in ("RUNNING", "PENDING", "DONE", "STOPPED") and row.get("step") is not None:
            if row["state"] in ("DONE", "STOPPED"):
                row["state"] = "DONE" if row["step"] >= steps else "STOPPED"
        out.append(row)
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pick_best(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The trial with the best last metric among those that ran every step; else among all with a metric."""
    sign = 1.0 if mode == "max" else -1.0
    for pool in ([r for r in rows if r["state"] == "DONE"], [r for r in rows if r["state"] != "ERROR"]):
        scored = [r for r in pool if _finite(r.get("metric"))]
        if scored:
            return max(scored, key=lambda r: (sign * r["metric"], r.get("step") or 0))
    return None


def reproduce_overrides(config: dict[str, Any]) -> str:
    """``key=value`` overrides that turn the base pretraining config into the trial's."""

    def val(v: Any) -> str:
        return (
            json.dumps(v)
            if isinstance(v, (list, tuple, bool)) or v is None
            else (f"{v:.6g}" if isinstance(v, float) else str(v))
        )

    return " ".join(f"{k}={val(v)}".replace(" ", "") for k, v in config.items())


# -- the summary ---------------------------------------------------------------------------------
def write_summary(
    sweep_uri: str,
    status: dict[str, Any],
    curves: dict[str, list[dict[str, Any]]],
    log_axes: set[str] | None = None,
    top: int = 5,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """``<sweep>/summary/summary.md`` plus ``metric_vs_<hyperparameter>.png`` and ``learning_curves.png``.
    Returns the summary's URI."""
    from pretextlab.jobs import sweep_plots
    from pretextlab.storage import fs as sfs

    metric, mode = status["metric"], status["mode"]
    rows = status["trials"]
    space = status["space"]
    best = status.get("best") or {}
    sign = 1.0 if mode == "max" else -1.0
    scored = sorted([r for r in rows if _finite(r.get("metric"))], key=lambda r: -sign * r["metric"])
    unscored = [r for r in rows if not _finite(r.get("metric"))]
    with tempfile.TemporaryDirectory(prefix="pretextlab-summary-") as tmp:
        folder = Path(tmp)
        images: list[tuple[str, str]] = []
        for path in space:
            pts = [
                (r["config"].get(path), r["metric"], r["state"] == "STOPPED", r["id"] == best.get("trial"))
                for r in scored
                if r["config"].get(path) is not None
            ]
            if not pts:
                continue
            xs = [p[0] if not isinstance(p[0], list) else str(p[0]) for p in pts]
            name = f"metric_vs_{path}.png"
            sweep_plots.scatter(
                folder / name,
                xs,
                [p[1] for p in pts],
                title=f"{metric} vs {path}",
                xlabel=path + (" (log)" if path in (log_axes or set()) else ""),
                ylabel=metric,
                log_x=path in (log_axes or set()),
                hollow=[p[2] for p in pts],
                best=next((i for i, p in enumerate(pts) if p[3]), None),
            )
            images.append((f"{metric} vs {path}", name))
        series: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
        for r in scored[:top]:
            curve = [(int(c["step"]), float(c[metric])) for c in curves.get(r["id"], []) if _finite(c.get(metric))]
            if curve:
                series[r["id"]] = ([p[0] for p in curve], [p[1] for p in curve])
        if series:
            sweep_plots.lines(
                folder / "learning_curves.png",
                series,
                title=f"{metric} of the top {len(series)} trials",
                xlabel="step",
                ylabel=metric,
            )
            images.append((f"learning curves ({metric}, top {len(series)})", "learning_curves.png"))
        loss_series: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
        for r in scored[:top]:
            curve = [(int(c["step"]), float(c["loss"])) for c in curves.get(r["id"], []) if _finite(c.get("loss"))]
            if curve:
                loss_series[r["id"]] = ([p[0] for p in curve], [p[1] for p in curve])
        if loss_series:
            sweep_plots.lines(
                folder / "loss_curves.png",
                loss_series,
                title="training loss of the top trials",
                xlabel="step",
                ylabel="loss",
            )
            images.append(("training loss (top trials)", "loss_curves.png"))
        (folder / "summary.md").write_text(_markdown(status, scored + unscored, images))
        target = sfs.join(sweep_uri, SUMMARY_DIR)
        for f in sorted(folder.iterdir()):  # images first, the summary last
            if f.name != "summary.md":
                sfs.atomic_write_bytes(sfs.join(target, f.name), f.read_bytes(), storage_options)
        sfs.atomic_write_bytes(sfs.join(target, "summary.md"), (folder / "summary.md").read_bytes(), storage_options)
    return sfs.join(target, "summary.md")


def _markdown(status: dict[str, Any], rows: list[dict[str, Any]], images: list[tuple[str, str]]) -> str:
    metric, mode, steps, space = status["metric"], status["mode"], int(status["steps"]), status["space"]
    best = status.get("best")
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    lines = [
        f"# Sweep {status['name']}",
        "",
        f"{len(rows)} trials of `{status.get('pretrain', '?')}` ({status.get('objective', '?')}, "
        f"{status.get('modality', '?')}), {steps} steps each at most; metric `{metric}` ({mode}); "
        f"searcher {status.get('searcher', '?')}, scheduler {status.get('scheduler', '?')}.",
        f"Ran to the end: {counts['DONE']}; stopped early: {counts['STOPPED']}; errors: {counts['ERROR']}.",
        "",
    ]
    if best:
        chosen = f", chosen for {status.get('modality')}." if best.get("chosen") else "."
        value = fmt_value(best["metric"])
        lines += [
            f"**Best: trial `{best['trial']}`**, {metric} {value} at step {best.get('step')}.",
            f"Encoder: `{best.get('encoder') or 'not exported'}`{chosen}",
            f"Reproduce with `pretextlab pretrain <pretraining config> {reproduce_overrides(best['config'])}`.",
            "",
        ]
    else:
        lines += [f"No trial reported `{metric}`: nothing was exported.", ""]
    cols = ["rank", "trial", *space, "step", metric, "state"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, r in enumerate(rows, 1):
        mark = " (best)" if best and r["id"] == best["trial"] else ""
        cells = [
            str(i) if _finite(r.get("metric")) else "-",
            f"`{r['id']}`{mark}",
            *[fmt_value(r["config"].get(p)) for p in space],
            "-" if r.get("step") is None else str(r["step"]),
            fmt_value(r.get("metric")),
            _state(r, steps).replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for title, name in images:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    lines += ["Per-trial TensorBoard: `tensorboard --logdir " + status.get("uri", ".") + "`.", ""]
    return "\n".join(lines)
