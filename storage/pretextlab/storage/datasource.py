"""Ray Data sources over Zarr stores (local or s3://).

- ``read_stream(plan, epochs)``: a training stream planned by :mod:`pretextlab.storage.stream` (slide
  patches, cine frames or clips; weighted mix; seeded per-epoch order). One read task per chunk-aligned
  group; each array is opened once per task and each Zarr chunk fetched once per task.
- ``map_views(ds, views, seed, batch_size)``: the objective's views in ``map_batches`` on CPU workers,
  seeded from the samples' identities, as flat float32 columns (pretextlab.views.columns).
- ``read_patches(dest, spec)``: the slide patches of one store (no mixing, no shuffle).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any, Literal

import numpy as np
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pretextlab.storage import fs as sfs
from pretextlab.storage.frames import FrameRef, fit_frames, resample_frames
from pretextlab.storage.item import Item, open_item
from pretextlab.storage.patches import PatchRef, PatchSpec, group_by_chunks, plan_patches
from pretextlab.storage.pixels import stored_bits, to_uint8
from pretextlab.storage.stream import (
    EpochPlanner,
    Ref,
    StreamPlan,
    epoch_shares,
    stack_images,
    stack_row_id,
    stack_source,
)

Opener = Callable[[str, str, "dict[str, Any] | None"], Item]
#: Chunks fetched concurrently inside one read task (object storage is latency-bound).
FETCH_THREADS = 8
#: Default cap on the object-store bytes a stream's queued blocks may hold (raised to fit 4 read tasks' output).
STREAM_OBJECT_STORE_BYTES = 128 << 20


def _fetch_all(jobs: dict[tuple, Callable[[], Any]]) -> dict[tuple, Any]:
    """Run the chunk fetches (or item opens) of one read task, a few at a time."""
    if len(jobs) <= 1:
        return {k: f() for k, f in jobs.items()}
    with ThreadPoolExecutor(min(FETCH_THREADS, len(jobs))) as pool:
        return dict(zip(jobs, pool.map(lambda f: f(), jobs.values()), strict=True))


#: runs of at least this many consecutive chunks (on average) are read as slices, shorter ones as one
#: orthogonal selection: measured per chunk, ~0.3 ms in a slice, ~0.85 ms scattered, ~1.7 ms as its own call
SLICE_RUN = 4


def _fetch_runs(arrays: dict[tuple, Any], keys: list[tuple]) -> dict[tuple, np.ndarray]:
    """Frame chunks ``(source, item, 0, chunk)``, each fetched once, in one job per array: runs of
    consecutive chunks as slices, scattered chunks as one orthogonal selection (zarr then fetches them
    concurrently). Per-chunk calls cost ~1-2 ms each in zarr's sync layer, which dominated reads of a
    collection's one-image chunks (4,096 random stills: 7.4 s per task as single-chunk calls)."""
    wanted: dict[tuple, list[int]] = {}
    for k in keys:
        wanted.setdefault(k[:3], []).append(k[3])

    def fetch(akey: tuple, cks: list[int]) -> Callable[[], np.ndarray]:
        arr = arrays[akey]
        ct, n = int(arr.chunks[0]), int(arr.shape[0])
        cks = sorted(cks)
        runs = np.split(np.asarray(cks), np.flatnonzero(np.diff(cks) != 1) + 1)
        if len(cks) >= SLICE_RUN * len(runs):  # long runs of consecutive chunks: a slice per run
            spans = [(int(r[0]) * ct, min((int(r[-1]) + 1) * ct, n)) for r in runs]
            return lambda: np.concatenate([arr[a:b] for a, b in spans])
        idx = np.concatenate([np.arange(c * ct, min((c + 1) * ct, n)) for c in cks])
        return lambda: arr.oindex[idx]  # (t, C, Y, X)

    blocks = _fetch_all({akey: fetch(akey, cks) for akey, cks in wanted.items()})
    out: dict[tuple, np.ndarray] = {}
    for akey, cks in wanted.items():
        arr, block, at = arrays[akey], blocks[akey], 0
        ct, n = int(arr.chunks[0]), int(arr.shape[0])
        for c in sorted(cks):
            rows = min((c + 1) * ct, n) - c * ct
            out[(*akey, c)] = block[at : at + rows]
            at += rows
    return out


