"""Ray Data sources over Zarr stores: the patch source (tissue-aware grid, chunk-aligned read tasks) and the
training stream (rows in the plan's order, weighted mixing, each chunk fetched once per read task, views in
map_batches), pixels equal to direct reads, locally and through the loopback S3 server."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import zarr
from ray.data.block import BlockAccessor
from zarr.storage import LocalStore, WrapperStore

from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.modalities import create_views
from pretextlab.storage import Item, open_item
from pretextlab.storage import synthetic as syn
from pretextlab.storage.datasource import batch_seed, map_views, read_group, read_patches, read_stream
from pretextlab.storage.frames import fit_frames
from pretextlab.storage.patches import PatchRef, PatchSpec, group_by_chunks, plan_patches
from pretextlab.storage.stream import StreamSpec, plan_stream
from pretextlab.views.columns import from_columns


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory):
    raw = tmp_path_factory.mktemp("dsraw")
    syn.write_slide_tiff(raw / "a.tif", 1024, 1536, tile=256, levels=2, seed=1)
    syn.write_slide_tiff(raw / "b.tif", 768, 768, tile=256, levels=1, seed=2)
    syn.write_us_dicom(raw / "l1.dcm", frames=12, rows=64, cols=80, seed=1)
    syn.write_us_dicom(raw / "l2.dcm", frames=9, rows=64, cols=80, seed=2)
    labels = raw.parent / "ds-labels.csv"
    labels.write_text("item_id,label\na,tumour\nb,normal\n")
    dest = tmp_path_factory.mktemp("dsstore")
    rep = run_ingest(
        IngestConfig(sources=[str(raw)], dest=str(dest), labels=str(labels), zarr={"chunk": 256}), progress=False
    )
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
        rep = run_ingest(
            IngestConfig(
                sources=[f"s3://{bucket}/raw"],
                dest=target,
                labels=str(raw.parent / "ds-labels.csv"),
                zarr={"chunk": 256},
            ),
            progress=False,
        )
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


# --- the training stream: read_stream / map_views ------------------------------------------------------

STREAM_PATCH = {"patch_size": 96, "min_tissue": 0.3}


class CountingStore(WrapperStore):
    """A store that counts every chunk GET by key (Zarr v3 chunk keys ``<array>/c/<i>/<j>/...``)."""

    def __init__(self, store, counts: Counter):
        super().__init__(store)
        self.counts = counts

    async def get(self, key, prototype, byte_range=None):
        if "/c/" in key:
            self.counts[key] += 1
        return await self._store.get(key, prototype, byte_range)


def _rows_key(rows) -> list[tuple]:
    return [(r["epoch"], r["index"], r["source"], r["item_id"], r.get("x", r.get("frame")), r.get("y")) for r in rows]


def _plan_key(plan, epochs) -> list[tuple]:
    out = []
    for e in epochs:
        for i, ref in enumerate(r for g in plan.epoch_groups(e) for r in g):
            s = ref.sample
            out.append((e, i, ref.source, s.item_id, getattr(s, "x", getattr(s, "start", None)), getattr(s, "y", None)))
    return out


@pytest.fixture(scope="module")
def s3_store(store, s3_server):
    """The local store, uploaded as is to a bucket of the loopback S3 server."""
    dest, _ = store
    bucket = s3_server.new_bucket()
    s3_server.upload(dest, bucket, "store")
    return f"s3://{bucket}/store"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_stream_rows_follow_the_plan(store, s3_store, where):
    target = s3_store if where == "s3" else str(store[0])
    plan = plan_stream(StreamSpec(sources=[target], kind="patches", patch=STREAM_PATCH, seed=3))
    rows = read_stream(plan, [0, 1]).take_all()
    assert _rows_key(rows) == _plan_key(plan, [0, 1])  # every row, in the plan's per-epoch order
    if where == "local":  # the same plan, seed and epochs give the same rows again
        assert _rows_key(read_stream(plan, [0, 1]).take_all()) == _rows_key(rows)
    items = {i: open_item(target, i) for i in ("a", "b")}
    for row in rows[:: max(1, len(rows) // 12)] + [r for r in rows if r["x"] % 256 > 160][:4]:  # + chunk-straddling
        expected = items[row["item_id"]].read_region(int(row["level"]), int(row["x"]), int(row["y"]), 96, 96)
        np.testing.assert_array_equal(row["image"], expected)
        assert row["label"] == {"a": "tumour", "b": "normal"}[row["item_id"]]
    clips = plan_stream(StreamSpec(sources=[target], kind="clips", clip={"frames": 3, "stride": 2, "size": 56}))
    rows = read_stream(clips, [0]).take_all()
    assert _rows_key(rows) == _plan_key(clips, [0]) and len(rows) == 2 + 1  # l1: starts 0, 5; l2: 0
    for row in rows:
        loop = open_item(target, row["item_id"]).frames(int(row["frame"]), int(row["frame"]) + 5, 2)
        np.testing.assert_array_equal(row["clip"], fit_frames(loop, 56))
        assert row["clip"].shape == (3, 56, 56, 1) and row["label"] == ""


def test_weighted_mix_through_ray(store):
    dest = str(store[0])
    spec = StreamSpec(
        sources=[{"uri": dest, "weight": 3}, {"uri": dest, "weight": 1, "modality": "ultrasound"}],
        kind="frames",
        clip={"size": 32},
        samples_per_epoch=400,
        seed=1,
    )
    rows = read_stream(plan_stream(spec), [0, 1]).take_all()
    for e in (0, 1):
        sources = [r["source"] for r in rows if r["epoch"] == e]
        assert len(sources) == 400 and abs(sum(s == 0 for s in sources) / 400 - 0.75) < 0.01


def test_lazy_epochs_give_the_rows_of_epochs_planned_up_front(store, monkeypatch):
    """Epochs after the first are planned by the planner actor when their tasks run, each task reading a
    share of its epoch's groups: same rows, same order, same epoch indices as the stream planned up front
    (one task per group), although the epochs have different group counts."""
    import pretextlab.storage.datasource as dsrc

    monkeypatch.setattr(dsrc, "TASK_ROWS", 8)  # 5 tasks per epoch of 37 rows, over 7-15 groups
    dest = str(store[0])
    spec = StreamSpec(sources=[dest], kind="patches", patch=STREAM_PATCH, chunks_per_group=2, min_rows_per_group=1)
    plan = plan_stream(spec.model_copy(update={"samples_per_epoch": 37, "seed": 11}))  # a sample of the refs
    counts = [len(plan.epoch_groups(e)) for e in range(3)]
    assert len(set(counts)) > 1 and min(counts) > 5, counts
    lazy_ds = dsrc.ZarrStreamDatasource(plan, [0, 1, 2])
    assert lazy_ds.num_tasks == 15 and set(lazy_ds.groups) == {0} and lazy_ds.planner is not None
    lazy = read_stream(plan, [0, 1, 2]).take_all()
    eager = read_stream(plan, [0, 1, 2], lazy=False).take_all()
    key = ("epoch", "index", "item_id", "level", "x", "y")
    assert [tuple(r[k] for k in key) for r in lazy] == [tuple(r[k] for k in key) for r in eager]
    assert [r["index"] for r in lazy] == list(range(37)) * 3
    expected = [(e, r.item_id, r.sample.x, r.sample.y) for e in range(3) for g in plan.epoch_groups(e) for r in g]
    assert [(r["epoch"], r["item_id"], r["x"], r["y"]) for r in lazy] == expected
    np.testing.assert_array_equal(lazy[-1]["image"], eager[-1]["image"])


def test_planning_over_threads_gives_the_same_plan(store):
    dest = str(store[0])
    for spec in (
        StreamSpec(sources=[dest], kind="patches", patch=STREAM_PATCH, seed=2),
        StreamSpec(sources=[dest], kind="clips", clip={"frames": 3, "stride": 1, "size": 56}, seed=2),
    ):
        threads, serial = plan_stream(spec), plan_stream(spec, open_threads=1)
        assert [s.refs for s in threads.sources] == [s.refs for s in serial.sources]
        assert [s.chunks for s in threads.sources] == [s.chunks for s in serial.sources]
        assert threads.epoch_groups(1) == serial.epoch_groups(1)


@pytest.mark.parametrize("kind", ["patches", "clips"])
def test_each_chunk_fetched_once_per_read_task(store, kind):
    dest = str(store[0])
    spec = StreamSpec(
        sources=[dest],
        kind=kind,
        patch=STREAM_PATCH,
        clip={"frames": 3, "stride": 1, "hop": 1},
        chunks_per_group=4,
        min_rows_per_group=1,
        seed=5,
    )
    plan = plan_stream(spec)
    plan = plan_stream(spec.model_copy(update={"samples_per_epoch": 2 * plan.samples_per_epoch}))  # repeats
    counts: Counter = Counter()

    def opener(uri, item_id, storage_options=None):
        item = open_item(uri, item_id, storage_options)
        group = zarr.open_group(CountingStore(LocalStore(item.url, read_only=True), counts), mode="r")
        return Item(item.item_id, item.url, item.card, group)

    groups = plan.epoch_groups(0)
    first = 0
    for group in groups:
        counts.clear()
        batch = read_group(plan, group, 0, first, None, opener)
        first += len(group)
        assert counts and max(counts.values()) == 1  # no chunk fetched twice by one task
        if kind == "clips":
            assert len(counts) == len({(r.item_id, t) for r in group for t in r.sample.indices})
            continue
        touched = {
            (r.item_id, r.sample.level, cy, cx)
            for r in group
            for cy in range(r.sample.y // 256, (r.sample.y + 95) // 256 + 1)
            for cx in range(r.sample.x // 256, (r.sample.x + 95) // 256 + 1)
        }
        assert len(counts) == len(touched)
        r = group[-1].sample
        np.testing.assert_array_equal(
            batch["image"][-1], open_item(dest, r.item_id).read_region(r.level, r.x, r.y, 96, 96)
        )
    assert first == plan.samples_per_epoch and len(groups) > 1


class MetadataCountingStore(WrapperStore):
    """A store that counts GETs of Zarr metadata documents (``zarr.json``) by key."""

    def __init__(self, store, counts: Counter):
        super().__init__(store)
        self.counts = counts

    async def get(self, key, prototype, byte_range=None):
        if key.endswith("zarr.json"):
            self.counts[key] += 1
        return await self._store.get(key, prototype, byte_range)


def test_a_stream_opens_each_item_and_array_once_per_worker_process(store):
    """Read tasks of one stream that run in the same process share opened items and their arrays (an
    open is 3 requests on object storage, an array's metadata one more); another stream opens afresh;
    the rows are those read_group gives with a fresh open per group."""
    from pretextlab.storage import datasource as dsrc

    dest = str(store[0])
    spec = StreamSpec(sources=[dest], kind="patches", patch=STREAM_PATCH, chunks_per_group=2, min_rows_per_group=1)
    plan = plan_stream(spec.model_copy(update={"samples_per_epoch": 3 * plan_stream(spec).samples_per_epoch}))
    source = dsrc.ZarrStreamDatasource(plan, [0], lazy=False)  # one share per group: many tasks
    shares = source.shares[0]
    assert len(shares) > 2
    seen: dict[tuple, int] = {}
    for share in shares:
        blocks = list(dsrc._ReadShare(source.plan, None, 0, share, token=source.token)())
        for (first, group), block in zip(share, blocks, strict=True):
            want = read_group(plan, group, 0, first)  # open_item for every group
            got = BlockAccessor.for_block(block).to_batch_format("numpy")
            np.testing.assert_array_equal(got["image"], want["image"])
            assert list(got["index"]) == list(want["index"])
        mine = {k: id(v) for k, v in dsrc._OPEN_ITEMS.items() if k[0] == source.token}
        assert all(seen.get(k, i) == i for k, i in mine.items())  # an item opened once stays the one used
        seen.update(mine)
    items = {k[2] for k in seen}
    assert items == {r.item_id for share in shares for _, g in share for r in g}
    other = dsrc.ZarrStreamDatasource(plan, [0], lazy=False)
    list(dsrc._ReadShare(other.plan, None, 0, other.shares[0][0], token=other.token)())
    fresh = {k[1:]: id(v) for k, v in dsrc._OPEN_ITEMS.items() if k[0] == other.token}
    assert fresh and all(i != seen[(source.token, *k)] for k, i in fresh.items())

    counts: Counter = Counter()
    item = open_item(dest, next(iter(items)))
    counted = Item(
        item.item_id,
        item.url,
        item.card,
        zarr.open_group(MetadataCountingStore(LocalStore(item.url, read_only=True), counts), mode="r"),
    )
    assert counted.level(0) is counted.level(0) and counted.level(0).shape == item.level(0).shape
    assert counts[f"{item.card['levels'][0]['path']}/zarr.json"] == 1


def test_views_in_map_batches_are_deterministic(store):
    dest = str(store[0])
    plan = plan_stream(StreamSpec(sources=[dest], kind="patches", patch=STREAM_PATCH, samples_per_epoch=40))
    views = create_views("histopathology", "multicrop", global_size=32, local_size=16, n_local=2)

    def run(seed: int) -> list[dict]:
        return list(
            map_views(read_stream(plan, [0]), views, seed=seed, batch_size=8).iter_batches(
                batch_size=8, batch_format="numpy"
            )
        )

    first, again, other = run(0), run(0), run(1)
    assert sum(len(b["index"]) for b in first) == 40
    for a, b in zip(first, again, strict=True):
        assert (
            a.keys()
            == b.keys()
            == {"global_0", "global_1", "local_0", "local_1", "item_id", "label", "source", "epoch", "index"}
        )
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(first[0]["global_0"], other[0]["global_0"])
    batch = from_columns(first[0])
    assert [tuple(v.shape) for v in batch["global"]] == [(8, 3, 32, 32)] * 2
    assert [tuple(v.shape) for v in batch["local"]] == [(8, 3, 16, 16)] * 2 and batch["local"][0].dtype == torch.float32
    # the same rows, viewed in process with the batch's seed, give the same tensors
    rows = read_stream(plan, [0]).take_batch(8, batch_format="numpy")
    g = torch.Generator().manual_seed(batch_seed(0, rows))
    local = views({"images": torch.from_numpy(np.array(rows["image"])).permute(0, 3, 1, 2)}, g)
    assert torch.equal(local["global"][0], batch["global"][0])


def test_clip_views_in_map_batches(store):
    dest = str(store[0])
    plan = plan_stream(StreamSpec(sources=[dest], kind="clips", clip={"frames": 4, "stride": 1, "size": 48, "hop": 2}))
    views = create_views("ultrasound", "clip", size=32, frames=3, strides=(1,))
    batch = map_views(read_stream(plan, [0]), views, seed=0, batch_size=4).take_batch(4, batch_format="numpy")
    out = from_columns(batch)
    assert set(out) == {"clips", "source", "epoch", "index"} and tuple(out["clips"].shape) == (4, 1, 3, 32, 32)
