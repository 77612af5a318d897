"""Turn the user's SRC arguments into ingest plans: list files, sniff formats, group DICOM series.

Runs in the driver and reads only listings and file headers (the first bytes, or a DICOM header
without pixels). Problems with one source become a failed result for that source, not an abort.
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
from pretextlab.storage.readers import sniff
from pretextlab.storage.readers.base import Modality
from pretextlab.storage.readers.dicom_common import is_dicom
from pretextlab.storage.writer import ItemPlan, ItemResult, one_line

HEAD_BYTES = 132
_GLOB = re.compile(r"[*?\[]")


@dataclass
class Discovery:
    plans: list[ItemPlan] = field(default_factory=list)
    failures: list[ItemResult] = field(default_factory=list)


@dataclass
class _File:
    url: str
    info: dict[str, Any]
    reader: str | None = None
    series: str | None = None
    error: str | None = None


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


def _list(src: str, storage_options: dict[str, Any] | None) -> list[_File]:
    fs, path = sfs.get_fs(src, storage_options)
    if _GLOB.search(path):
        found = fs.glob(path, detail=True)
        entries = {p: i for p, i in found.items() if i.get("type") != "directory"}
    elif fs.isdir(path):
        entries = fs.find(path, detail=True)
    elif fs.exists(path):
        entries = {path: fs.info(path)}
    else:
        raise FileNotFoundError(f"{src}: no such file, folder or object")
    out = []
    for p, info in sorted(entries.items()):
        name = p.rsplit("/", 1)[-1]
        if name.startswith(".") or name.endswith(".tmp"):
            continue
        out.append(_File(url=sfs.to_url(fs, p), info=info))
    return out


def _inspect(f: _File, storage_options: dict[str, Any] | None) -> _File:
    try:
        if int(f.info.get("size") or 0) == 0:
            f.error = "empty file (0 bytes)"
            return f
        fs, path = sfs.get_fs(f.url, storage_options)
        with fs.open(path, "rb") as fh:
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
        if f.reader is None:
            f.error = "not a recognised image format (supported: SVS/TIFF, DICOM, PNG/JPEG, MP4/AVI, NPZ)"
        elif f.reader == "dicom-wsi":
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
) -> Discovery:
    """Plans for every item under ``sources`` (files, folders, globs, ``s3://`` prefixes).

    Files under any ``exclude`` prefix (the destination store, when it sits inside a source
    folder) are not sources.
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
            listed = _list(src, storage_options)
        except Exception as exc:
            out.failures.append(_failed(src, one_line(exc)))
            continue
        if not listed:
            out.failures.append(_failed(src, "no files found"))
        for f in listed:
            if skip and f.url.startswith(skip):
                continue
            if f.url not in seen:
                seen.add(f.url)
                files.append(f)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        files = list(pool.map(lambda f: _inspect(f, storage_options), files))

    singles: list[tuple[str, list[_File]]] = []
    series: dict[str, list[_File]] = defaultdict(list)
    for f in files:
        if f.error:
            out.failures.append(_failed(f.url, f.error))
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
    return out
