"""Ray Data patch source over a Zarr store: tissue-aware grid, chunk-aligned read tasks, pixels equal
to direct region reads, locally and through the loopback S3 server."""

from __future__ import annotations

import numpy as np
import pytest

from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage import open_item
from pretextlab.storage import synthetic as syn
from pretextlab.storage.datasource import read_patches
from pretextlab.storage.patches import PatchRef, PatchSpec, group_by_chunks, plan_patches


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory):
    raw = tmp_path_factory.mktemp("dsraw")
    syn.write_slide_tiff(raw / "a.tif", 1024, 1536, tile=256, levels=2, seed=1)
    syn.write_slide_tiff(raw / "b.tif", 768, 768, tile=256, levels=1, seed=2)
    labels = raw.parent / "ds-labels.csv"
    labels.write_text("item_id,label\na,tumour\nb,normal\n")
    dest = tmp_path_factory.mktemp("dsstore")
    rep = run_ingest(IngestConfig(sources=[str(raw)], dest=str(dest), labels=str(labels),
                                  zarr={"chunk": 256}), progress=False)
    assert rep.ok
    return dest, raw


def test_grid_respects_tissue_and_level(store):
    dest, _ = store
    all_refs = plan_patches(str(dest), PatchSpec(patch_size=128, min_tissue=0.0))
    tissue = plan_patches(str(dest), PatchSpec(patch_size=128, min_tissue=0.6))
    assert len(all_refs) == (1024 // 128) * (1536 // 128) + (768 // 128) ** 2
    assert 0 < len(tissue) < len(all_refs)
    item = open_item(str(dest), "a")
    for r in tissue[:20]:
        patch = item.read_region(0, r.x, r.y, 128, 128) if r.item_id == "a" else None
        if patch is not None:  # tissue patches are stained (saturated), not glass
            sat = patch.max(-1).astype(int) - patch.min(-1)
            assert (sat > 20).mean() > 0.3
    lvl1 = plan_patches(str(dest), PatchSpec(patch_size=128, mpp=1.0, min_tissue=0.0))  # 0.5 µm/px * 2
    assert {r.level for r in lvl1 if r.item_id == "a"} == {1}


def test_chunk_groups_fetch_each_chunk_once():
    refs = [PatchRef("s", 0, x, y, 64) for y in range(0, 1024, 64) for x in range(0, 1024, 64)]
    groups = group_by_chunks(refs, chunk=256, chunks_per_group=4)
    assert sum(len(g) for g in groups) == len(refs)
    seen = set()
    for g in groups:
        keys = {(r.y // 256, r.x // 256) for r in g}
        assert len(keys) <= 4 and not (keys & seen)  # no chunk is read by two tasks
        seen |= keys


@pytest.mark.parametrize("where", ["local", "s3"])
def test_patches_stream_identical_to_region_reads(store, s3_server, where):
    dest, raw = store
    if where == "s3":
        bucket = s3_server.new_bucket()
        s3_server.upload(raw, bucket, "raw")
        target = f"s3://{bucket}/store"
        rep = run_ingest(IngestConfig(sources=[f"s3://{bucket}/raw"], dest=target,
                                      labels=str(raw.parent / "ds-labels.csv"), zarr={"chunk": 256}), progress=False)
        assert rep.ok
    else:
        target = str(dest)
    spec = PatchSpec(patch_size=96, min_tissue=0.3)
    ds = read_patches(target, spec, chunks_per_task=4)
    rows = ds.take_all()
    refs = plan_patches(target, spec)
    assert len(rows) == len(refs) > 10
    items = {i: open_item(target, i) for i in ("a", "b")}
    for row in rows[:: max(1, len(rows) // 15)]:
        expected = items[row["item_id"]].read_region(int(row["level"]), int(row["x"]), int(row["y"]), 96, 96)
        np.testing.assert_array_equal(row["image"], expected)
        assert row["label"] == {"a": "tumour", "b": "normal"}[row["item_id"]]
