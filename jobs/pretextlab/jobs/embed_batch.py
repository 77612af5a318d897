"""Batch embedding of a whole catalog on Ray Data: every tissue patch of every slide, every frame of every
cine loop and every image of every image stack (collection shards, NPZ stacks), written per item as
feature bags (see :mod:`pretextlab.storage.bags`; an image stack's bag is ``<stack>-<split>``, one row
per image: row k is catalog item ``<stack>-<split>-<coords[k, 0]:06d>``).

Pipeline::

    slides: ZarrPatchDatasource (tissue-aware grid, chunk-aligned reads) -> map_batches(preprocess) -+
    cines, image stacks: FrameDatasource (frame / image ranges; read + preprocess in the read task) -+-> union
        -> map_batches(EncoderActor, concurrency=N actors, num_gpus=1 each when the cluster has GPUs)
        -> the driver gathers rows per item; a complete item is written (Zarr + HDF5, then its marker)

Preprocessing is :func:`pretextlab.evaluate.features.preprocess` and the forward is ``extract_features``,
so the features equal what evaluation and the HTTP service compute. Resumable per item: items with a
marker are skipped, the others are embedded from scratch.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pretextlab.core.errors import UserError
from pretextlab.models.encoder_io import EncoderCard, read_card
from pretextlab.storage import fs as sfs
from pretextlab.storage.bags import Bag, BagStore

#: encoder-input bytes a frame read task aims for (when frames_per_task is not set)
TASK_BYTES = 4 << 20


class EmbedConfig(BaseModel):
    """What to embed, with which encoder, where to, and how (CLI flags, or a YAML file plus overrides)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(min_length=1, description="encoder folder, or a registry spec with registry set")
    registry: str | None = Field(None, description="encoder registry root (local or s3://)")
    catalog: str = Field(min_length=1, description="store with a catalog (local folder or s3://)")
    dest: str = Field(min_length=1, description="where feature bags go (local folder or s3://)")
    patch_size: int | None = Field(None, ge=8, description="slide patch edge (default: the encoder's img_size)")
    level: int = Field(0, ge=0, description="slide pyramid level (ignored when mpp is set)")
    mpp: float | None = Field(None, gt=0, description="read slides at the level nearest this µm/px")
    overlap: int = Field(0, ge=0)
    min_tissue: float = Field(0.5, ge=0, le=1, description="minimum tissue share of a slide patch")
    frame_step: int = Field(1, ge=1, description="embed every n-th frame of cine loops (1: every frame)")
    items: list[str] | None = Field(None, description="only these item ids")
    modality: str | None = Field(None, description="only items of this modality")
    batch_size: int = Field(64, ge=1, description="images per forward")
    concurrency: int | None = Field(None, ge=1, description="encoder actors (default: GPUs, else 1)")
    actor_cpus: float = Field(1.0, gt=0, description="CPUs per encoder actor (and its torch threads)")
    actor_gpus: float | None = Field(None, ge=0, description="GPUs per actor (default: 1 when the cluster has GPUs)")
    chunks_per_task: int = Field(16, ge=1)
    frames_per_task: int | None = Field(
        None,
        ge=1,
        description=(
            "cine frames / stack images per read task (default: 64, or more for small images so a task "
            "carries ~4 MiB of encoder input: 1,024 at 32 px grey; Ray's per-task cost dominated small ones)"
        ),
    )
    ray_address: str | None = Field(None, description="Ray cluster (default: RAY_ADDRESS or a local one)")


@dataclass
class EncoderSource:
    """Where actors load the encoder from, and how the bags name it."""

    card: EncoderCard
    encoder_id: str
    folder: str | None = None
    registry: str | None = None
    spec: str | None = None

    def load(self):
        if self.folder is not None:
            from pretextlab.models.encoder_io import load_encoder

            return load_encoder(self.folder)
        from pretextlab.registry import EncoderRegistry

        model, card, _ = EncoderRegistry(self.registry).load(self.spec)
        return model, card


