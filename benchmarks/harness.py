"""The one measurement and reporting helper every benchmark uses.

Memory, one unit everywhere: ``peak_mib``, the peak PSS (proportional set size) of the measured process
*tree* (the process, and every descendant: Ray's GCS, raylet, workers, Serve replicas), sampled, in MiB
(2**20 bytes). PSS counts a shared page (the object store, torch's libraries) once across the tree,
where RSS would count it in every worker.

Sampling PSS reads every process's smaps (a few ms each): the default interval is 0.5 s so the sampler
does not load the machine it measures; pass a shorter one for short runs.

Time: ``timed`` (wall seconds of a call, ``time.perf_counter``); a child run's ``wall_s``.

Figures against anchors: ``compare(...)`` makes one figure dict: the project's value and the named
anchor's (medians of the repeats), and ``ratio`` = the median of the per-repeat ratios value/anchor
(the anchor and the project alternate per repeat, so a repeat's pair saw the same machine load; when the
two lists differ in length the ratio of the medians is used instead, and ``paired`` says which). With
6 or more paired repeats ``ratio_ci`` is a distribution-free confidence interval of that median (order
statistics of the per-repeat ratios, coverage ``ratio_ci_level`` >= 0.95 from the binomial), so a
ratio near 1 says whether the repeats support a difference at all.
``better`` says which way is good ("higher" for rates, "lower" for seconds and MiB). ``write_results``
writes ``.bench/<name>.json`` with the figures, the command and the machine; ``benchmarks/run_all.py``
(``make bench``) gathers every benchmark's figures into ``.bench/summary.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

MIB = 2**20
REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / ".bench"
T = TypeVar("T")


# --- memory ---------------------------------------------------------------------------------------------


def tree_pss(root: psutil.Process) -> int:
    """Bytes of proportional set size of ``root`` and all its descendants (0 when ``root`` is gone)."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)  # PSS where the OS has it (Linux)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total


class PeakPss:
    """Samples the PSS of a process tree in a thread; ``peak_mib`` after (or while) it runs.

    ``with PeakPss() as mem: work()`` measures this process and everything it starts. ``reset()``
    starts a new peak (e.g. after a warm-up), ``now_mib()`` is one sample.
    """

    def __init__(self, pid: int | None = None, interval_s: float = 0.5):
        self.root = psutil.Process(pid or os.getpid())
        self.interval_s = interval_s
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now_mib(self) -> float:
        return tree_pss(self.root) / MIB

    def sample(self) -> None:
        self._peak = max(self._peak, tree_pss(self.root))

    def reset(self) -> None:
        self._peak = 0
        self.sample()

    @property
    def peak_mib(self) -> float:
        return self._peak / MIB

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakPss:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


# --- time -----------------------------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``(fn(), wall seconds)``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def tree_cpu_seconds(root: psutil.Process) -> float:
    """User + system CPU seconds of ``root`` and its live descendants."""
    total = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total


