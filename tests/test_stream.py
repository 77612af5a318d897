"""Stream planning (pure): weighted mixing, seeded per-epoch order, chunk-aligned groups, frame/clip
sampling and fitting, the errors a bad StreamSpec gives, and the views' column round trip."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from pydantic import ValidationError

from pretextlab.core.errors import UserError
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.modalities import create_views
from pretextlab.storage import synthetic as syn
from pretextlab.storage.frames import FrameRef, fit_frames, loop_refs
from pretextlab.storage.patches import PatchRef
from pretextlab.storage.stream import Ref, StreamSpec, plan_stream
from pretextlab.views.columns import from_columns, to_columns

PATCH = {"patch_size": 64, "min_tissue": 0.3}


def _ingest(raw: Path, dest: Path, labels: Path | None = None) -> str:
    rep = run_ingest(
        IngestConfig(sources=[str(raw)], dest=str(dest), labels=str(labels) if labels else None, zarr={"chunk": 256}),
        progress=False,
    )
    assert rep.ok, rep
    return str(dest)


@pytest.fixture(scope="module")
def stores(ray_session, tmp_path_factory):
    """A: two slides + two cine loops of different frame sizes; B: one more slide; glass: a blank slide."""
    root = tmp_path_factory.mktemp("stream")
    syn.write_slide_tiff(root / "a-raw" / "a.tif", 768, 1024, tile=256, levels=2, seed=1)
    syn.write_slide_tiff(root / "a-raw" / "b.tif", 512, 512, tile=256, levels=1, seed=2)
    syn.write_us_dicom(root / "a-raw" / "l1.dcm", frames=12, rows=64, cols=80, seed=1)
    syn.write_us_dicom(root / "a-raw" / "l2.dcm", frames=10, rows=48, cols=64, seed=2, label=1)
    (root / "labels.csv").write_text("item_id,label\na,tumour\nb,normal\nl1,lesion\n")
    syn.write_slide_tiff(root / "b-raw" / "c.tif", 512, 768, tile=256, levels=1, seed=3)
    (root / "glass-raw").mkdir()
    # tiled, as slides are: an untiled single-page TIFF found in a folder is a still (a collection image)
    glass = np.full((512, 512, 3), 245, np.uint8)
    tifffile.imwrite(root / "glass-raw" / "glass.tif", glass, photometric="rgb", tile=(256, 256))
    return {
        "a": _ingest(root / "a-raw", root / "a", root / "labels.csv"),
        "b": _ingest(root / "b-raw", root / "b"),
        "glass": _ingest(root / "glass-raw", root / "glass"),
        "empty": str(tmp_path_factory.mktemp("empty-store")),
    }


def _key(ref) -> tuple:
    s = ref.sample
    return (
        ref.source,
        s.item_id,
        getattr(s, "level", None),
        getattr(s, "x", None),
        getattr(s, "y", None),
        getattr(s, "start", None),
    )


def test_epoch_is_a_seeded_permutation(stores):
    plan = plan_stream(StreamSpec(sources=[stores["a"]], kind="patches", patch=PATCH, seed=7))
    n = plan.samples_per_epoch
    assert n == len(plan.sources[0].refs) > 50 and plan.sample_shape == (64, 64, 3)
    e0 = [_key(r) for g in plan.epoch_groups(0) for r in g]
    assert sorted(e0) == sorted(_key(Ref(0, r)) for r in plan.sources[0].refs)  # every patch exactly once
    again = plan_stream(StreamSpec(sources=[stores["a"]], kind="patches", patch=PATCH, seed=7))
    assert [_key(r) for g in again.epoch_groups(0) for r in g] == e0  # same seed, same epoch: same order
    assert [_key(r) for g in plan.epoch_groups(1) for r in g] != e0  # a new order each epoch
    other = plan_stream(StreamSpec(sources=[stores["a"]], kind="patches", patch=PATCH, seed=8))
    assert [_key(r) for g in other.epoch_groups(0) for r in g] != e0  # another seed, another order
    labels = {r.sample.item_id: r.label for g in plan.epoch_groups(0) for r in g}
    assert labels == {"a": "tumour", "b": "normal"}


def test_weighted_mix_cycles_small_sources(stores):
    spec = StreamSpec(
        sources=[{"uri": stores["a"], "weight": 3}, {"uri": stores["b"], "weight": 1}],
        kind="patches",
        patch=PATCH,
        samples_per_epoch=801,
    )
    plan = plan_stream(spec)
    assert plan.counts() == [601, 200]  # 600.75 -> 601 and 200.25 -> 200: they sum to samples_per_epoch
    refs = [r for g in plan.epoch_groups(0) for r in g]
    by_source = Counter(r.source for r in refs)
    assert by_source == {0: 601, 1: 200}
    for i, src in enumerate(plan.sources):  # each ref floor or ceil of count/len times
        seen = Counter(_key(r) for r in refs if r.source == i)
        n, m = plan.counts()[i], len(src.refs)
        assert set(seen.values()) <= {n // m, -(-n // m)} and len(seen) == min(n, m)
    first = refs[: len(refs) // 4]  # the mix is spread over the epoch, not source after source
    assert 0.5 < sum(r.source == 0 for r in first) / len(first) < 0.95


def test_groups_are_chunk_aligned(stores):
    plan = plan_stream(
        StreamSpec(
            sources=[stores["a"], stores["b"]],
            kind="patches",
            chunks_per_group=3,
            min_rows_per_group=1,
            patch={"patch_size": 64, "min_tissue": 0.0},
            samples_per_epoch=3000,
        )
    )
    groups = plan.epoch_groups(2)
    assert sum(map(len, groups)) == 3000
    owner: dict[tuple, int] = {}
    for gi, g in enumerate(groups):
        keys = {k for r in g for k in plan.chunk_keys(r)}
        assert len(keys) <= 3
        for k in keys:  # a chunk (and every repeat of its patches) belongs to one read task
            assert owner.setdefault(k, gi) == gi
    assert len(groups) >= len(owner) / 3
    sparse = plan_stream(plan.spec.model_copy(update={"min_rows_per_group": 200, "samples_per_epoch": None}))
    sizes = [len(g) for g in sparse.epoch_groups(2)]  # small tasks pass the chunk budget up to 200 rows
    assert sum(n < 200 for n in sizes) <= 1  # only the last group in storage order may be smaller
    assert max(len({k for r in g for k in sparse.chunk_keys(r)}) for g in sparse.epoch_groups(2)) > 3


def test_frames_and_clips(stores):
    with pytest.raises(UserError, match=r"clip\.size: .* differ in shape: l1 is 64x80x1, l2 is 48x64x1"):
        plan_stream(StreamSpec(sources=[stores["a"]], kind="frames"))
    frames = plan_stream(StreamSpec(sources=[stores["a"]], kind="frames", clip={"size": 56}))
    assert frames.samples_per_epoch == 22 and frames.sample_shape == (56, 56, 1)
    clips = plan_stream(
        StreamSpec(sources=[stores["a"]], kind="clips", clip={"frames": 3, "stride": 2, "size": 32, "hop": 2})
    )
    assert clips.sample_shape == (3, 32, 32, 1)
    starts = sorted((r.item_id, r.start) for r in clips.sources[0].refs)
    assert starts == [("l1", s) for s in (0, 2, 4, 6)] + [("l2", s) for s in (0, 2, 4)]
    assert loop_refs("x", 9, 4, 2, 7) == [FrameRef("x", 0, 4, 2)]  # span 7: one clip, no overlap
    assert loop_refs("x", 6, 4, 2, 7) == []
    x = np.arange(2 * 5 * 7, dtype=np.uint8).reshape(2, 5, 7, 1)
    np.testing.assert_array_equal(fit_frames(x, 3), x[:, 1:4, 2:5])
    np.testing.assert_array_equal(fit_frames(x, 3, "top"), x[:, 0:3, 2:5])
    padded = fit_frames(x, 9)
    assert padded.shape == (2, 9, 9, 1) and padded.sum() == x.sum()
    np.testing.assert_array_equal(padded[:, 2:7, 1:8], x)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (lambda s: dict(sources=[s["empty"]], kind="patches"), r"sources\[0\]\.uri: .*no catalog"),
        (lambda s: dict(sources=[s["b"]], kind="frames"), r"sources\[0\]\.uri: .* has no cine items"),
        (
            lambda s: dict(sources=[s["a"], {"uri": s["a"], "modality": "ultrasound"}], kind="patches"),
            r"sources\[1\]\.uri: .* no slide items of modality 'ultrasound'",
        ),
        (
            lambda s: dict(sources=[s["a"]], kind="patches", patch={"patch_size": 4096}),
            r"patch\.patch_size: 4096 px is larger than every slide level",
        ),
        (
            lambda s: dict(sources=[s["a"]], kind="clips", clip={"frames": 8, "stride": 2}),
            r"clip: a clip of 8 frames at stride 2 spans 15 frames; the longest cine loop .* has 12",
        ),
        (
            lambda s: dict(sources=[s["glass"]], kind="patches", patch={"patch_size": 64, "min_tissue": 0.5}),
            r"patch\.min_tissue: no patch of .* has >= 0\.5 tissue",
        ),
        (
            lambda s: dict(sources=[s["a"]], kind="patches", patch={"patch_size": 64, "level": 5}),
            r"patch: .* level 5 does not exist",
        ),
    ],
)
def test_bad_specs_name_the_field(stores, spec, message):
    with pytest.raises(UserError, match=message):
        plan_stream(StreamSpec(**spec(stores)))


def test_spec_validation():
    with pytest.raises(ValidationError, match="weight"):
        StreamSpec(sources=[{"uri": "x", "weight": 0}], kind="patches")
    with pytest.raises(ValidationError, match="sources"):
        StreamSpec(sources=[], kind="frames")
    with pytest.raises(ValidationError, match="kind"):
        StreamSpec(sources=["x"], kind="tiles")
    assert StreamSpec(sources=["s3://b/p"], kind="clips").sources[0].weight == 1.0


@pytest.mark.parametrize(
    ("modality", "recipe", "shape"),
    [
        ("histopathology", "multicrop", (4, 3, 40, 40)),
        ("histopathology", "pair", (4, 3, 40, 40)),
        ("ultrasound", "single", (4, 1, 40, 40)),
        ("ultrasound", "clip", (4, 1, 6, 40, 40)),
    ],
)
def test_columns_round_trip(modality, recipe, shape):
    views = create_views(
        modality,
        recipe,
        size=32,
        global_size=32,
        local_size=16,
        n_local=3,
        **({"frames": 4} if recipe == "clip" else {}),
    )
    key = "clips" if recipe == "clip" else "images"
    out = views({key: torch.randint(0, 256, shape, dtype=torch.uint8)}, torch.Generator().manual_seed(0))
    cols = to_columns(out)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in cols.values())
    expected = {
        "multicrop": {"global_0", "global_1", "local_0", "local_1", "local_2"},
        "pair": {"global_0", "global_1"},
        "single": {"images"},
        "clip": {"clips"},
    }[recipe]
    assert set(cols) == expected
    back = from_columns({**cols, "item_id": np.array(["a"] * 4), "epoch": np.zeros(4, np.int32)})
    assert back.pop("epoch").dtype == torch.int32 and "item_id" not in back
    assert back.keys() == out.keys()
    for k, v in out.items():
        got = back[k]
        if isinstance(v, list):
            assert len(got) == len(v) and all(torch.equal(a, b) for a, b in zip(got, v, strict=True))
        else:
            assert torch.equal(got, v)
    with pytest.raises(ValueError, match="numbered"):
        from_columns({"global_0": cols.get("global_0", np.zeros(1)), "global_2": np.zeros(1)})


def test_patch_refs_are_the_planned_grid(stores):
    plan = plan_stream(StreamSpec(sources=[stores["a"]], kind="patches", patch={"patch_size": 64, "min_tissue": 0}))
    refs = plan.sources[0].refs
    assert all(isinstance(r, PatchRef) for r in refs)
    assert len(refs) == (768 // 64) * (1024 // 64) + (512 // 64) ** 2
    assert plan.sources[0].chunks == {("a", 0): (256, 256), ("b", 0): (256, 256)}


def test_working_resolution_resamples_frames_only_when_asked(stores):
    """clip.resize / clip.spacing_mm: every frame resampled to the working resolution (aspect ratio kept,
    padded), in the read path the training stream uses; native pixels when neither is set."""
    from PIL import Image

    from pretextlab.evaluate.dataset import load_eval_set
    from pretextlab.storage import open_item
    from pretextlab.storage.datasource import read_group
    from pretextlab.storage.frames import working_frame

    native = plan_stream(StreamSpec(sources=[stores["a"]], kind="frames", clip={"size": 56}))
    assert native.sources[0].scales == {}  # never silent: no resampling unless asked
    plan = plan_stream(StreamSpec(sources=[stores["a"]], kind="frames", clip={"resize": 40}))
    assert plan.sample_shape == (40, 40, 1)
    assert plan.sources[0].scales == {"l1": (0.5, 0.5), "l2": (40 / 64, 40 / 64)}
    ref = next(r for r in plan.epoch_samples(0) if r.item_id == "l1")
    got = read_group(plan, [ref], 0, 0)["image"][0]
    frame = open_item(stores["a"], "l1").frames(ref.sample.start, ref.sample.start + 1)[0]  # 64 x 80
    want = np.asarray(Image.fromarray(frame[..., 0]).resize((40, 32), Image.Resampling.BILINEAR))  # PIL, apart
    assert (got[:4] == 0).all() and (got[36:] == 0).all()  # 32 rows of content, padded to 40 (fit: pad)
    assert np.abs(got[4:36, :, 0].astype(int) - want.astype(int)).mean() < 3
    by_spacing = plan_stream(StreamSpec(sources=[stores["a"]], kind="frames", clip={"spacing_mm": 0.4, "size": 40}))
    assert by_spacing.sources[0].scales == {"l1": (0.5, 0.5), "l2": (0.5, 0.5)}  # 0.2 mm/px -> 0.4 mm/px
    # evaluation brings frames to the same scale: resampled, padded, then the native-crop window
    res = {**plan.spec.clip.resolution(), "eval_fit": "crop"}
    ev = load_eval_set(stores["a"], size=32, resolution=res)
    mid = open_item(stores["a"], "l1").frames(6, 7)[0]
    np.testing.assert_array_equal(
        ev.images[list(ev.item_ids).index("l1")][..., :1], working_frame(mid, res, [0.2, 0.2], 32)
    )


def test_stills_in_class_sorted_shards_are_read_in_mixed_tasks():
    """Image-stack rows (collections) are stored in folder order, so a class fills whole shards. Read
    tasks are made of short storage runs taken in the epoch's random order: every row comes once per
    epoch, no task holds one class only, and each task is at most STILL_RUNS_PER_TASK (+1) storage runs
    (cheap reads). Storage-order tasks made 96 % of 64-image batches single-class on such a set."""
    from pretextlab.storage.frames import FrameRef
    from pretextlab.storage.stream import STILL_RUNS_PER_TASK, SourcePlan, StreamPlan

    n = 2048  # 224 px RGB stills: 64 rows per task, runs of 4
    refs = [FrameRef("tiles-0000::all", i, 1, 1, "a" if i < n // 2 else "b") for i in range(n)]
    spec = StreamSpec(sources=["mem://tiles"], kind="frames")
    plan = StreamPlan(spec, [SourcePlan("mem://tiles", 1.0, refs, {("tiles-0000::all", 0): (1,)})], n, (224, 224, 3))
    for epoch in (0, 1):
        groups = plan.epoch_groups(epoch)
        starts = sorted(r.sample.start for g in groups for r in g)
        assert starts == list(range(n))  # every row once
        for g in groups:
            labels = {r.label for r in g}
            assert labels == {"a", "b"}, f"a single-class read task of {len(g)} rows"
            index = np.sort([r.sample.start for r in g])
            assert 1 + int(np.sum(np.diff(index) != 1)) <= STILL_RUNS_PER_TASK + 1
    assert plan.epoch_groups(0) != plan.epoch_groups(1)
