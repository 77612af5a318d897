"""Every benchmark, one after another, and one summary: ``make bench`` (quick) / ``make bench FULL=1``.

    python benchmarks/run_all.py                       # quick: small sizes, 1 repeat
    python benchmarks/run_all.py --full                # the long versions (medians of >= 3 where they repeat)
    python benchmarks/run_all.py --only ingest,dicom_wsi
    python benchmarks/run_all.py --docs docs/performance.md   # only rewrite the doc's table from .bench/summary.md

Each benchmark runs as its own process with the arguments below and writes ``.bench/<name>.json``
through benchmarks/harness.py; this script gathers each one's figures (value, named anchor, ratio =
median of the per-repeat ratios) into ``.bench/summary.json`` with the commands, the machine (CPUs,
load, uptime), the git commit and the date, and a Markdown table into ``.bench/summary.md`` (what
docs/performance.md holds). A benchmark that fails is recorded as failed (with its output's tail) and
the others still run; the exit status is 1 if any failed. GPU-only benchmarks (gpu_objectives) are
skipped without CUDA.

Not run here: ``phantom_examples.py`` (it draws docs/img/benchmark, it measures nothing) and
``recommend.py grid`` (a validation table of the recommendation rule, not a performance figure).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, REPO, machine


@dataclass(frozen=True)
class Bench:
    name: str  # also the .bench/<name>.json it writes
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...]
    gpu: bool = False


BENCHMARKS = [
    Bench(
        "dicom_wsi",
        "dicom_wsi.py",
        ("--frames", "100,2500", "--tiles", "200", "--repeats", "1"),
        ("--frames", "100,10000", "--tiles", "500", "--repeats", "3"),
    ),
    Bench(
        "ingest",
        "ingest.py",
        (
            "--size",
            "4096",
            "--repeats",
            "1",
            "--scaling-slides",
            "2",
            "--scaling-size",
            "1024",
            "--scaling-repeats",
            "1",
            "--collection-images",
            "200",
        ),
        ("--repeats", "3"),
    ),
    Bench(
        "pipeline",
        "pipeline.py",
        (
            "--parts",
            "a",
            "b",
            "c",
            "--repeats",
            "1",
            "--slides",
            "2",
            "--size",
            "2048",
            "--small",
            "1",
            "--large",
            "4",
            "--c-steps",
            "20",
            "--s3-slides",
            "1",
        ),
        ("--parts", "a", "b", "c", "--repeats", "3"),
    ),
    Bench("planning", "planning.py", ("--slides", "500", "--repeats", "1"), ("--repeats", "3")),
    Bench(
        "objectives",
        "objectives.py",
        ("--objectives", "simclr,mae", "--steps", "3", "--repeats", "1"),
        ("--repeats", "3"),
    ),
    Bench(
        "serving",
        "serving.py",
        ("--quick", "--seconds", "2", "--warmup", "0.5", "--anchor-seconds", "1"),
        (),
    ),
    Bench("sweep", "sweep.py", ("--trials", "1", "--steps", "4", "--repeats", "1"), ("--repeats", "3")),
    Bench("study", "study.py", ("--steps", "4", "--repeats", "1"), ("--repeats", "3")),
    Bench("review", "review.py", ("--reviewers", "5", "--cases", "5", "--db", "sqlite"), ()),
    Bench(
        "recommend-scaling",
        "recommend.py",
        ("scaling", "--sizes", "200,1000", "--sample", "64"),
        ("scaling",),
    ),
    Bench("learning", "learning.py", ("--objectives", "simclr", "--no-control", "--n-test", "128"), ()),
    Bench(
        "dino_small_scale",
        "dino_small_scale.py",
        ("--steps", "10", "--items", "128", "--arm", "ours", "--arm", "lightly"),
        ("--arm", "ours", "--arm", "lightly", "--arm", "simclr"),
    ),
    Bench(
        "phantom_controls",
        "phantom_controls.py",
        (
            "--modalities",
            "ultrasound",
            "--localities",
            "1",
            "--noises",
            "0",
            "--items",
            "100",
            "--train",
            "100",
            "--epochs",
            "1",
            "--depths",
            "4",
        ),
        (),
    ),
    Bench("gpu_objectives", "gpu_objectives.py", ("--steps", "5"), ("--steps", "20"), gpu=True),
]


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def run_one(b: Bench, full: bool, timeout_s: float) -> dict[str, Any]:
    args = list(b.full if full else b.quick)
    cmd = [sys.executable, str(Path("benchmarks") / b.script), *args]
    shown = " ".join(["python", f"benchmarks/{b.script}", *args])
    out_json = BENCH / f"{b.name}.json"
    started = time.time()
    print(f"\n=== {b.name}: {shown}", flush=True)
    row: dict[str, Any] = {"name": b.name, "command": shown}
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, rc = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout_s:.0f} s", -1
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
    row["seconds"] = round(time.time() - started, 1)
    tail = [ln for ln in output.strip().splitlines() if ln.strip()][-8:]
    print("\n".join("    " + ln for ln in tail), flush=True)
    fresh = out_json.exists() and out_json.stat().st_mtime >= started
    if rc != 0 or not fresh:
        row["status"] = "failed"
        row["exit_code"] = rc
        row["output_tail"] = output[-3000:]
        row["figures"] = []
        return row
    doc = json.loads(out_json.read_text())
    row["status"] = "ok"
    row["results"] = str(out_json.relative_to(REPO))
    row["figures"] = doc.get("figures", [])
    return row


def markdown(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    lines = [
        f"Mode: **{summary['mode']}** (`{summary['command']}`), {summary['date']}, commit `{m['git_commit'][:10]}`, "
        f"total {summary['seconds'] / 60:.1f} min.",
        f"Machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, {m['platform']}; "
        f"`uptime` at the start: `{summary['uptime_at_start']}`; at the end: `{m['uptime']}`.",
        "",
        "| benchmark | figure | value | anchor | anchor value | ratio | better | repeats |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["benchmarks"]:
        if row["status"] != "ok":
            lines.append(f"| {row['name']} | {row['status']} | | | | | | |")
            continue
        for f in row["figures"]:
            anchor = f.get("anchor") or "-"
            av = "-" if f.get("anchor_value") is None else f"{f['anchor_value']:.4g}"
            ratio = "-" if f.get("ratio") is None else f"{f['ratio']:.3g}"
            lines.append(
                f"| {row['name']} | {f['figure']} | {f['value']:.4g} {f['unit']} | {anchor} | {av} | {ratio} | "
                f"{f['better']} | {f['repeats']} |"
            )
    lines += ["", "Commands:", ""]
    lines += [
        f"- `{row['name']}`: `{row['command']}` ({row['seconds']:.0f} s, {row['status']})"
        for row in summary["benchmarks"]
    ]
    return "\n".join(lines) + "\n"


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def update_docs(doc: Path, table: str) -> None:
    """Replace what lies between the two markers in ``doc`` with ``table``."""
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{table}{END}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the long versions")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (quick 1800, full 7200)")
    ap.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: gather the figures of the .bench/<name>.json already there (each with its own command)",
    )
    ap.add_argument("--docs", type=Path, help="write the last .bench/summary.md into this doc's marked table")
    args = ap.parse_args()
    if args.docs:
        update_docs(args.docs, (BENCH / "summary.md").read_text())
        print(f"-> {args.docs}")
        return 0
    names = [b.name for b in BENCHMARKS]
    only = [n for n in args.only.split(",") if n]
    unknown = set(only) - set(names)
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(names)}")
    BENCH.mkdir(exist_ok=True)
    start_machine = machine()
    t0 = time.time()
    cuda = has_cuda()
    rows: list[dict[str, Any]] = []

    def write_summary() -> dict[str, Any]:  # after every benchmark: a stopped run keeps what it measured
        summary = {
            "mode": "collected" if args.collect else ("full" if args.full else "quick"),
            "command": " ".join(["python", "benchmarks/run_all.py", *sys.argv[1:]]),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - t0, 1),
            "uptime_at_start": start_machine["uptime"],
            "machine": machine(),
            "benchmarks": rows,
        }
        (BENCH / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (BENCH / "summary.md").write_text(markdown(summary))
        return summary

    summary = write_summary()
    for b in BENCHMARKS:
        if only and b.name not in only:
            continue
        if args.collect:
            path = BENCH / f"{b.name}.json"
            if not path.exists():
                rows.append({"name": b.name, "status": "not run", "command": "", "seconds": 0, "figures": []})
                continue
            doc = json.loads(path.read_text())
            rows.append(
                {
                    "name": b.name,
                    "status": "ok",
                    "command": doc.get("command", ""),
                    "seconds": 0,
                    "date": doc.get("machine", {}).get("date"),
                    "results": str(path.relative_to(REPO)),
                    "figures": doc.get("figures", []),
                }
            )
        elif b.gpu and not cuda:
            rows.append({"name": b.name, "status": "skipped (no CUDA)", "command": "", "seconds": 0, "figures": []})
        else:
            rows.append(run_one(b, args.full, args.timeout or (7200 if args.full else 1800)))
        summary = write_summary()
    print(f"\n-> {BENCH / 'summary.json'}, {BENCH / 'summary.md'} ({summary['seconds'] / 60:.1f} min)")
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