def measure_child(
    script: Path | str,
    args: Sequence[str],
    env: dict[str, str] | None = None,
    interval_s: float = 0.5,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run ``python script _child ARGS`` in a fresh process; its result is the last JSON line it prints.

    Adds ``peak_mib`` (peak PSS of the child's whole tree), ``wall_s`` (the child's wall time, start-up
    and imports included) and ``cpu_s`` (CPU seconds of the tree, sampled: a lower bound).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(script), "_child", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_ADDRESS": "", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", **(env or {})},
    )
    root = psutil.Process(proc.pid)
    peak, cpu = 0, 0.0
    # read stdout in a thread: a chatty child must not block on a full pipe while we sample
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_pss(root))
        cpu = max(cpu, tree_cpu_seconds(root))
        if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
            proc.kill()
            break
        time.sleep(interval_s)
    proc.wait()
    reader.join()
    wall = time.perf_counter() - t0
    out = "".join(chunks)
    if proc.returncode != 0:
        raise RuntimeError(f"child {list(args)} failed (exit {proc.returncode}):\n{out[-4000:]}")
    # the child's result is its last JSON line (Ray may forward worker log lines after it)
    line = next((ln for ln in reversed(out.strip().splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"child {list(args)} printed no JSON result:\n{out[-4000:]}")
    result: dict[str, Any] = json.loads(line)
    result["peak_mib"] = round(peak / MIB, 1)
    result["wall_s"] = round(wall, 3)
    result["cpu_s"] = round(cpu, 2)
    return result


# --- figures and anchors ----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """A distribution-free confidence interval of the median: the k-th smallest and k-th largest value,
    with the largest k whose coverage 1 - 2 P(Binomial(n, 1/2) <= k - 1) is still >= ``level``
    (the sign-test interval). Returns (low, high, coverage), or None when n is too small for ``level``
    (n < 6 at 0.95)."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    best = None
    tail = 0.0  # P(Bin(n, 1/2) <= k - 1)
    for k in range(1, n // 2 + 1):
        tail += math.comb(n, k - 1) / 2**n
        coverage = 1 - 2 * tail
        if coverage < level:
            break
        best = (xs[k - 1], xs[n - k], coverage)
    return best


def compare(
    figure: str,
    unit: str,
    values: Sequence[float],
    anchor: str | None,
    anchor_values: Sequence[float] | None = None,
    *,
    better: str = "higher",
    note: str = "",
) -> dict[str, Any]:
    """One figure: the medians of the project's and the anchor's repeats and their ratio (value / anchor).

    ``anchor=None`` (no anchor_values) is a figure with no anchor: ``ratio`` is None.
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
    if not values:
        raise ValueError(f"{figure}: no values")
    out: dict[str, Any] = {
        "figure": figure,
        "unit": unit,
        "value": round(median(values), 6),
        "repeats": len(values),
        "runs": [round(float(v), 6) for v in values],
        "anchor": anchor,
        "anchor_value": None,
        "ratio": None,
        "better": better,
    }
    if anchor is not None and anchor_values:
        out["anchor_value"] = round(median(anchor_values), 6)
        out["anchor_runs"] = [round(float(v), 6) for v in anchor_values]
        if len(anchor_values) == len(values) and all(a != 0 for a in anchor_values):
            ratios = [v / a for v, a in zip(values, anchor_values, strict=True)]
            out["ratio"] = round(median(ratios), 4)
            out["paired"] = True
            ci = median_ci(ratios)
            if ci is not None:
                out["ratio_ci"] = [round(ci[0], 4), round(ci[1], 4)]
                out["ratio_ci_level"] = round(ci[2], 4)
        elif out["anchor_value"]:
            out["ratio"] = round(out["value"] / out["anchor_value"], 4)
            out["paired"] = False
    if note:
        out["note"] = note
    return out


def start_ray(ray_defaults: bool = False, **params: Any) -> None:
    """A local Ray cluster as pretextlab's commands start one (``pretextlab.cluster.start_local_ray``: its
    worker pool keeps 2 idle workers per CPU for the half-CPU data tasks), or with Ray's own worker-pool
    defaults (``ray_defaults``, a benchmark's ``--ray-defaults``: the figures before that change)."""
    import ray

    params = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False, **params}
    if ray_defaults:
        ray.init(**params)
    else:
        from pretextlab.cluster import start_local_ray

        start_local_ray(**params)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """What a figure was measured on: CPUs, memory, load, Python, git commit, date."""
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        uptime = ""
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "uptime": uptime,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def command_line() -> str:
    return " ".join(["python", os.path.relpath(sys.argv[0], REPO) if sys.argv else "?", *sys.argv[1:]])


def write_results(name: str, figures: list[dict[str, Any]], out: Path | str | None = None, **extra: Any) -> Path:
    """``.bench/<name>.json`` (or ``out``): benchmark name, command, machine, figures, then ``extra``."""
    path = Path(out) if out else BENCH / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "command": command_line(), "machine": machine(), "figures": figures, **extra}
    path.write_text(json.dumps(doc, indent=1, default=str))
    return path


def format_figure(f: dict[str, Any]) -> str:
    """One line: figure, value, anchor, ratio."""
    value = f"{f['value']:.4g} {f['unit']}"
    if f.get("anchor") is None:
        return f"{f['figure']}: {value} (no anchor)"
    ci = f" [{f['ratio_ci'][0]}, {f['ratio_ci'][1]}]" if f.get("ratio_ci") else ""
    return (
        f"{f['figure']}: {value} vs {f['anchor']} {f['anchor_value']:.4g} -> ratio {f['ratio']}{ci} "
        f"({f['better']} is better; median of {f['repeats']})"
    )


def print_figures(figures: list[dict[str, Any]]) -> None:
    for f in figures:
        print("  " + format_figure(f), flush=True)
