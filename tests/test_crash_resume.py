"""Crash-and-resume: SIGKILL the whole ingest (driver, Ray, workers) mid-write, then run it again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from identity import tiff_levels
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage import ItemNotFound, open_item, read_catalog
from pretextlab.storage import synthetic as syn


def _status(dest: Path, item: str) -> str | None:
    try:
        return json.loads((dest / "items" / f"{item}.zarr" / "zarr.json").read_text())["attributes"]["pretextlab"][
            "status"
        ]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _kill_tree(proc: subprocess.Popen) -> None:
    parent = psutil.Process(proc.pid)
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def test_killed_ingest_leaves_no_complete_looking_item_and_resumes(ray_session, tmp_path):
    raw = tmp_path / "raw"
    big = syn.write_slide_tiff(raw / "big.tif", 6144, 6144, tile=512, levels=1, seed=5)
    syn.write_us_dicom(raw / "small.dcm", frames=4, rows=64, cols=64)
    dest = tmp_path / "store"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pretextlab.jobs.ingest",
            str(raw),
            "--to",
            str(dest),
            "--quiet",
            "--set",
            "zarr.threads=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    level0 = dest / "items" / "big.zarr" / "0"
    deadline = time.time() + 180
    killed_mid_write = False
    try:
        while time.time() < deadline and proc.poll() is None:
            chunks = list(level0.rglob("c/*/*/*")) if level0.exists() else []
            if len(chunks) >= 4 and _status(dest, "small") == "complete":
                _kill_tree(proc)
                killed_mid_write = _status(dest, "big") == "writing"
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert killed_mid_write, (
        "the ingest finished or never started before the kill: " + proc.stdout.read().decode()[-2000:]
    )

    # After the crash: chunks on disk, yet no reader takes the item as complete.
    assert any(level0.rglob("c/*/*/*"))
    with pytest.raises(ItemNotFound, match="incomplete"):
        open_item(str(dest), "big")
    assert not (dest / "catalog.parquet").exists()

    rep = run_ingest(IngestConfig(sources=[str(raw)], dest=str(dest)), progress=False)
    status = {r.item_id: r.status for r in rep.results}
    assert status == {"big": "ingested", "small": "skipped"}
    item = open_item(str(dest), "big")
    np.testing.assert_array_equal(item.to_numpy(0), tiff_levels(big)[0])
    assert sorted(read_catalog(str(dest))["item_id"]) == ["big", "small"]
