"""The one measurement helper benchmarks share: run a child process, sample the peak PSS of its whole
process tree (Ray's processes included) in MB, and read the JSON line it prints last.

PSS (proportional set size) counts shared pages (the object store, torch's libraries) once across the
tree, where RSS would count them in every worker. One unit everywhere: MB = 10**6 bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

MB = 1e6


def tree_pss(parent: psutil.Process) -> int:
    """Bytes of proportional set size of ``parent`` and all its descendants."""
    total = 0
    try:
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure_child(
    script: Path, args: list[str], env: dict[str, str] | None = None, interval_s: float = 0.5
) -> dict[str, Any]:
    """Run ``python script _child ARGS``; its last stdout line (JSON) plus ``peak_pss_mb``."""
    proc = subprocess.Popen(
        [sys.executable, str(script), "_child", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_ADDRESS": "", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", **(env or {})},
    )
    parent = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(parent))
        time.sleep(interval_s)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out[-4000:]}")
    # the child's result is its last JSON line (Ray may forward worker log lines after it)
    line = next((ln for ln in reversed(out.strip().splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"child {args} printed no JSON result:\n{out[-4000:]}")
    result = json.loads(line)
    result["peak_pss_mb"] = peak / MB
    return result