def resolve_encoder(encoder: str, registry: str | None) -> EncoderSource:
    """An encoder folder, or a registry spec (pinned to one version for the whole run)."""
    if registry:
        from pretextlab.registry import EncoderRegistry

        ref = EncoderRegistry(registry).resolve(encoder)
        return EncoderSource(card=ref.card, encoder_id=ref.id, registry=registry, spec=ref.id)
    if not Path(encoder).exists():
        raise UserError(f"{encoder}: no such encoder folder (for a registry spec, give --registry ROOT)")
    card = read_card(encoder)
    sha = (card.weights_sha256 or "")[:12]
    return EncoderSource(
        card=card, encoder_id=f"{card.name}@{sha}" if sha else card.name, folder=str(Path(encoder).resolve())
    )


@dataclass
class ItemPlan:
    item_id: str
    kind: str
    count: int
    attrs: dict[str, Any]
    channels: int = 3
    frames: list[int] = field(default_factory=list)


@dataclass
class EmbedReport:
    dest: str
    encoder: str
    embedded: list[str] = field(default_factory=list)
    skipped_complete: list[str] = field(default_factory=list)
    skipped_other: dict[str, str] = field(default_factory=dict)
    patches: int = 0
    frames: int = 0
    seconds: float = 0.0
    run_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "dest": self.dest,
            "encoder": self.encoder,
            "run_id": self.run_id,
            "seconds": round(self.seconds, 2),
            "embedded": len(self.embedded),
            "skipped_complete": len(self.skipped_complete),
            "skipped_other": self.skipped_other,
            "patches": self.patches,
            "frames": self.frames,
            "embedded_items": self.embedded,
            "skipped_items": self.skipped_complete,
        }

    def render(self) -> str:
        rate = (self.patches + self.frames) / self.seconds if self.seconds else 0.0
        lines = [
            f"embed {self.encoder} -> {self.dest}: {len(self.embedded)} items embedded "
            f"({self.patches} patches, {self.frames} frames, {rate:.0f}/s), "
            f"{len(self.skipped_complete)} already complete, {len(self.skipped_other)} skipped "
            f"({self.seconds:.1f} s)"
        ]
        lines += [f"  skipped {item}: {why}" for item, why in sorted(self.skipped_other.items())]
        return "\n".join(lines)


def spec_key(cfg: EmbedConfig, patch_size: int) -> dict[str, Any]:
    """What makes two runs' bags comparable: the same grid and frame step (stored in every marker)."""
    return {
        "patch_size": patch_size,
        "level": cfg.level,
        "mpp": cfg.mpp,
        "overlap": cfg.overlap,
        "min_tissue": cfg.min_tissue,
        "frame_step": cfg.frame_step,
    }


# -- Ray Data pieces (run in workers) --------------------------------------------------------------------------
def preprocess_batch(batch: dict[str, np.ndarray], card: EncoderCard) -> dict[str, np.ndarray]:
    """uint8 images -> the encoder's normalised input (the ``pixels`` column); the images are dropped."""
    from pretextlab.models.encoder_io import preprocess

    out = {k: v for k, v in batch.items() if k not in ("image", "label")}
    out["pixels"] = preprocess(np.ascontiguousarray(batch["image"]), card).numpy()
    return out


def read_frames(
    dest: str,
    item_id: str,
    frames: list[int],
    card: EncoderCard,
    storage_options: dict[str, Any] | None = None,
    stack: tuple[str, str] | None = None,
):
    """One read task: frames of a cine loop, or images of an image stack's split (``stack`` = (item,
    split)), preprocessed (sizes differ between items)."""
    from ray.data.block import BlockAccessor

    from pretextlab.models.encoder_io import preprocess
    from pretextlab.storage import open_item

    idx = np.asarray(frames, dtype=np.int64)
    if stack is not None:  # an image stack's split: rows of (N, C, Y, X) images
        item = open_item(dest, stack[0], storage_options)
        arr = item.group[stack[1]]["images"]
    else:
        item = open_item(dest, item_id, storage_options)
        arr = item.level(0)
    pixels = (
        np.ascontiguousarray(arr.oindex[idx].transpose(0, 2, 3, 1)) if len(idx) else np.zeros((0, 1, 1, 1), np.uint8)
    )
    if card.resolution is not None and len(idx) and stack is None:  # cine frames at the working resolution
        from pretextlab.storage.frames import working_frame

        spacing = item.card.get("pixel_spacing_mm")
        pixels = np.stack([working_frame(f, card.resolution, spacing, card.img_size) for f in pixels])
    batch = {
        "pixels": preprocess(pixels, card).numpy(),
        "item_id": np.array([item_id] * len(idx)),
        "level": np.zeros(len(idx), np.int32),
        "x": idx,
        "y": np.zeros(len(idx), np.int64),
    }
    return [BlockAccessor.batch_to_block(batch)]


