"""What a training stream reads, epoch by epoch: slide patches, cine frames or clips from one or more
Zarr stores, mixed with weights, shuffled per epoch with a seed and grouped by Zarr chunk so each read
task fetches each chunk once. Pure planning: no Ray (the Ray Data source is storage/datasource.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pretextlab.core.errors import UserError
from pretextlab.storage import fs as sfs
from pretextlab.storage.catalog import read_catalog
from pretextlab.storage.frames import FrameRef, clip_span, loop_refs, working_scale
from pretextlab.storage.item import Item, open_item
from pretextlab.storage.patches import PatchRef, PatchSpec, choose_level, item_patches

Kind = Literal["patches", "frames", "clips"]

#: Default chunk budget of one read task: slide chunks are ~0.75 MB (512² RGB); a cine chunk is one frame.
CHUNKS_PER_GROUP = {"patches": 16, "frames": 64, "clips": 64}
#: Upper bound on the pixel bytes of one read task (one Ray Data block), whatever the chunk budget.
MAX_GROUP_BYTES = 64 << 20
#: Lower bound on the pixel bytes of one ``frames`` read task before its chunk budget may close it: small samples
#: (32 px tiles of a 100,000-image collection) would otherwise make thousands of 64-row tasks, each paying
#: Ray's per-task cost (measured: an epoch of 100,000 32 px images took 138 s as 1,563 tasks)
MIN_GROUP_BYTES = 4 << 20
#: a read task of image-stack rows is made of at least this many storage runs (StreamPlan._still_groups)
STILL_RUNS_PER_TASK = 16
_ORDER_TAG = 0x5EED  # separates the group-order stream from the per-source selection streams
#: Items opened at once while planning: an open is 2-4 small reads (card, group and array metadata, the
#: tissue mask), latency-bound on object storage (benchmarks/planning.py)
OPEN_THREADS = 16

_T = TypeVar("_T")
_R = TypeVar("_R")


def _ordered_map(fn: Callable[[_T], _R], values: Iterable[_T], threads: int | None) -> Iterator[_R]:
    """``map(fn, values)`` over ``threads`` threads (None: OPEN_THREADS), results in order; the first
    failure in order is raised, as a plain loop would."""
    values = list(values)
    n = OPEN_THREADS if threads is None else threads
    if n <= 1 or len(values) <= 1:
        yield from map(fn, values)
        return
    with ThreadPoolExecutor(min(n, len(values)), thread_name_prefix="pretextlab-plan") as pool:
        yield from pool.map(fn, values)


class SourceSpec(BaseModel):
    """One Zarr store of the mix: its uri, its weight and an optional modality filter."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1, description="store: local path or s3://bucket/prefix")
    weight: float = Field(1.0, gt=0, description="share of the epoch: weight / sum of weights")
    modality: str | None = Field(None, description="keep only catalog rows of this modality")


