"""A slide is never whole in memory: ingesting a slide much larger than the allowed growth keeps
peak RSS bounded (the 40,000 x 40,000 figure is in benchmarks/ingest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from pretextlab.storage import synthetic as syn

CHILD = textwrap.dedent("""
    import json, resource, sys, warnings
    warnings.filterwarnings("ignore")
    from pretextlab.storage import discover, write_item
    plan = discover([sys.argv[1]]).plans[0]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = write_item(plan, sys.argv[2])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"status": res.status, "reason": res.reason, "before_kb": before, "after_kb": after}))
""")


def test_peak_memory_of_slide_ingest_is_bounded(tmp_path):
    size = 10240
    src = syn.write_slide_tiff(tmp_path / "big.tif", size, size, tile=512, levels=1, seed=2)
    raw_mb = size * size * 3 / 1e6  # 315 MB of pixels
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(tmp_path / "store")], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["status"] == "ingested", r["reason"]
    growth_mb = (r["after_kb"] - r["before_kb"]) / 1e3
    assert growth_mb < raw_mb / 3, f"peak RSS grew {growth_mb:.0f} MB while ingesting {raw_mb:.0f} MB of pixels"
