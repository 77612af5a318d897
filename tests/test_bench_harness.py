"""The benchmark harness (one memory unit, figures against anchors, the summary) and the GPU check's CPU
dry run (issue 18 items 6 and 7). Fast, no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import harness  # noqa: E402
import run_all  # noqa: E402

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    assert sys.argv[1] == "_child"
    mib = int(sys.argv[2])
    block = np.ones(mib * 2**20, np.uint8)  # touched: resident, counted in PSS
    time.sleep(0.6)
    print("a log line a worker forwarded")
    print(json.dumps({"seconds": 0.5, "touched": int(block.sum() // 2**20)}))
    print("a log line after the result")
    """
)


def test_measure_child_peak_pss_in_mib(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    small = harness.measure_child(script, ["8"], interval_s=0.05)
    big = harness.measure_child(script, ["200"], interval_s=0.05)
    assert big["touched"] == 200 and big["seconds"] == 0.5  # the child's own JSON line, not the log lines
    assert set(big) >= {"peak_mib", "wall_s", "cpu_s"}
    # MiB of PSS: the 192 MiB more that the big child touched show up as ~192 more (not 201 "MB")
    assert 170 < big["peak_mib"] - small["peak_mib"] < 215, (small, big)
    assert big["wall_s"] >= 0.6


def test_measure_child_failure_is_reported(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import sys; print('boom'); sys.exit(3)\n")
    with pytest.raises(RuntimeError, match="exit 3"):
        harness.measure_child(script, [], interval_s=0.05)


def test_peak_pss_context_sees_this_process_grow():
    import numpy as np

    with harness.PeakPss(interval_s=0.02) as mem:
        start = mem.now_mib()
        block = np.ones(64 * 2**20, np.uint8)
        mem.sample()
        del block
    assert mem.peak_mib - start > 50


def test_compare_is_the_median_of_paired_ratios():
    # per-repeat ratios 2.0, 1.0, 4.0 -> median 2.0 (the ratio of the medians would be 3/1.5 = 2.0 too,
    # so make them differ): values 10, 3, 40 over anchors 5, 3, 10 -> ratios 2, 1, 4 -> 2; medians 10 / 5 = 2
    f = harness.compare("x/s", "x/s", [10, 3, 40], "anchor", [5, 3, 10])
    assert f["ratio"] == 2.0 and f["paired"] and f["value"] == 10 and f["anchor_value"] == 5
    g = harness.compare("x/s", "x/s", [6, 1, 9], "anchor", [2, 1, 9])  # ratios 3, 1, 1 -> 1; medians 6/2 = 3
    assert g["ratio"] == 1.0
    h = harness.compare("s", "s", [4.0, 6.0], "anchor", [2.0], better="lower")  # unpaired: ratio of medians
    assert h["ratio"] == 2.5 and not h["paired"] and h["better"] == "lower"
    none = harness.compare("alone", "x", [1.0], None)
    assert none["ratio"] is None and none["anchor"] is None
    with pytest.raises(ValueError):
        harness.compare("x", "x", [1.0], "a", [1.0], better="up")


def test_ratio_ci_is_the_sign_test_interval_of_the_median():
    from scipy.stats import binom

    # 9 paired repeats: ratios 0.90 ... 1.06 in a shuffled order; k = 2 is the largest k with coverage
    # 1 - 2 P(Bin(9, 1/2) <= k - 1) >= 0.95 (k = 3 gives 0.820), so the CI is the 2nd and 8th smallest
    ratios = [1.02, 0.90, 0.96, 1.06, 0.93, 0.95, 0.98, 0.91, 1.00]
    f = harness.compare("s", "s", [r * 10 for r in ratios], "anchor", [10.0] * 9, better="lower")
    assert f["ratio"] == 0.96
    assert f["ratio_ci"] == [0.91, 1.02]
    assert f["ratio_ci_level"] == round(1 - 2 * binom.cdf(1, 9, 0.5), 4) == 0.9609
    assert "[0.91, 1.02]" in harness.format_figure(f)
    # 5 repeats cannot give 95 % (the widest interval, min..max, covers 1 - 2/32 = 0.9375): no CI
    few = harness.compare("s", "s", [1, 2, 3, 4, 5], "anchor", [1, 1, 1, 1, 1])
    assert "ratio_ci" not in few and few["ratio"] == 3.0
    assert harness.median_ci([5, 1, 2, 4, 3, 6]) == (1.0, 6.0, 1 - 2 / 64)
    # unpaired figures have no ratio CI
    assert "ratio_ci" not in harness.compare("s", "s", [1.0] * 7, "anchor", [1.0] * 6)


def test_write_results_and_summary_table(tmp_path):
    figs = [
        harness.compare("rate", "img/s", [20.0], "anchor loop", [10.0]),
        harness.compare("alone", "img/s", [5.0], None),
    ]
    path = harness.write_results("demo", figs, tmp_path / "demo.json", extra_field=1)
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "demo" and doc["extra_field"] == 1 and doc["figures"] == figs
    assert doc["machine"]["cpus"] == os.cpu_count() and len(doc["machine"]["git_commit"]) >= 7
    assert doc["command"] and doc["machine"]["date"]
    summary = {
        "mode": "quick",
        "command": "python benchmarks/run_all.py",
        "date": doc["machine"]["date"],
        "seconds": 60.0,
        "uptime_at_start": "up",
        "machine": doc["machine"],
        "benchmarks": [
            {"name": "demo", "command": "python benchmarks/demo.py", "seconds": 1.0, "status": "ok", "figures": figs},
            {"name": "broken", "command": "python x", "seconds": 1.0, "status": "failed", "figures": []},
        ],
    }
    table = run_all.markdown(summary)
    assert "| demo | rate | 20 img/s | anchor loop | 10 | 2 | higher | 1 |" in table
    assert "| broken | failed |" in table


def test_every_benchmark_script_exists_and_quick_mode_is_quick():
    for b in run_all.BENCHMARKS:
        assert (REPO / "benchmarks" / b.script).is_file(), b.script
        assert "--repeats" not in b.quick or b.quick[b.quick.index("--repeats") + 1] == "1", b.name


def test_gpu_check_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: every objective a couple of steps on the CPU, images/s and MFU
    from FlopCounterMode in the results (issue 18 item 7: the script cannot rot)."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(out)}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["dry_run"] is True
    names = {"dino", "simclr", "vicreg", "ijepa", "mae", "cine_jepa", "cine_mae"}
    assert set(doc["results"]) == names
    for r in doc["results"].values():
        assert r["images_per_s"] > 0 and r["flops_per_step"] > 0 and 0 < r["mfu"]
    assert sum("MFU" in f["figure"] for f in doc["figures"]) == len(names)


def test_update_docs_rewrites_only_the_marked_table(tmp_path):
    doc = tmp_path / "perf.md"
    doc.write_text(f"# title\nkeep\n{run_all.START}\nold table\n{run_all.END}\nafter\n")
    run_all.update_docs(doc, "| new |\n")
    assert doc.read_text() == f"# title\nkeep\n{run_all.START}\n| new |\n{run_all.END}\nafter\n"