class ClipSpec(BaseModel):
    """Cine sampling: clip length and stride (clips), and one output frame size (frames and clips)."""

    model_config = ConfigDict(extra="forbid")

    frames: int = Field(8, ge=1, description="frames per clip")
    stride: int = Field(2, ge=1, description="frame step inside a clip")
    size: int | None = Field(
        None,
        ge=1,
        description=("centre-crop / zero-pad every frame to size x size; None: all frames must share one shape"),
    )
    hop: int | None = Field(
        None,
        ge=1,
        description=("frames between the starts of consecutive clips of a loop; None: the clip span (no overlap)"),
    )
    anchor: Literal["center", "top"] = Field(
        "center",
        description=(
            "rows kept when cropping / padding to size: 'center', or 'top' (keeps the probe surface, row 0; "
            "crops and pads at the bottom like the ultrasound views)"
        ),
    )
    resize: int | None = Field(
        None,
        ge=8,
        description=(
            "working resolution in px: resample every frame (antialiased, aspect ratio kept) so its longer side "
            "(fit: pad) or shorter side (fit: crop) is this many px, then pad / crop to size (default: resize). "
            "None (default): frames keep their native pixels, so speckle keeps its grain size"
        ),
    )
    fit: Literal["pad", "crop"] = Field(
        "pad",
        description=("aspect-ratio policy of resize: 'pad' keeps the whole frame (zero bars), 'crop' fills the square"),
    )
    spacing_mm: float | None = Field(
        None,
        gt=0,
        description=(
            "resample every frame to this mm/px from its own pixel spacing (catalog pixel_spacing_mm, from "
            "DICOM); items without one are refused. Needs size"
        ),
    )

    @model_validator(mode="after")
    def _working_resolution(self) -> ClipSpec:
        if self.resize is not None and self.spacing_mm is not None:
            raise ValueError("resize and spacing_mm both set: choose one working resolution")
        if self.spacing_mm is not None and self.size is None:
            raise ValueError("spacing_mm needs size: frames of different fields of view differ in pixels")
        if self.resize is not None and self.size is None:
            self.size = self.resize
        return self

    def scale_for(self, shape: tuple[int, int], spacing: Any = None) -> tuple[float, float]:
        """This spec's resampling factors for a (H, W) frame with pixel ``spacing`` (mm/px)."""
        return working_scale(
            shape, self.resize, self.fit, tuple(spacing) if spacing is not None else None, self.spacing_mm
        )

    def resolution(self) -> dict[str, Any] | None:
        """The working resolution as recorded on an encoder card (None: native pixels)."""
        if self.resize is None and self.spacing_mm is None:
            return None
        return {
            "resize": self.resize,
            "fit": self.fit,
            "spacing_mm": self.spacing_mm,
            "size": self.size,
            "anchor": self.anchor,
        }

    @property
    def span(self) -> int:
        """Frames a clip covers from its first to its last frame."""
        return clip_span(self.frames, self.stride)


