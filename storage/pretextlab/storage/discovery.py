"""Turn the user's SRC arguments into ingest plans: list files, sniff formats, group DICOM series,
gather folders of 2-D images into collection shards.

Runs in the driver and reads only listings and file headers (the first bytes, a DICOM header without
pixels, an image header). Problems with one source become a failed result for that source, not an
abort.

Which files are what (docs/storage.md, "Collections"):
- 2-D raster images (PNG, JPEG, BMP, WebP, single-page untiled TIFF up to 16 MP) *found by walking*
  a folder, glob or ``s3://`` prefix form a collection named after that folder, stored as stack
  shards (:mod:`pretextlab.storage.collection`). Named files stay one item each, unless
  ``collection=NAME`` is given (then every raster image, named or found, joins that collection).
  ``one_item_per_file=True`` turns collections off (each file its own item, as before).
- Slides, TIFF pyramids, DICOM, video and NPZ are always one item per file (or DICOM series).
- In a walked folder, files no reader claims whose suffix is no image suffix (CSV, TXT, JSON, MD)
  and hidden files are skipped and counted; a named file that is not an image fails loudly.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pydicom

from pretextlab.core.errors import UserError
from pretextlab.storage import fs as sfs
from pretextlab.storage.collection import SHARD_SIZE, RasterHeader, ShardPlan, raster_header, shard_fingerprint
from pretextlab.storage.readers import list_readers, sniff
from pretextlab.storage.readers.base import Modality
from pretextlab.storage.readers.dicom_common import is_dicom
from pretextlab.storage.results import ItemPlan, ItemResult, one_line

HEAD_BYTES = 132
_GLOB = re.compile(r"[*?\[]")


@dataclass
class Discovery:
    plans: list[ItemPlan] = field(default_factory=list)
    failures: list[ItemResult] = field(default_factory=list)
    shards: list[ShardPlan] = field(default_factory=list)
    #: files in walked folders that are not images (or hidden): skipped, counted in the report
    skipped: list[str] = field(default_factory=list)


@dataclass
class _File:
    url: str
    info: dict[str, Any]
    reader: str | None = None
    series: str | None = None
    error: str | None = None
    root: str = ""  # the folder walked to find it ("" for a named file)
    raster: RasterHeader | None = None
    skip: bool = False


def _image_suffixes() -> tuple[str, ...]:
    return tuple(sfx for r in list_readers() for sfx in r.suffixes)


def slug(text: str) -> str:
    """A safe item id: lowercase letters, digits, '.', '_' and '-'."""
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return s or "item"


def _stem(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def _failed(source: str, reason: str) -> ItemResult:
    return ItemResult(item_id=slug(_stem(source)), status="failed", source=source, reason=reason)


def _list(src: str, storage_options: dict[str, Any] | None) -> tuple[list[_File], int]:
    """The files of ``src`` and how many hidden / temporary files were left out."""
    fs, path = sfs.get_fs(src, storage_options)
    root = ""
    if _GLOB.search(path):
        found = fs.glob(path, detail=True)
        entries = {p: i for p, i in found.items() if i.get("type") != "directory"}
        root = sfs.to_url(fs, path[: _GLOB.search(path).start()].rsplit("/", 1)[0])  # type: ignore[union-attr]
    elif fs.isdir(path):
        entries = fs.find(path, detail=True)
        root = sfs.to_url(fs, path.rstrip("/"))
    elif fs.exists(path):
        entries = {path: fs.info(path)}
    else:
        raise FileNotFoundError(f"{src}: no such file, folder or object")
    out, hidden = [], 0
    for p, info in sorted(entries.items()):
        name = p.rsplit("/", 1)[-1]
        if name.startswith(".") or name.endswith(".tmp") or "/." in p[len(path) :]:
            hidden += 1
            continue
        out.append(_File(url=sfs.to_url(fs, p), info=info, root=root))
    return out, hidden


def _inspect(f: _File, storage_options: dict[str, Any] | None, collect: bool = False) -> _File:
    try:
        if int(f.info.get("size") or 0) == 0:
            f.error = "empty file (0 bytes)"
            return f
        if sfs.is_remote(f.url):
            fs, path = sfs.get_fs(f.url, storage_options)
            opened = fs.open(path, "rb")
        else:  # the builtin open: fsspec's local file object costs more than reading a header
            # a listed file's URL is an absolute path already: no pathlib round trip per file
            path = f.url if f.url.startswith("/") else sfs.normalize(f.url)
            opened = open(path, "rb")
        with opened as fh:
            head = fh.read(HEAD_BYTES)
            header = None
            if is_dicom(head):
                fh.seek(0)
                try:
                    header = pydicom.dcmread(fh, stop_before_pixels=True)
                except Exception as exc:
                    f.error = f"not a readable DICOM file: {one_line(exc)}"
                    return f
            f.reader = sniff(head, path, header)
            if collect and f.reader in ("image", "tiff"):
                fh.seek(0)
                f.raster = raster_header(fh, path)
        if f.reader is None:
            if f.root and not path.lower().endswith(_image_suffixes()):
                f.skip = True  # a CSV, README, JSON... beside the images in a walked folder
            f.error = "not a recognised image format (supported: SVS/TIFF, DICOM, PNG/JPEG, MP4/AVI, NPZ)"
        elif f.reader == "dicom-wsi":
            assert header is not None  # the dicom-wsi sniff matches only a parsed DICOM header
            f.series = str(header.get("SeriesInstanceUID", "")) or f.url
    except Exception as exc:
        f.error = one_line(exc)
    return f


def discover(
    sources: list[str],
    modality: Modality | None = None,
    storage_options: dict[str, Any] | None = None,
    threads: int = 16,
    exclude: list[str] | None = None,
    one_item_per_file: bool = False,
    collection: str | None = None,
    shard_size: int = SHARD_SIZE,
    labels_from_folders: bool = False,
) -> Discovery:
    """Plans for every item under ``sources`` (files, folders, globs, ``s3://`` prefixes).

    Files under any ``exclude`` prefix (the destination store, when it sits inside a source
    folder) are not sources. Raster images found in folders become collection shards (see the
    module docstring) unless ``one_item_per_file``.
    """
    skip = tuple(sfs.normalize(e).rstrip("/") + "/" for e in exclude or [])
    if not sources:
        raise UserError("no sources given: pass files, folders, globs or s3:// prefixes")
    out = Discovery()
    files: list[_File] = []
    seen: set[str] = set()
    for src in sources:
        src = sfs.normalize(src)
        try:
            listed, hidden = _list(src, storage_options)
        except Exception as exc:
            out.failures.append(_failed(src, one_line(exc)))
            continue
        out.skipped.extend(["<hidden file>"] * hidden)
        if not listed:
            out.failures.append(_failed(src, "no files found"))
        for f in listed:
            if skip and f.url.startswith(skip):
                continue
            if f.url not in seen:
                seen.add(f.url)
                files.append(f)
    collect = collection is not None or not one_item_per_file  # a named collection always collects

    def inspect(f: _File) -> _File:
        return _inspect(f, storage_options, collect and bool(f.root or collection))

    if any(sfs.is_remote(f.url) for f in files):  # object storage: latency-bound, so many in flight
        with ThreadPoolExecutor(max_workers=threads) as pool:
            files = list(pool.map(inspect, files))
    else:  # local headers read in ~40 us: a thread pool's per-file cost (~100 us) would dominate
        files = [inspect(f) for f in files]

    singles: list[tuple[str, list[_File]]] = []
    series: dict[str, list[_File]] = defaultdict(list)
    rasters: list[_File] = []
    for f in files:
        if f.skip:
            out.skipped.append(f.url)
        elif f.error:
            out.failures.append(_failed(f.url, f.error))
        elif f.raster is not None:
            rasters.append(f)
        elif f.series:
            series[f.series].append(f)
        else:
            singles.append((slug(_stem(f.url)), [f]))
    dirs: dict[str, set[str]] = defaultdict(set)
    for uid, members in series.items():
        for m in members:
            dirs[m.url.rsplit("/", 1)[0]].add(uid)
    for uid, members in series.items():
        members.sort(key=lambda m: m.url)
        parent = members[0].url.rsplit("/", 1)[0]
        base = slug(parent.rsplit("/", 1)[-1])
        if len(dirs[parent]) > 1:
            base = f"{base}-{_short_hash(uid)}"
        singles.append((base, members))

    counts: dict[str, int] = defaultdict(int)
    for base, _ in singles:
        counts[base] += 1
    for base, members in singles:
        item_id = base if counts[base] == 1 else f"{base}-{_short_hash(members[0].url)}"
        out.plans.append(
            ItemPlan(
                item_id=item_id,
                sources=[m.url for m in members],
                reader=members[0].reader or "",
                fingerprint="|".join(sfs.fingerprint(m.info) for m in members),
                modality=modality,
            )
        )
    out.plans.sort(key=lambda p: p.item_id)
    if rasters:
        from pretextlab.modalities import modality_for_source

        mod = modality or modality_for_source("image")[0]
        taken = {p.item_id for p in out.plans}
        out.shards = plan_shards(rasters, mod, collection, shard_size, labels_from_folders, taken)
    return out


def _common_root(urls: list[str]) -> str:
    parents = [u.rsplit("/", 1)[0] for u in urls]
    prefix = os.path.commonprefix(parents)
    if all(p == prefix or p.startswith(prefix + "/") for p in parents):
        return prefix
    return prefix.rsplit("/", 1)[0]


def plan_shards(
    files: list[_File],
    modality: Modality,
    collection: str | None,
    shard_size: int,
    labels_from_folders: bool,
    taken: set[str],
) -> list[ShardPlan]:
    """Collections -> shape groups -> shards of up to ``shard_size`` images, ids stable across runs:
    ``<collection>-<H>x<W>x<C>[-<dtype>]-<shard:04d>``."""
    from pretextlab.modalities import get_modality

    grayscale = bool(get_modality(modality).reader.grayscale)  # decided here: shard tasks stay light
    by_root: dict[str, list[_File]] = defaultdict(list)
    for f in files:
        by_root["" if collection else f.root].append(f)
    names: dict[str, str] = {}
    for root in sorted(by_root):
        base = slug(collection) if collection else slug(root.rstrip("/").rsplit("/", 1)[-1])
        if base in names.values() or base in taken:
            base = f"{base}-{_short_hash(root)}"
        names[root] = base
    shards = []
    for root, group in sorted(by_root.items()):
        if collection:
            root = _common_root([f.url for f in group])
        by_shape: dict[tuple[int, int, int, str], list[_File]] = defaultdict(list)
        for f in group:
            r = f.raster
            assert r is not None
            by_shape[(r.height, r.width, r.channels, r.dtype)].append(f)
        for (h, w, c, dtype), same in sorted(by_shape.items()):
            same.sort(key=lambda f: f.url)
            tag = f"{h}x{w}x{c}" + ("" if dtype == "uint8" else f"-{dtype}")
            count = -(-len(same) // shard_size)  # shards of equal size (+-1), each at most shard_size
            for k in range(count):
                chunk = same[k * len(same) // count : (k + 1) * len(same) // count]
                rel = [f.url[len(root) + 1 :] for f in chunk]
                fp = shard_fingerprint(
                    [f"{r}|{sfs.fingerprint(f.info)}" for r, f in zip(rel, chunk, strict=True)],
                    {"modality": modality, "folders": labels_from_folders},
                )
                shards.append(
                    ShardPlan(
                        item_id=f"{names['' if collection else root]}-{tag}-{k:04d}",
                        collection=names["" if collection else root],
                        root=root,
                        sources=[f.url for f in chunk],
                        relpaths=rel,
                        shape=(h, w, c),
                        dtype=dtype,
                        fingerprint=fp,
                        modality=modality,
                        labels_from_folders=labels_from_folders,
                        grayscale=grayscale,
                    )
                )
    return shards
