"""Write one source (a file, or the files of a DICOM series) as one item, atomically and resumably.

The item's card (group attributes) is written first with status "writing" and last with status
"complete": a crash anywhere in between leaves an item that every reader treats as absent, and the
next ingest deletes and rewrites it. A complete item whose source fingerprint is unchanged is skipped.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
import traceback
import warnings
from typing import Any, NotRequired, TypedDict

import dask
import dask.array as da
import numpy as np
import zarr

from pretextlab.storage import fs as sfs
from pretextlab.storage.layout import (
    CARD_KEY,
    LAYOUT_VERSION,
    STATUS_COMPLETE,
    STATUS_WRITING,
    is_complete,
    item_url,
    ngff_multiscales,
    read_card,
)
from pretextlab.storage.options import ZarrOptions
from pretextlab.storage.pyramid import tissue_mask
from pretextlab.storage.readers import (
    CineSource,
    ReaderError,
    SlideSource,
    Source,
    StackSource,
    get_reader,
)
from pretextlab.storage.results import ItemPlan, ItemResult, Status, one_line

__all__ = ["ItemPlan", "ItemResult", "Status", "one_line", "write_item"]


def write_item(
    plan: ItemPlan,
    dest: str,
    options: ZarrOptions | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ItemResult:
    """Ingest ``plan`` into ``dest``; never raises for a bad source (returns status "failed")."""
    options = options or ZarrOptions()
    t0 = time.perf_counter()
    url = item_url(dest, plan.item_id)
    result = ItemResult(item_id=plan.item_id, status="failed", source=plan.sources[0])
    try:
        card = read_card(url, storage_options)
        if (
            is_complete(card)
            and card.get("source", {}).get("fingerprint") == plan.fingerprint
            and card.get("layout_version") == LAYOUT_VERSION
        ):
            result.status = "skipped"
            return result
        if card is not None or sfs.exists(url, storage_options):
            sfs.remove_tree(url, storage_options)
        with sfs.local_copies(plan.sources, storage_options) as paths:
            result.source_bytes = sum(_size(p) for p in paths)
            if result.source_bytes == 0:
                raise ReaderError("empty file (0 bytes)")
            reader = get_reader(plan.reader)
            # Library warnings (pydicom's "JFIF marker but RGB", ...) become the item's warnings,
            # kept on its card, instead of noise in the worker logs.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                source = reader.open(paths, plan.modality)
                try:
                    checksum = _checksum(paths)
                    _write(source, plan, url, checksum, options, storage_options, caught)
                    result.warnings = list(source.info.warnings)
                finally:
                    source.info.close()
        result.status = "ingested"
    except Exception as exc:  # any failure of this item is reported, the rest goes on
        result.reason = one_line(exc)
        if not isinstance(exc, (ReaderError, OSError)):
            result.reason += f" [{traceback.extract_tb(exc.__traceback__)[-1].name}]"
        try:
            sfs.remove_tree(url, storage_options)
        except Exception:  # the card is not complete, so a leftover is still never read as an item
            pass
    finally:
        result.seconds = time.perf_counter() - t0
    return result


def _size(path: str) -> int:
    import os

    return os.path.getsize(path)


def _checksum(paths: list[str]) -> str:
    if len(paths) == 1:
        return sfs.sha256_file(paths[0])
    h = hashlib.sha256()
    for digest in sorted(sfs.sha256_file(p) for p in paths):
        h.update(digest.encode())
    return f"sha256:{h.hexdigest()}"


def _base_card(source: Source, plan: ItemPlan, checksum: str) -> dict[str, Any]:
    info = source.info
    return {
        "layout_version": LAYOUT_VERSION,
        "status": STATUS_WRITING,
        "item_id": plan.item_id,
        "kind": source.kind if source.kind != "stack" else "image",
        "modality": info.modality,
        "patient_id": info.patient_id,
        "study_id": info.study_id,
        "series_id": info.series_id,
        "source": {
            "uris": plan.sources,
            "reader": info.reader,
            "fingerprint": plan.fingerprint,
            "checksum": checksum,
            "metadata": info.metadata,
        },
        "warnings": info.warnings,
    }


def _write(
    source: Source,
    plan: ItemPlan,
    url: str,
    checksum: str,
    options: ZarrOptions,
    storage_options: dict[str, Any] | None,
    caught: list[warnings.WarningMessage] | None = None,
) -> None:
    options = options.resolved(source.kind)
    store = sfs.zarr_store(url, storage_options=storage_options)
    card = _base_card(source, plan, checksum)
    if options.lossy:  # which arrays took the lossy codec is in each array's zarr.json
        card["codec"] = {
            "name": options.compressor,
            "lossless": False,
            "quality": options.quality,
            "applies_to": "uint8 images of 1 or 3 channels (one per chunk); other arrays zstd",
        }
    root = zarr.open_group(store, mode="w", zarr_format=3, attributes={CARD_KEY: card})
    with dask.config.set(scheduler="threads", num_workers=options.threads):
        if isinstance(source, SlideSource):
            ome, extra = _write_slide(root, source, plan.item_id, options)
        elif isinstance(source, CineSource):
            ome, extra = _write_cine(root, source, plan.item_id, options)
        elif isinstance(source, StackSource):
            ome, extra = None, _write_stack(root, source, options)
        else:  # pragma: no cover - registry guarantees one of the three
            raise TypeError(type(source))
    card.update(extra)
    for w in caught or []:
        text = " ".join(str(w.message).split())[:300]
        if text not in source.info.warnings and not issubclass(w.category, DeprecationWarning):
            source.info.warnings.append(text)
    card["warnings"] = source.info.warnings
    card["status"] = STATUS_COMPLETE
    card["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    attrs: dict[str, Any] = {CARD_KEY: card}
    if ome is not None:
        attrs["ome"] = ome
    # The last write: one object (zarr.json), replaced atomically. Only now is the item complete.
    root.attrs.put(attrs)


def _create(root: zarr.Group, name: str, shape, chunks, dtype, dims, options: ZarrOptions) -> zarr.Array:
    chunks = tuple(int(c) for c in chunks)
    return root.create_array(
        name=name,
        shape=tuple(int(s) for s in shape),
        chunks=chunks,
        dtype=dtype,
        **options.array_codecs(chunks, dtype, dims),
        dimension_names=dims,
        fill_value=0,
    )


class LevelMeta(TypedDict):
    """One pyramid level in the card's ``levels``."""

    path: str
    shape: list[int]
    downsample: float
    from_source: bool
    source_jpeg: NotRequired[bool]  # the source's JPEG tiles are the chunks, as they were