def _patch(r: Ref) -> PatchRef:
    """The sample of a ref in a patch stream (``plan.kind == "patches"``)."""
    assert isinstance(r.sample, PatchRef), type(r.sample)
    return r.sample


def _frame(r: Ref) -> FrameRef:
    """The sample of a ref in a frame or clip stream."""
    assert isinstance(r.sample, FrameRef), type(r.sample)
    return r.sample


def _patch_pixels(refs: list[Ref], arrays: dict[tuple, Any]) -> np.ndarray:
    """The patches (N, S, S, C), each cut from its chunks; every chunk any patch touches is fetched
    exactly once. Chunks stay (C, y, x) as Zarr returns them: each patch's part is copied once,
    transposed, straight into the batch (no whole-chunk transpose, no stacking copy)."""

    def chunk_box(src: int, item_id: str, level: int, cy: int, cx: int) -> tuple[int, int, int, int]:
        arr = arrays[(src, item_id, level)]
        hy, wx = arr.chunks[-2], arr.chunks[-1]
        return cy * hy, min((cy + 1) * hy, arr.shape[-2]), cx * wx, min((cx + 1) * wx, arr.shape[-1])

    def touched(r: Ref) -> list[tuple]:
        s = _patch(r)
        arr = arrays[(r.source, s.item_id, s.level)]
        hy, wx = arr.chunks[-2], arr.chunks[-1]
        return [
            (r.source, s.item_id, s.level, cy, cx)
            for cy in range(s.y // hy, (s.y + s.size - 1) // hy + 1)
            for cx in range(s.x // wx, (s.x + s.size - 1) // wx + 1)
        ]

    def fetch(key: tuple) -> Callable[[], np.ndarray]:
        y0, y1, x0, x1 = chunk_box(*key)
        arr = arrays[key[:3]]
        return lambda: np.asarray(arr[:, y0:y1, x0:x1])

    needed = {k for r in refs for k in touched(r)}
    chunks = _fetch_all({k: fetch(k) for k in sorted(needed)})
    out: np.ndarray | None = None
    for i, r in enumerate(refs):
        s = _patch(r)
        for key in touched(r):
            y0, y1, x0, x1 = chunk_box(*key)
            block = chunks[key]
            if out is None:
                out = np.empty((len(refs), s.size, s.size, block.shape[0]), dtype=block.dtype)
            ya, yb, xa, xb = max(s.y, y0), min(s.y + s.size, y1), max(s.x, x0), min(s.x + s.size, x1)
            out[i, ya - s.y : yb - s.y, xa - s.x : xb - s.x] = block[:, ya - y0 : yb - y0, xa - x0 : xb - x0].transpose(
                1, 2, 0
            )
    assert out is not None  # a group has at least one patch, and a patch touches at least one chunk
    return out


def _frame_pixels(
    refs: list[Ref],
    arrays: dict[tuple, Any],
    size: int | None,
    anchor: Literal["center", "top"],
    single: bool,
    scales: dict[tuple[int, str], tuple[float, float]] | None = None,
    bits: dict[tuple[int, str], int] | None = None,
) -> list[np.ndarray]:
    """Each frame or clip assembled from its frame chunks (each fetched once), brought to 8 bits,
    cropped/padded to size."""

    def keys(r: Ref) -> set[tuple]:
        ct = arrays[(r.source, r.item_id, 0)].chunks[0]
        return {(r.source, r.item_id, 0, t // ct) for t in _frame(r).indices}

    chunks = _fetch_runs(arrays, sorted(set().union(*(keys(r) for r in refs))))
    out = []
    for r in refs:
        s = _frame(r)
        ct = arrays[(r.source, s.item_id, 0)].chunks[0]
        frames = np.stack([chunks[(r.source, s.item_id, 0, t // ct)][t % ct] for t in s.indices])
        frames = frames.transpose(0, 2, 3, 1)  # (T, Y, X, C)
        if frames.dtype != np.uint8:  # 12/16-bit sources: their top 8 bits (storage.pixels)
            frames = to_uint8(frames, (bits or {}).get((r.source, s.item_id), frames.dtype.itemsize * 8))
        if scales:  # the working resolution, when the spec asks for one
            frames = resample_frames(frames, scales.get((r.source, s.item_id), (1.0, 1.0)))
        frames = fit_frames(frames, size, anchor)
        out.append(np.ascontiguousarray(frames[0] if single else frames))
    return out


def _item_of(source_id: str) -> str:
    """The item a stream source id reads from (an image stack's split reads from its stack item)."""
    stack = stack_source(source_id)
    return stack[0] if stack else source_id


def read_group(
    plan: StreamPlan,
    group: Sequence[Ref],
    epoch: int,
    first_index: int,
    storage_options: dict[str, Any] | None = None,
    opener: Opener = open_item,
) -> dict[str, np.ndarray]:
    """The rows of one read task, in the group's order: pixels plus item_id, label, source, epoch, index
    (position in the epoch) and the sample's coordinates (level, x, y for patches; frame for cine)."""
    group = list(group)
    wanted = {(r.source, _item_of(r.item_id)): None for r in group}  # items in order of first use
    # items opened over threads: an open is a few small reads, latency-bound on object storage
    items: dict[tuple[int, str], Item] = _fetch_all(
        {key: partial(opener, plan.sources[key[0]].uri, key[1], storage_options) for key in wanted}
    )
    arrays: dict[tuple, Any] = {}
    for r in group:
        level = r.sample.level if isinstance(r.sample, PatchRef) else 0
        if (r.source, r.item_id, level) not in arrays:
            stack = stack_source(r.item_id)  # one split of an image stack: its images read as frames
            key = (r.source, stack[0] if stack else r.item_id)
            arrays[(r.source, r.item_id, level)] = (
                stack_images(items[key], stack[1]) if stack else items[key].level(level)
            )
    batch: dict[str, np.ndarray] = {}
    if plan.kind == "patches":
        batch["image"] = _patch_pixels(group, arrays)
    else:
        clip = plan.spec.clip
        scales = {(i, item): sc for i, src in enumerate(plan.sources) for item, sc in src.scales.items()}
        bits = {
            (src, item_id): stored_bits(items[(src, _item_of(item_id))].card, arr.dtype)
            for (src, item_id, _level), arr in arrays.items()
        }
        pixels = _frame_pixels(
            group, arrays, clip.size, clip.anchor, single=plan.kind == "frames", scales=scales, bits=bits
        )
        batch["image" if plan.kind == "frames" else "clip"] = np.stack(pixels)
    ids = [
        stack_row_id(r.item_id, r.sample.start)
        if isinstance(r.sample, FrameRef) and stack_source(r.item_id)
        else r.item_id
        for r in group
    ]
    batch["item_id"] = np.array(ids, dtype=object).astype(str)
    batch["label"] = np.array(["" if r.label is None else str(r.label) for r in group], dtype=object).astype(str)
    batch["source"] = np.array([r.source for r in group], dtype=np.int32)
    batch["epoch"] = np.full(len(group), epoch, dtype=np.int32)
    batch["index"] = np.arange(first_index, first_index + len(group), dtype=np.int64)
    if plan.kind == "patches":
        batch["level"] = np.array([_patch(r).level for r in group], dtype=np.int32)
        batch["x"] = np.array([_patch(r).x for r in group], dtype=np.int64)
        batch["y"] = np.array([_patch(r).y for r in group], dtype=np.int64)
    else:
        batch["frame"] = np.array([_frame(r).start for r in group], dtype=np.int64)
    return batch


#: Rows of one read task of a lazily planned stream (a task reads its groups one after another and emits a
#: block per group): fewer, longer tasks than one per group pay Ray's per-task cost less often. Measured
#: (benchmarks/pipeline.py, 256 px patches): an epoch of 20 slides 4.5 s at 256 rows, 6.6 s at 128, 11.5 s
#: at 64; the object store in use peaked at 216, 158 and 127 MiB (the cap is on queued blocks; a running
#: task's own blocks come on top, so the peak follows the tasks in flight, not the size of the dataset).
TASK_ROWS = 256
#: at most this many read tasks per epoch (each costs the executor a little when the stream starts)
MAX_TASKS_PER_EPOCH = 256


class ZarrStreamDatasource(Datasource):
    """The read tasks of ``plan`` for ``epochs``, in order.

    ``lazy`` (the default): the first epoch is planned here, every later one by an :class:`EpochPlanner`
    actor when its first read task runs (and the one after it in the background). Each epoch has
    ``parts`` read tasks of about TASK_ROWS rows, each reading a contiguous share of the epoch's groups
    and emitting one block per group as it goes. ``lazy=False``: every epoch planned here, one task per
    group (what the stream did before; kept to measure against). Same rows, same order either way.
    """

    def __init__(
        self,
        plan: StreamPlan,
        epochs: Iterable[int],
        storage_options: dict[str, Any] | None = None,
        lazy: bool = True,
    ):
        self.epochs, self.storage_options, self.lazy = [int(e) for e in epochs], storage_options, lazy
        self.token = uuid.uuid4().hex  # this stream's: its read tasks share opened items per worker process
        self.groups = {e: plan.epoch_groups(e) for e in (self.epochs[:1] if lazy else self.epochs)}
        self.parts = min(MAX_TASKS_PER_EPOCH, max(1, -(-plan.samples_per_epoch // TASK_ROWS)))
        later = [e for e in self.epochs if e not in self.groups]
        self.planner = None
        if later:
            actor = ray.remote(num_cpus=0)(EpochPlanner)
            self.planner = actor.remote(plan, later[0], self.parts)
        # the read tasks' shares of the epochs planned here: one group each (eager) or `parts` shares (lazy)
        self.shares = {e: epoch_shares(g, self.parts if lazy else max(1, len(g))) for e, g in self.groups.items()}
        # Read tasks carry only their own refs; the plan they share is stripped of the per-source ref lists.
        self.plan = replace(plan, sources=[replace(s, refs=[], chunks={}) for s in plan.sources])

    @property
    def num_tasks(self) -> int:
        return sum(len(self.groups[e]) if not self.lazy else self.parts for e in self.epochs)

    @property
    def largest_task(self) -> int:
        """Rows of the largest read task planned here (later epochs' tasks are about the same size)."""
        return max((sum(len(g) for _, g in share) for shares in self.shares.values() for share in shares), default=1)

    def estimate_inmemory_data_size(self) -> int | None:
        return self.plan.samples_per_epoch * self.plan.sample_bytes * len(self.epochs)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        plan, opts, parts, tasks = self.plan, self.storage_options, self.parts, []

        def task(read: _ReadShare, rows: int | None, nbytes: int) -> ReadTask:
            meta = BlockMetadata(num_rows=rows, size_bytes=nbytes, exec_stats=None, input_files=None)
            return ReadTask(read, meta, per_task_row_limit=per_task_row_limit)

        for i, epoch in enumerate(self.epochs):
            if epoch in self.shares:  # planned here: each task carries its share
                for share in self.shares[epoch]:
                    nrows = sum(len(g) for _, g in share)
                    read = _ReadShare(plan, opts, epoch, share, token=self.token)
                    tasks.append(task(read, nrows, nrows * plan.sample_bytes))
                continue
            following = next((e for e in self.epochs[i + 1 :] if e not in self.groups), None)
            for part in range(parts):  # the planner gives each task its share when it runs
                read = _ReadShare(
                    plan, opts, epoch, planner=self.planner, part=part, following=following, token=self.token
                )
                tasks.append(task(read, None, -(-plan.samples_per_epoch // parts) * plan.sample_bytes))
        return tasks


class _ReadShare:
    """One read task's function: its share of an epoch's groups (given, or asked of the planner when it
    runs), read group by group, one block per group. A module-level class, so a task pickles as its
    fields (a nested closure took ~3 ms per task to pickle: 8 s for a 10-epoch run of 2,560 tasks)."""

    def __init__(
        self,
        plan: StreamPlan,
        storage_options: dict[str, Any] | None,
        epoch: int,
        share: list[tuple[int, list[Ref]]] | None = None,
        *,
        planner: Any = None,
        part: int = 0,
        following: int | None = None,
        token: str,
    ):
        self.plan, self.storage_options, self.epoch, self.share = plan, storage_options, epoch, share
        self.planner, self.part, self.following = planner, part, following
        self.token = token  # the stream's: items opened by its tasks are shared per worker process

    def __call__(self) -> Iterable[Any]:
        share = self.share
        if share is None:
            share = ray.get(self.planner.share.remote(self.epoch, self.part, self.following))
        opener = _StreamOpener(self.token)  # items (and their arrays) opened once per stream and process
        for first, group in share:
            batch = read_group(self.plan, group, self.epoch, first, self.storage_options, opener)
            yield BlockAccessor.batch_to_block(batch)


#: Items a read worker process keeps open for the streams it serves, (stream token, uri, item_id) -> Item,
#: the oldest dropped past OPEN_ITEMS_KEPT.
_OPEN_ITEMS: OrderedDict[tuple[str, str, str], Item] = OrderedDict()
_OPEN_LOCK = threading.Lock()
OPEN_ITEMS_KEPT = 512


class _StreamOpener:
    """``open_item`` that opens each item once per stream in a read worker process: every read task of
    the stream that runs in that process shares it, with the arrays it has opened (on object storage an
    open is 3 requests, and an array's metadata one more). Keyed by the stream's token, so another
    stream (another run, a store that may have changed since) opens afresh."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, uri: str, item_id: str, storage_options: dict[str, Any] | None = None) -> Item:
        key = (self.token, uri, item_id)
        with _OPEN_LOCK:
            item = _OPEN_ITEMS.get(key)
            if item is not None:
                _OPEN_ITEMS.move_to_end(key)
                return item
        item = open_item(uri, item_id, storage_options)
        with _OPEN_LOCK:
            item = _OPEN_ITEMS.setdefault(key, item)
            while len(_OPEN_ITEMS) > OPEN_ITEMS_KEPT:
                _OPEN_ITEMS.popitem(last=False)
        return item


def _limit_object_store(ds: ray.data.Dataset, nbytes: int) -> None:
    """Cap the object-store bytes this dataset's executor may hold (queued blocks), at least ``nbytes``."""
    opts = ds.context.execution_options
    current = opts.resource_limits.object_store_memory
    if current in (0, float("inf")) or current < nbytes:
        opts.resource_limits = opts.resource_limits.copy(object_store_memory=nbytes)


def read_stream(
    plan: StreamPlan,
    epochs: Sequence[int],
    storage_options: dict[str, Any] | None = None,
    *,
    num_cpus: float = 0.5,
    object_store_bytes: int | None = STREAM_OBJECT_STORE_BYTES,
    lazy: bool = True,
) -> ray.data.Dataset:
    """The stream of ``plan`` over ``epochs`` (in order) as a Ray Dataset; rows ``image`` (H, W, C) or
    ``clip`` (T, H, W, C) uint8, ``item_id``, ``label`` ("" when none), ``source``, ``epoch``, ``index``.

    One block per chunk group (no re-splitting); a read task reads about TASK_ROWS rows of groups. The
    dataset's context preserves block order, so the same plan, seed and epochs give the same rows in the
    same order, and caps the object store bytes its blocks may hold at ``object_store_bytes``, raised to
    fit 4 read tasks' output (Ray Data's default is half the object store), so memory stays flat however
    large the stream and however slow the consumer. ``num_cpus`` per read task is fractional so reads fit
    beside train workers. ``lazy``: epochs after the first are planned when their first read task runs,
    one at a time (:class:`ZarrStreamDatasource`); same rows, same order.
    """
    if isinstance(epochs, int):
        epochs = [epochs]
    source = ZarrStreamDatasource(plan, epochs, storage_options, lazy=lazy)
    ds = ray.data.read_datasource(source, num_cpus=num_cpus, override_num_blocks=max(1, source.num_tasks))
    ds.context.execution_options.preserve_order = True
    if object_store_bytes is not None:
        biggest = source.largest_task * plan.sample_bytes
        _limit_object_store(ds, max(object_store_bytes, 4 * biggest))
    return ds


def batch_seed(seed: int, batch: dict[str, np.ndarray]) -> int:
    """A 63-bit seed from (seed, epoch, index, source) of a batch's samples: the same samples in the same
    order get the same views in any process, whatever ran before."""
    h = hashlib.blake2b(np.int64(seed).tobytes(), digest_size=8)
    for key in ("epoch", "index", "source"):
        if key in batch:
            h.update(np.ascontiguousarray(batch[key], dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


class ApplyViews:
    """``map_batches`` function: channel-last uint8 rows -> the views' flat float32 columns.

    The views own the packing (``Views.apply_to_rows``); storage only seeds them and passes ids through.
    """

    def __init__(self, views: Any, seed: int, passthrough: Sequence[str]):
        self.views, self.seed, self.passthrough = views, seed, tuple(passthrough)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        g = torch.Generator().manual_seed(batch_seed(self.seed, batch))
        out = self.views.apply_to_rows(batch, g)
        out.update({k: batch[k] for k in self.passthrough if k in batch})
        return out


def map_views(
    ds: ray.data.Dataset,
    views: Any,
    seed: int,
    batch_size: int,
    *,
    num_cpus: float = 0.5,
    concurrency: int | None = None,
    passthrough: Sequence[str] = ("item_id", "label", "source", "epoch", "index"),
) -> ray.data.Dataset:
    """Apply ``views`` (``pretextlab.modalities.create_views(...)``) to a :func:`read_stream` dataset in Ray
    Data tasks of ``num_cpus`` (fractional: CPU preprocessing scales apart from the train workers).

    Rows become the flat float32 view columns of ``to_columns`` (global_0, local_3, images, clips, ...)
    plus ``passthrough``; ``from_columns(batch)`` gives the objective's batch back. Each batch's
    torch.Generator is seeded from (seed, epoch, index, source) of its rows: deterministic views. The
    stream's object-store cap is raised, if needed, to hold 4 batches of views.
    """
    out = ds.map_batches(
        ApplyViews(views, seed, passthrough),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        concurrency=concurrency,
        zero_copy_batch=True,
    )
    if out.context.execution_options.resource_limits.object_store_memory not in (0, float("inf")):
        _limit_object_store(out, 4 * batch_size * views.sample_bytes())
    return out


# --- read_patches: one store's patches, no mixing (kept for evaluation and embedding) -------------------


def _read_patch_group(dest: str, group: list[PatchRef], storage_options: dict[str, Any] | None):
    items: dict[str, Any] = {}
    images = []
    for r in group:
        item = items.get(r.item_id) or items.setdefault(r.item_id, open_item(dest, r.item_id, storage_options))
        images.append(item.read_region(r.level, r.x, r.y, r.size, r.size))
    batch = {
        "image": np.stack(images),
        "item_id": np.array([r.item_id for r in group]),
        "level": np.array([r.level for r in group], dtype=np.int32),
        "x": np.array([r.x for r in group], dtype=np.int64),
        "y": np.array([r.y for r in group], dtype=np.int64),
        "label": np.array(["" if r.label is None else str(r.label) for r in group]),
    }
    return [BlockAccessor.batch_to_block(batch)]


class ZarrPatchDatasource(Datasource):
    """Patches planned by :func:`plan_patches`, read in chunk-aligned groups."""

    def __init__(
        self,
        dest: str,
        refs: list[PatchRef],
        chunk: int = 512,
        chunks_per_task: int = 16,
        channels: int = 3,
        storage_options: dict[str, Any] | None = None,
    ):
        self.dest, self.refs, self.chunk = sfs.normalize(dest), refs, chunk
        self.chunks_per_task, self.channels, self.storage_options = chunks_per_task, channels, storage_options

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(r.size * r.size * self.channels for r in self.refs)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        tasks = []
        for group in group_by_chunks(self.refs, self.chunk, self.chunks_per_task):
            meta = BlockMetadata(
                num_rows=len(group),
                size_bytes=sum(r.size * r.size * self.channels for r in group),
                exec_stats=None,
                input_files=None,
            )
            tasks.append(
                ReadTask(
                    partial(_read_patch_group, self.dest, group, self.storage_options),
                    meta,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


def read_patches(
    dest: str, spec: PatchSpec, storage_options: dict[str, Any] | None = None, chunks_per_task: int = 16
) -> ray.data.Dataset:
    """A Ray Dataset of the slide patches of the store at ``dest``."""
    refs = plan_patches(dest, spec, storage_options)
    first = open_item(dest, refs[0].item_id, storage_options) if refs else None
    chunk = int(first.level(0).chunks[-1]) if first else 512
    channels = int(first.level(0).shape[0]) if first else 3
    return ray.data.read_datasource(ZarrPatchDatasource(dest, refs, chunk, chunks_per_task, channels, storage_options))