class StreamSpec(BaseModel):
    """A training stream: sources, what to cut from them, the seed and the epoch length."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceSpec] = Field(min_length=1, description="Zarr stores, mixed with their weights")
    kind: Kind = Field(description="patches (slides) | frames (cine) | clips (cine)")
    patch: PatchSpec = Field(default_factory=PatchSpec)
    clip: ClipSpec = Field(default_factory=ClipSpec)
    seed: int = 0
    samples_per_epoch: int | None = Field(None, ge=1, description="default: sum of the sources' samples")
    chunks_per_group: int | None = Field(
        None, ge=1, description=("Zarr chunks per read task (default 16 for patches, 64 frames for frames/clips)")
    )
    min_rows_per_group: int = Field(
        64,
        ge=1,
        description=(
            "a read task passes its chunk budget until it holds this many rows: sparse tissue would "
            "otherwise make tiny tasks (Ray's cost per task is ~30 ms on 2 cores)"
        ),
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _uris(cls, value: Any) -> Any:
        """A plain string is a source of weight 1."""
        if isinstance(value, list):
            return [{"uri": v} if isinstance(v, str) else v for v in value]
        return value


@dataclass(frozen=True)
class Ref:
    """One sample of the stream: a patch or frame/clip of source ``source`` (index into spec.sources)."""

    source: int
    sample: PatchRef | FrameRef

    @property
    def item_id(self) -> str:
        return self.sample.item_id

    @property
    def label(self) -> Any:
        return self.sample.label


@dataclass
class SourcePlan:
    """The planned samples of one source and the chunk shape of every array they read."""

    uri: str
    weight: float
    refs: list[PatchRef | FrameRef]
    #: (item_id, level) -> chunk edge along (y, x) for slides, or (t,) for cine loops
    chunks: dict[tuple[str, int], tuple[int, ...]] = field(default_factory=dict)
    #: item_id -> (row, column) resampling factors to the working resolution (cine; only when asked)
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class StreamPlan:
    """Every sample the stream may read; ``epoch_groups(e)`` gives epoch e's mix, order and read tasks."""

    spec: StreamSpec
    sources: list[SourcePlan]
    samples_per_epoch: int
    sample_shape: tuple[int, ...]  # (H, W, C) for patches/frames, (T, H, W, C) for clips

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def sample_bytes(self) -> int:
        return int(np.prod(self.sample_shape))

    def counts(self) -> list[int]:
        """Samples per epoch of each source: N * w_i / sum(w), rounded so they sum to N (largest remainder)."""
        w = np.array([s.weight for s in self.sources], dtype=np.float64)
        exact = self.samples_per_epoch * w / w.sum()
        counts = np.floor(exact).astype(np.int64)
        short = self.samples_per_epoch - int(counts.sum())
        for i in np.argsort(-(exact - counts), kind="stable")[:short]:
            counts[i] += 1
        return [int(c) for c in counts]

    def epoch_samples(self, epoch: int) -> list[Ref]:
        """Epoch ``epoch``'s samples, source by source: each source cycles through a fresh permutation of
        its refs as often as its count needs, then takes a random subset for the remainder."""
        out: list[Ref] = []
        for i, (src, n) in enumerate(zip(self.sources, self.counts(), strict=True)):
            rng = np.random.default_rng([self.spec.seed % 2**63, epoch, i])
            m = len(src.refs)
            picks = [rng.permutation(m) for _ in range(n // m)]
            if n % m:
                picks.append(rng.choice(m, size=n % m, replace=False))
            out.extend(Ref(i, src.refs[j]) for j in (np.concatenate(picks) if picks else []))
        return out

    def chunk_keys(self, ref: Ref) -> tuple[tuple, ...]:
        """The Zarr chunks that count against a read task's budget: a patch's top-left chunk (as
        group_by_chunks), every frame chunk of a frame or clip."""
        s = ref.sample
        if isinstance(s, PatchRef):
            cy, cx = self.sources[ref.source].chunks[(s.item_id, s.level)]
            return ((ref.source, s.item_id, s.level, s.y // cy, s.x // cx),)
        (ct,) = self.sources[ref.source].chunks[(s.item_id, 0)]
        return tuple(sorted({(ref.source, s.item_id, 0, t // ct) for t in s.indices}))

    def _sort_key(self, ref: Ref) -> tuple:
        s = ref.sample
        if isinstance(s, PatchRef):
            return self.chunk_keys(ref)[0] + (s.y, s.x)
        return (ref.source, s.item_id, s.start)

    def group(self, refs: list[Ref]) -> list[list[Ref]]:
        """Read tasks. Slide patches and cine frames / clips: chunk-aligned groups in storage order; a group
        closes before it would exceed the chunk budget (once it holds min_rows_per_group rows, and for
        frames MIN_GROUP_BYTES of pixels) or MAX_GROUP_BYTES, so the samples of one chunk (repeats
        included) share one read task. Stills (image-stack rows): consecutive runs of ``refs`` in the
        order given (the epoch's random order), as many rows per task as that floor asks."""
        budget = self.spec.chunks_per_group or CHUNKS_PER_GROUP[self.kind]
        max_rows = max(1, MAX_GROUP_BYTES // self.sample_bytes)
        floor = MIN_GROUP_BYTES // self.sample_bytes if self.kind == "frames" else 0  # stills and frames only
        min_rows = min(max(self.spec.min_rows_per_group, floor), max_rows)
        # stills (rows of image stacks, one image per chunk) share no chunk, and storage order is folder
        # order: ImageFolder collections put each class in its own shards, so storage-order groups made
        # 96 % of 64-image batches single-class (100,000-image set, 2 classes). Their groups are made of
        # storage runs taken in the epoch's random order instead (_still_groups).
        is_still = [isinstance(r.sample, FrameRef) and STACK_SEP in r.item_id for r in refs]
        groups = self._still_groups([r for r, still in zip(refs, is_still, strict=True) if still], min_rows)
        refs = [r for r, still in zip(refs, is_still, strict=True) if not still]
        current: list[Ref] = []
        chunks: set[tuple] = set()
        for ref in sorted(refs, key=self._sort_key):
            keys = set(self.chunk_keys(ref))
            over = len(chunks | keys) > budget and len(current) >= min_rows
            if current and (over or len(current) >= max_rows):
                groups.append(current)
                current, chunks = [], set()
            chunks |= keys
            current.append(ref)
        if current:
            groups.append(current)
        return groups

    def _still_groups(self, stills: list[Ref], min_rows: int) -> list[list[Ref]]:
        """Read tasks of image-stack rows: runs of rows consecutive in storage (cheap to read: zarr's cost
        is per call and per chunk; a run is min_rows / STILL_RUNS_PER_TASK rows), the runs ordered by
        where their rows fall in the epoch's random order (``stills`` as given), a task closing once it
        holds ``min_rows`` rows. A batch drawn from a task's permuted rows then mixes at least 16 random
        places of the dataset. Measured on 100,000 32 px stills in class-sorted shards: the share of
        64-image batches holding one class went from 96 % (storage order) to 0 %; an epoch 32 -> 38 s."""
        length = max(1, min_rows // STILL_RUNS_PER_TASK)
        where = {id(r): i for i, r in enumerate(stills)}
        ordered = sorted(stills, key=self._sort_key)
        runs = [ordered[i : i + length] for i in range(0, len(ordered), length)]
        runs.sort(key=lambda rows: min(where[id(r)] for r in rows))
        groups: list[list[Ref]] = []
        current: list[Ref] = []
        for rows in runs:
            current += rows
            if len(current) >= min_rows:
                groups.append(current)
                current = []
        if current:
            groups.append(current)
        return groups

    def epoch_groups(self, epoch: int) -> list[list[Ref]]:
        """Epoch ``epoch``'s read tasks: the weighted mix, grouped by chunk, groups in a seeded random
        order and rows permuted within each group. Same (seed, epoch) -> same groups, same order."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        groups = self.group(self.epoch_samples(epoch))
        rng = np.random.default_rng([self.spec.seed % 2**63, epoch, _ORDER_TAG])
        return [[g[j] for j in rng.permutation(len(g))] for g in (groups[k] for k in rng.permutation(len(groups)))]


def epoch_shares(groups: list[list[Ref]], parts: int) -> list[list[tuple[int, list[Ref]]]]:
    """An epoch's groups cut into ``parts`` contiguous read-task shares, each group with the epoch index of
    its first row (one pass over the groups)."""
    firsts = [0, *np.cumsum([len(g) for g in groups]).tolist()]
    n = len(groups)
    return [[(int(firsts[i]), groups[i]) for i in range(k * n // parts, (k + 1) * n // parts)] for k in range(parts)]


class EpochPlanner:
    """Plans a stream's epochs one at a time, when their read tasks ask: a run of many epochs over a large
    catalog neither waits for nor holds every epoch's plan (benchmarks/planning.py). The next epoch is
    planned in the background while one is read, so a new epoch's tasks rarely wait. storage.datasource
    runs it as a Ray actor of 0 CPU, one per stream; it lives here, with no Ray, so the actor imports
    only what planning needs."""

    def __init__(self, plan: StreamPlan, first: int, parts: int, keep: int = 3):
        self.plan, self.parts, self.keep = plan, parts, keep
        self._epochs: dict[int, Any] = {}  # epoch -> Future of its read-task shares
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pretextlab-epoch-planner")
        self._future(first)

    def _future(self, epoch: int) -> Any:
        with self._lock:
            if epoch not in self._epochs:
                self._epochs[epoch] = self._pool.submit(self._shares, epoch)
                for old in sorted(self._epochs)[: max(0, len(self._epochs) - self.keep)]:
                    if old != epoch:
                        del self._epochs[old]
            return self._epochs[epoch]

    def _shares(self, epoch: int) -> list[list[tuple[int, list[Ref]]]]:
        return epoch_shares(self.plan.epoch_groups(epoch), self.parts)

    def share(self, epoch: int, part: int, following: int | None = None) -> list[tuple[int, list[Ref]]]:
        """Read task ``part`` of ``epoch`` (:func:`epoch_shares`); ``following`` is planned next."""
        shares = self._future(epoch).result()
        if following is not None:
            self._future(following)
        return shares[part]


def _field(index: int, name: str) -> str:
    return f"sources[{index}].{name}"


#: what each stream kind reads: slides (patches); cine loops, or single images of image stacks (frames);
#: cine loops (clips)
READS = {"patches": ("slide",), "frames": ("cine", "image"), "clips": ("cine",)}
#: a frames-stream source item that is one split of an image stack (NPZ archive, collection of files):
#: ``<stack item id>::<split>``. Its images array (N, C, H, W) reads like a cine loop's (T, C, H, W).
STACK_SEP = "::"


def stack_source(item_id: str) -> tuple[str, str] | None:
    """(stack item id, split) of a stack pseudo-item id, None for a real item id."""
    if STACK_SEP not in item_id:
        return None
    group, split = item_id.split(STACK_SEP, 1)
    return group, split


def stack_split(row_item_id: str, group: str) -> str:
    """The split subgroup of an image-stack row: ingest names rows ``<stack>-<split>-<index:06d>``."""
    return row_item_id[len(group) + 1 :].rsplit("-", 1)[0]


def stack_row_id(item_id: str, index: int) -> str:
    """The catalog item id of image ``index`` of a stack pseudo-item (ingest names them so)."""
    group, split = stack_source(item_id) or (item_id, "")
    return f"{group}-{split}-{index:06d}"


def _catalog_rows(index: int, src: SourceSpec, kind: str, storage_options: dict[str, Any] | None):
    need = READS[kind]
    try:
        cat = read_catalog(src.uri, storage_options)
    except UserError as exc:
        raise UserError(f"{_field(index, 'uri')}: {exc}") from None
    rows = cat[cat["kind"].isin(need)]
    if src.modality is not None:
        rows = rows[rows["modality"] == src.modality]
    if "roi" in cat.columns:  # ROI mask images are annotations, not training images
        masks = set(cat["roi"].dropna().astype(str))
        rows = rows[~rows["item_id"].isin(masks)]
    if "dtype" in rows.columns:  # storage.pixels brings 8-16 bit integers to 8 bits; nothing else streams
        odd = rows[~rows["dtype"].astype(str).isin(["uint8", "uint16", "int16", "None", "nan"])]
        if len(odd):
            r = odd.iloc[0]
            raise UserError(
                f"{_field(index, 'uri')}: item {r['item_id']} of {src.uri} holds {r['dtype']} pixels "
                f"({len(odd)} such rows); the stream reads 8- or 16-bit integer pixels"
            )
    if rows.empty:
        wanted = " or ".join(f"{n}s" for n in need)
        what = f"{' or '.join(f'{n} items' for n in need)}" + (f" of modality {src.modality!r}" if src.modality else "")
        found = ", ".join(f"{k}: {v}" for k, v in cat.groupby(["kind", "modality"]).size().items()) or "nothing"
        raise UserError(f"{_field(index, 'uri')}: {src.uri} has no {what}; {kind} need {wanted} (found {found})")
    return rows, ("label" in cat.columns)


def _label(row: Any, has_label: bool) -> Any:
    value = getattr(row, "label", None) if has_label else None
    return None if value is None or value != value else value  # NaN -> None


def _open(index: int, uri: str, item_id: str, storage_options: dict[str, Any] | None) -> Item:
    try:
        return open_item(uri, item_id, storage_options)
    except UserError as exc:
        raise UserError(f"{_field(index, 'uri')}: {exc}") from None


def _plan_patches(
    index: int,
    src: SourceSpec,
    spec: StreamSpec,
    storage_options: dict[str, Any] | None,
    open_threads: int | None = None,
):
    rows, has_label = _catalog_rows(index, src, "patches", storage_options)
    uri = sfs.normalize(src.uri)
    plan = SourcePlan(uri, src.weight, [])
    channels: dict[int, str] = {}
    largest: list[tuple[int, int, str]] = []

    def slide(row: Any) -> tuple[Item, int, Any, list[PatchRef]]:
        item = _open(index, uri, row.item_id, storage_options)
        try:
            level = choose_level(item, spec.patch)
        except UserError as exc:
            raise UserError(f"patch: {src.uri}: {exc}") from None
        return item, level, item.level(level), item_patches(item, spec.patch, _label(row, has_label))

    for item, level, arr, refs in _ordered_map(slide, rows.itertuples(index=False), open_threads):
        c, h, w = arr.shape
        largest.append((min(h, w), level, item.item_id))
        if refs:
            channels.setdefault(int(c), item.item_id)
            plan.chunks[(item.item_id, level)] = (int(arr.chunks[-2]), int(arr.chunks[-1]))
            plan.refs.extend(refs)
    if not plan.refs:
        edge, level, item_id = max(largest)
        if spec.patch.patch_size > edge:
            raise UserError(
                f"patch.patch_size: {spec.patch.patch_size} px is larger than every slide level "
                f"chosen in {src.uri} (largest: {edge} px on item {item_id}, level {level})"
            )
        raise UserError(
            f"patch.min_tissue: no patch of {src.uri} has >= {spec.patch.min_tissue:g} tissue; "
            f"lower patch.min_tissue or check the tissue masks"
        )
    if len(channels) > 1:
        (c1, a), (c2, b) = list(channels.items())[:2]
        raise UserError(f"{_field(index, 'uri')}: slides differ in channels: {a} has {c1}, {b} has {c2}")
    return plan, (spec.patch.patch_size, spec.patch.patch_size, next(iter(channels)))


def _plan_cine(
    index: int,
    src: SourceSpec,
    spec: StreamSpec,
    storage_options: dict[str, Any] | None,
    open_threads: int | None = None,
):
    rows, has_label = _catalog_rows(index, src, spec.kind, storage_options)
    uri = sfs.normalize(src.uri)
    plan = SourcePlan(uri, src.weight, [])
    clip = spec.clip
    shapes: dict[tuple[int, ...], str] = {}
    longest = (0, "")
    for source_id, item, arr, refs in _frame_sources(index, uri, rows, has_label, spec, storage_options, open_threads):
        t, c, h, w = (int(v) for v in arr.shape)
        longest = max(longest, (t, source_id))
        if refs:
            if clip.resolution() is not None:
                spacing = item.card.get("pixel_spacing_mm")
                if clip.spacing_mm is not None and not spacing:
                    raise UserError(
                        f"clip.spacing_mm: item {item.item_id} of {src.uri} has no pixel spacing "
                        "(no PixelSpacing in its source); use clip.resize, or drop the item"
                    )
                plan.scales[source_id] = clip.scale_for((h, w), spacing)
            shapes.setdefault((h, w, c) if clip.size is None else (clip.size, clip.size, c), source_id)
            plan.chunks[(source_id, 0)] = (int(arr.chunks[0]),)
            plan.refs.extend(refs)
    if not plan.refs:
        raise UserError(
            f"clip: a clip of {clip.frames} frames at stride {clip.stride} spans {clip.span} frames; "
            f"the longest cine loop of {src.uri} ({longest[1]}) has {longest[0]}"
        )
    if len(shapes) > 1:
        (s1, a), (s2, b) = list(shapes.items())[:2]
        hint = "set clip.size to crop/pad frames to one size" if s1[2] == s2[2] else "channels cannot be cropped"
        raise UserError(
            f"clip.size: frames of {src.uri} differ in shape: {a} is {'x'.join(map(str, s1))}, "
            f"{b} is {'x'.join(map(str, s2))} (HxWxC); {hint}"
        )
    return plan, next(iter(shapes))


def _frame_sources(
    index: int,
    uri: str,
    rows: Any,
    has_label: bool,
    spec: StreamSpec,
    storage_options: dict[str, Any] | None,
    open_threads: int | None = None,
) -> Any:
    """(source id, item, (T|N, C, H, W) array, refs) per cine loop, and per split of an image stack (frames
    only: each labelled or unlabelled image row is one frame of its stack split). Items are opened over
    ``open_threads`` threads, yielded in catalog order."""
    clip = spec.clip
    stacks: dict[tuple[str, str], list[tuple[int, Any]]] = {}
    loops: list[tuple[str, Any]] = []
    for row in rows.itertuples(index=False):
        label = _label(row, has_label)
        if row.kind == "image":
            group = str(row.group)
            split = stack_split(row.item_id, group)
            stacks.setdefault((group, split), []).append((int(row.index), label))
        else:
            loops.append((row.item_id, label))

    def loop(entry: tuple[str, Any]) -> tuple[str, Item, Any, list[FrameRef]]:
        item_id, label = entry
        item = _open(index, uri, item_id, storage_options)
        arr = item.level(0)
        t = int(arr.shape[0])
        if spec.kind == "frames":
            refs = [FrameRef(item.item_id, i, 1, 1, label) for i in range(t)]
        else:
            refs = loop_refs(item.item_id, t, clip.frames, clip.stride, clip.hop or clip.span, label)
        return item.item_id, item, arr, refs

    yield from _ordered_map(loop, loops, open_threads)
    groups = list(dict.fromkeys(g for g, _ in stacks))
    opened = dict(zip(groups, _ordered_map(lambda g: _open(index, uri, g, storage_options), groups, open_threads)))
    for (group, split), members in stacks.items():
        item = opened[group]
        source_id = f"{group}{STACK_SEP}{split}"
        arr = stack_images(item, split)
        yield source_id, item, arr, [FrameRef(source_id, i, 1, 1, label) for i, label in sorted(members)]


def stack_images(item: Item, split: str) -> Any:
    """The (N, C, H, W) images array of one split of an image-stack item."""
    try:
        return cast(Any, item.group)[split]["images"]  # zarr's stub types a group's items as arrays
    except KeyError:
        raise UserError(f"item {item.item_id}: no images array for split {split!r} (a damaged stack?)") from None


def plan_stream(
    spec: StreamSpec, storage_options: dict[str, Any] | None = None, *, open_threads: int | None = None
) -> StreamPlan:
    """Plan ``spec``: list every sample of every source, opening each item's metadata once, ``open_threads``
    items at a time (None: OPEN_THREADS; 1: one after another). The plan does not depend on it."""
    sources, shapes = [], []
    for i, src in enumerate(spec.sources):
        planner = _plan_patches if spec.kind == "patches" else _plan_cine
        plan, shape = planner(i, src, spec, storage_options, open_threads)
        sources.append(plan)
        shapes.append(shape)
    for i, shape in enumerate(shapes[1:], 1):
        if shape != shapes[0]:
            field_name = "patch" if spec.kind == "patches" else "clip.size"
            raise UserError(
                f"{field_name}: sources[0] ({spec.sources[0].uri}) gives {'x'.join(map(str, shapes[0]))} "
                f"samples but sources[{i}] ({spec.sources[i].uri}) gives {'x'.join(map(str, shape))}"
            )
    sample_shape = tuple(shapes[0])
    if spec.kind == "clips":
        sample_shape = (spec.clip.frames, *sample_shape)
    total = spec.samples_per_epoch or sum(len(s.refs) for s in sources)
    return StreamPlan(spec=spec, sources=sources, samples_per_epoch=total, sample_shape=sample_shape)