def _level_shapes(source: SlideSource, options: ZarrOptions) -> tuple[list[tuple[int, int, int]], int]:
    """(C, Y, X) of every stored level, and how many of them are copied from the source.

    Source levels are kept as they are, down to the first whose longest side is at most
    ``min_level_size``; then 2x levels are built from the last of them down to that size.
    """
    shapes: list[tuple[int, int, int]] = []
    for level in source.levels:
        y, x, c = (int(n) for n in level.shape)
        shapes.append((c, y, x))
        if max(y, x) <= options.min_level_size:
            break
    copied = len(shapes)
    c, y, x = shapes[-1]
    while max(y, x) > options.min_level_size and min(y, x) >= 2:
        y, x = y // 2, x // 2
        shapes.append((c, y, x))
    return shapes, copied


def _write_slide(root: zarr.Group, source: SlideSource, item_id: str, options: ZarrOptions):
    from concurrent.futures import ThreadPoolExecutor

    from pretextlab.storage.bands import StageClock, dask_rows, write_bands

    chunk = options.chunk
    shapes, copied = _level_shapes(source, options)
    src_ds = source.downsamples or [1.0] * len(source.levels)
    dtype = np.dtype(source.levels[0].dtype)
    readers = list(source.row_readers or [])
    readers += [None] * (len(source.levels) - len(readers))
    # Under the jpeg codec a source level's JPEG tiles are kept as they are where they can be: the
    # level's chunks are then its tiles (240 px for Aperio SVS), whatever zarr.chunk says.
    kept: list[int | None] = [
        readers[i].jpeg_tile() if options.compressor == "jpeg" and hasattr(readers[i], "jpeg_tile") else None
        for i in range(copied)
    ]
    arrays = [
        _create(root, str(i), shape, (shape[0], edge, edge), dtype, ["c", "y", "x"], options)
        for i, shape in enumerate(shapes)
        for edge in [(kept[i] if i < copied else None) or chunk]
    ]
    downsamples = [float(d) for d in src_ds[:copied]]
    while len(downsamples) < len(shapes):
        downsamples.append(downsamples[-1] * 2.0)
    clock = StageClock()
    t0 = time.perf_counter()
    # One pool for the whole item: tile decoding, chunk encoding and box means share the item's
    # threads; each source level is read once, and the last one also feeds the 2x levels below it.
    with (
        ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="pretextlab-write") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="pretextlab-put") as io,
    ):
        for i in range(copied):
            fast = readers[i]
            reader = fast if fast is not None else dask_rows(source.levels[i])
            below = arrays[i:] if i == copied - 1 else arrays[i : i + 1]
            write_bands(reader, below, pool, io, clock, encoded=fast.jpeg_row if kept[i] else None)
    levels_meta: list[LevelMeta] = [
        {"path": str(i), "shape": list(shape), "downsample": downsamples[i], "from_source": i < copied}
        for i, shape in enumerate(shapes)
    ]
    for i, tile in enumerate(kept):
        if tile:
            levels_meta[i]["source_jpeg"] = True
    paths = [m["path"] for m in levels_meta]
    # Tissue mask on the coarsest level whose longest side is still >= 512 (level 0 for small images):
    # at most about 1,000 px a side, so it is computed in memory.
    mask_level = 0
    for i, meta in enumerate(levels_meta):
        if max(meta["shape"][1:]) >= 512:
            mask_level = i
    with clock.timed("mask"):
        mask, thr = tissue_mask(da.from_zarr(arrays[mask_level]))
        mask = mask.rechunk((chunk, chunk))
        marr = _create(root, "tissue_mask", mask.shape, (chunk, chunk), np.uint8, ["y", "x"], options)
        da.store(mask, marr, lock=False)  # type: ignore[arg-type]  # dask types targets as ndarrays; zarr arrays work
        fraction = float(da.from_zarr(marr).mean().compute())
    ome = ngff_multiscales(item_id, "cyx", paths, downsamples, source.mpp)
    level0 = levels_meta[0]["shape"]
    extra = {
        "axes": "cyx",
        "shape": level0,
        "dtype": str(dtype),
        "channels": level0[0],
        "levels": levels_meta,
        "mpp": source.mpp,
        "objective_power": source.objective_power,
        "tissue_mask": {
            "path": "tissue_mask",
            "level": mask_level,
            "downsample": downsamples[mask_level],
            "threshold": thr,
            "method": "otsu-saturation" if level0[0] >= 3 else "otsu-intensity",
            "tissue_fraction": round(fraction, 4),
        },
        "write": {"seconds": round(time.perf_counter() - t0, 3), "cpu_seconds": clock.as_dict()},
    }
    return ome, extra