def frame_dataset(
    dest: str, plans: list[ItemPlan], card: EncoderCard, per_task: int, storage_options: dict[str, Any] | None
):
    """A Ray Dataset of preprocessed cine frames, one read task per ``per_task`` frames of one loop."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    size = int(card.img_size) ** 2 * int(card.in_chans) * 4

    class FrameDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return sum(p.count for p in plans) * size

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
            tasks = []
            for p in plans:
                for start in range(0, len(p.frames), per_task):
                    chunk = p.frames[start : start + per_task]
                    meta = BlockMetadata(
                        num_rows=len(chunk), size_bytes=len(chunk) * size, exec_stats=None, input_files=None
                    )
                    tasks.append(
                        ReadTask(
                            partial(read_frames, dest, p.item_id, chunk, card, storage_options, _stack_of(p)),
                            meta,
                            per_task_row_limit=per_task_row_limit,
                        )
                    )
            return tasks

    return ray.data.read_datasource(FrameDatasource())


def _stack_of(plan: ItemPlan) -> tuple[str, str] | None:
    return (plan.attrs["stack"], plan.attrs["split"]) if plan.kind == "image" else None


class EncoderActor:
    """A Ray Data actor: loads the encoder once, embeds ``pixels`` batches (GPU when it has one)."""

    def __init__(self, source: EncoderSource, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.model, _ = source.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from pretextlab.evaluate.features import extract_features

        x = torch.from_numpy(np.ascontiguousarray(batch.pop("pixels")))
        batch["embedding"] = extract_features(self.model, x, batch_size=max(1, len(x))).numpy()
        return batch


# -- driver ---------------------------------------------------------------------------------------------------
def _plan(
    cfg: EmbedConfig,
    encoder_id: str,
    done: dict[str, dict[str, Any]],
    key: dict[str, Any],
    report: EmbedReport,
    storage_options: dict[str, Any] | None,
):
    from pretextlab.storage import open_item, read_catalog
    from pretextlab.storage.patches import PatchSpec, item_patches

    cat = read_catalog(cfg.catalog, storage_options)
    images = _stack_rows(cat)
    rows = cat[cat["kind"].isin(["slide", "cine"])]
    if cfg.items:
        known = set(rows["item_id"]) | set(images["bag"])
        missing = sorted(set(cfg.items) - known)
        if missing:
            raise UserError(f"items: not slide, cine or image-stack items of {cfg.catalog}: {', '.join(missing[:5])}")
        rows = rows[rows["item_id"].isin(cfg.items)]
        images = images[images["bag"].isin(cfg.items)]
    if cfg.modality:
        rows = rows[rows["modality"] == cfg.modality]
        images = images[images["modality"] == cfg.modality]
    for kind in sorted(set(cat["kind"]) - {"slide", "cine", "image"}):
        report.skipped_other[f"<{kind} rows>"] = f"{int((cat['kind'] == kind).sum())} {kind} rows: not embedded"
    spec = PatchSpec(
        patch_size=key["patch_size"], level=cfg.level, mpp=cfg.mpp, overlap=cfg.overlap, min_tissue=cfg.min_tissue
    )
    slides: list[tuple[ItemPlan, list]] = []
    cines: list[ItemPlan] = []
    for row in rows.sort_values("item_id").itertuples(index=False):
        item_id = str(row.item_id)
        mark = done.get(item_id)
        if mark is not None:
            report.skipped_complete.append(item_id)
            continue
        item = open_item(cfg.catalog, item_id, storage_options)
        if str(item.card.get("dtype", "uint8")) != "uint8":
            report.skipped_other[item_id] = f"{item.card.get('dtype')} pixels (only uint8 items are embedded)"
            continue
        attrs = {"encoder": encoder_id, "modality": item.modality, "source_store": sfs.normalize(cfg.catalog)}
        if item.kind == "slide":
            refs = item_patches(item, spec)
            level = refs[0].level if refs else cfg.level
            ds = item.downsample(level) if level < item.num_levels else 1.0
            attrs.update(
                patch_size=key["patch_size"],
                level=level,
                downsample=ds,
                patch_size_level0=int(round(key["patch_size"] * ds)),
                mpp=item.mpp,
            )
            slides.append((ItemPlan(item_id, "slide", len(refs), attrs, int(item.level(0).shape[0])), refs))
        else:
            t = int(item.level(0).shape[0])
            frames = list(range(0, t, cfg.frame_step))
            attrs.update(frame_step=cfg.frame_step, frames_total=t, frame_time_ms=item.card.get("frame_time_ms"))
            cines.append(ItemPlan(item_id, "cine", len(frames), attrs, frames=frames))
    # image stacks (collection shards, NPZ stacks): one bag per (stack item, split), a row per image
    for (bag_id, group, split), part in images.groupby(["bag", "group", "split_group"], sort=True):
        if bag_id in done:
            report.skipped_complete.append(str(bag_id))
            continue
        item = open_item(cfg.catalog, str(group), storage_options)
        if str(item.card.get("dtype", "uint8")) != "uint8":
            report.skipped_other[str(bag_id)] = f"{item.card.get('dtype')} pixels (only uint8 items are embedded)"
            continue
        index = sorted(int(i) for i in part["index"])
        attrs = {
            "encoder": encoder_id,
            "modality": item.modality,
            "source_store": sfs.normalize(cfg.catalog),
            "stack": str(group),
            "split": str(split),  # row k's catalog item id: f"{bag id}-{coords[k, 0]:06d}"
        }
        cines.append(ItemPlan(str(bag_id), "image", len(index), attrs, frames=index))
    return slides, cines


def _stack_rows(cat):
    """Catalog rows of image stacks with their bag id ``<stack>-<split>`` (the row id minus its index)."""
    rows = cat[(cat["kind"] == "image") & cat["group"].notna()] if "group" in cat else cat.iloc[:0]
    if "roi" in cat.columns:  # ROI mask images are annotations, not images to embed (as the stream says)
        rows = rows[~rows["item_id"].isin(set(cat["roi"].dropna().astype(str)))]
    from pretextlab.storage.stream import stack_split

    rows = rows.copy()
    rows["split_group"] = [stack_split(i, g) for i, g in zip(rows["item_id"], rows["group"], strict=True)]
    rows["bag"] = [f"{g}-{sp}" for g, sp in zip(rows["group"], rows["split_group"], strict=True)]
    return rows


def _bag(plan: ItemPlan, parts: list[dict[str, np.ndarray]]) -> Bag:
    if parts:
        emb = np.concatenate([p["embedding"] for p in parts]).astype(np.float32)
        xs = np.concatenate([p["x"] for p in parts]).astype(np.int64)
        ys = np.concatenate([p["y"] for p in parts]).astype(np.int64)
    else:
        emb, xs, ys = np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((xs, ys)) if plan.kind == "slide" else np.argsort(xs, kind="stable")
    emb, xs, ys = emb[order], xs[order], ys[order]
    if plan.kind == "slide":  # level-0 pixel coordinates, as CLAM/TRIDENT store them
        ds = float(plan.attrs.get("downsample", 1.0))
        coords = np.stack([np.round(xs * ds), np.round(ys * ds)], axis=1).astype(np.int64)
    else:
        coords = np.stack([xs, np.zeros_like(xs)], axis=1)
    return Bag(plan.item_id, plan.kind, emb, coords.reshape(-1, 2), plan.attrs)


def run_embed(cfg: EmbedConfig, progress: bool = True, storage_options: dict[str, Any] | None = None) -> EmbedReport:
    """Embed every not-yet-complete item of ``cfg.catalog`` into ``cfg.dest``."""
    import ray
    import ray.data

    from pretextlab.cluster import init_ray
    from pretextlab.storage import open_item
    from pretextlab.storage.datasource import ZarrPatchDatasource

    t0 = time.perf_counter()
    source = resolve_encoder(cfg.encoder, cfg.registry)
    card = source.card
    patch_size = cfg.patch_size or int(card.img_size)
    key = spec_key(cfg, patch_size)
    store = BagStore(cfg.dest, storage_options)
    done = store.markers()
    clash = [i for i, m in done.items() if m.get("encoder") != source.encoder_id or m.get("spec") != key]
    if clash:
        other = done[clash[0]]
        raise UserError(
            f"{cfg.dest}: holds features of another run ({other.get('encoder')}, {other.get('spec')}) "
            f"for {len(clash)} items, e.g. {clash[0]}; use another --to"
        )
    report = EmbedReport(dest=store.dest, encoder=source.encoder_id, run_id=uuid.uuid4().hex[:12])
    slides, cines = _plan(cfg, source.encoder_id, done, key, report, storage_options)
    plans: dict[str, ItemPlan] = {p.item_id: p for p, _ in slides}
    plans.update({p.item_id: p for p in cines})
    marker_base = {
        "encoder": source.encoder_id,
        "spec": key,
        "run_id": report.run_id,
        "catalog": sfs.normalize(cfg.catalog),
    }
    for p in [p for p in plans.values() if p.count == 0]:  # no tissue patch (or no frame): an empty bag
        store.write(_bag(p, []), marker_base)
        report.embedded.append(p.item_id)
        plans.pop(p.item_id)
    total = sum(p.count for p in plans.values())
    if total:
        init_ray(cfg.ray_address)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_stats_logs = False
        parts: list[Any] = []
        by_channels: dict[int, list] = defaultdict(list)
        for p, refs in slides:
            if p.item_id in plans:
                by_channels[p.channels].extend(refs)
        for channels, refs in by_channels.items():
            chunk = int(open_item(cfg.catalog, refs[0].item_id, storage_options).level(0).chunks[-1])
            ds = ray.data.read_datasource(
                ZarrPatchDatasource(cfg.catalog, refs, chunk, cfg.chunks_per_task, channels, storage_options)
            )
            # same resources as the read, so Ray Data fuses read and preprocess into one task
            parts.append(ds.map_batches(preprocess_batch, fn_kwargs={"card": card}, batch_size=None))
        live_cines = [p for p in cines if p.item_id in plans]
        if live_cines:
            per_task = cfg.frames_per_task or max(64, TASK_BYTES // (int(card.img_size) ** 2 * int(card.in_chans) * 4))
            parts.append(frame_dataset(cfg.catalog, live_cines, card, per_task, storage_options))
        ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
        gpus = float(ray.cluster_resources().get("GPU", 0))
        actor_gpus = cfg.actor_gpus if cfg.actor_gpus is not None else (1.0 if gpus >= 1 else 0.0)
        concurrency = cfg.concurrency or (max(1, int(gpus // actor_gpus)) if actor_gpus else 1)
        ds = ds.map_batches(
            EncoderActor,
            fn_constructor_kwargs={"source": source, "threads": max(1, math.ceil(cfg.actor_cpus))},
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_cpus=cfg.actor_cpus,
            num_gpus=actor_gpus or None,
        )
        _gather(ds, plans, store, marker_base, report, total, progress)
    embedded = set(report.embedded)
    report.patches = sum(p.count for p, _ in slides if p.item_id in embedded)
    report.frames = sum(p.count for p in cines if p.item_id in embedded)
    report.seconds = time.perf_counter() - t0
    store.write_summary(report.to_json())
    return report


def _gather(
    ds,
    plans: dict[str, ItemPlan],
    store: BagStore,
    marker_base: dict[str, Any],
    report: EmbedReport,
    total: int,
    progress: bool,
) -> None:
    """Stream embeddings out of Ray Data; write each item as soon as all its rows have arrived."""
    from tqdm import tqdm

    pending: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    seen: dict[str, int] = defaultdict(int)
    bar = tqdm(total=total, unit="img", desc="embed", disable=not progress, dynamic_ncols=True)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            ids = batch["item_id"]
            for item_id in np.unique(ids):
                sel = ids == item_id
                key = str(item_id)
                pending[key].append({k: batch[k][sel] for k in ("embedding", "x", "y")})
                seen[key] += int(sel.sum())
                plan = plans[key]
                if seen[key] > plan.count:
                    raise RuntimeError(f"item {key}: {seen[key]} rows for {plan.count} planned")
                if seen[key] == plan.count:
                    store.write(_bag(plan, pending.pop(key)), marker_base)
                    report.embedded.append(key)
                    bar.set_postfix_str(f"{len(report.embedded)}/{len(plans) + len(report.skipped_complete)} items")
            bar.update(len(ids))
    finally:
        bar.close()
    missing = sorted(set(plans) - set(report.embedded))
    if missing:
        raise RuntimeError(f"{len(missing)} items got fewer rows than planned, e.g. {missing[0]}")