def _write_cine(root: zarr.Group, source: CineSource, item_id: str, options: ZarrOptions):
    t, y, x, c = source.shape
    spatial = (y, x) if max(y, x) <= 2048 else (min(y, 1024), min(x, 1024))
    arr = _create(root, "0", (t, c, y, x), (1, c, *spatial), source.dtype, ["t", "c", "y", "x"], options)
    pos = 0
    for batch in source.batches():
        if batch.shape[1:] != (y, x, c):
            raise ReaderError(f"frame {pos} has shape {batch.shape[1:]}, expected {(y, x, c)}")
        if pos + len(batch) > t:
            raise ReaderError(f"source yields more than the {t} frames it declares")
        arr[pos : pos + len(batch)] = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(source.dtype, copy=False)
        pos += len(batch)
    if pos != t:
        raise ReaderError(f"source yielded {pos} frames, declared {t}")
    spacing = source.pixel_spacing_mm
    ome = ngff_multiscales(
        item_id,
        "tcyx",
        ["0"],
        [1.0],
        spacing[1] * 1000.0 if spacing else None,
        source.frame_time_ms / 1000.0 if source.frame_time_ms else None,
    )
    extra = {
        "axes": "tcyx",
        "shape": [t, c, y, x],
        "dtype": str(np.dtype(source.dtype)),
        "channels": c,
        "levels": [{"path": "0", "shape": [t, c, y, x], "downsample": 1.0, "from_source": True}],
        "frames": t,
        "frame_time_ms": source.frame_time_ms,
        "pixel_spacing_mm": list(spacing) if spacing else None,
    }
    return ome, extra


def _write_stack(root: zarr.Group, source: StackSource, options: ZarrOptions) -> dict[str, Any]:
    splits_meta = {}
    for split, (images, labels) in source.splits.items():
        n, y, x, c = images.shape
        per_chunk = max(1, min(n, (1 << 20) // max(1, y * x * c * images.dtype.itemsize)))
        group = root.create_group(split)
        arr = _create(group, "images", (n, c, y, x), (per_chunk, c, y, x), images.dtype, ["n", "c", "y", "x"], options)
        arr[:] = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        meta: dict[str, Any] = {"count": int(n), "shape": [c, y, x]}
        if labels is not None:
            larr = _create(group, "labels", labels.shape, labels.shape, labels.dtype, ["n", "k"], options)
            larr[:] = labels
            meta["label_width"] = int(labels.shape[1])
        splits_meta[split] = meta
    first = next(iter(source.splits.values()))[0]
    return {
        "axes": "ncyx",
        "dtype": str(first.dtype),
        "channels": int(first.shape[-1]),
        "shape": [int(first.shape[1]), int(first.shape[2])],
        "splits": splits_meta,
    }
