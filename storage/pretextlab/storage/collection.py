"""Collections: folders of same-kind 2-D images (tiles, stills) written as stack items, one per shard.

Why: a 100,000-tile dataset written as 100,000 one-level slide items is millions of files and hours
of per-item overhead. A collection shard is one item holding up to ``shard_size`` images of one
shape and dtype as an (N, C, Y, X) Zarr array chunked per image (Zarr v3 sharding keeps that to one
file per ``images_per_file`` images). It is the layout NPZ stacks already use (kind "image", subgroup
``all/images``), so the catalog (one row per image), evaluation and every reader of image rows work
unchanged. Each image's source file, folder label and grey/colour decision live on the shard's card.

Which files make a collection (decided in :mod:`pretextlab.storage.discovery`): 2-D raster images
(PNG, JPEG, BMP, WebP, and single-page untiled TIFFs up to 16 MP) found by walking a folder, glob or
``s3://`` prefix. Explicitly named files stay one item each unless a collection name is given; slides,
TIFF pyramids, DICOM, video and NPZ are never collected. ``one_item_per_file`` turns collections off.

A shard is atomic like every item: its card says "writing" until the very last write, so a crash
mid-shard leaves an item every reader treats as absent, and the next run rewrites exactly the shards
that are missing or changed. A corrupt image is reported with its reason and left out; the rest of
the shard is written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import numpy as np
import zarr
from PIL import Image

from pretextlab.storage import fs as sfs
from pretextlab.storage.codecs import CODECS, JPEG_EOI, decode_jpeg, jpeg_segments, strip_jpeg_metadata
from pretextlab.storage.layout import (
    CARD_KEY,
    LAYOUT_VERSION,
    STATUS_COMPLETE,
    STATUS_WRITING,
    is_complete,
    item_url,
    read_card,
)
from pretextlab.storage.options import ZarrOptions
from pretextlab.storage.results import ItemResult, one_line

Image.MAX_IMAGE_PIXELS = 1 << 30

#: the most images per stack item (shard) unless configured. A shard is one Ray task; 1,024 keeps a
#: few-thousand-image folder spread over several cores and a 100k-image set at ~100 items.
SHARD_SIZE = 1024
#: bytes read for a JPEG's frame header in discovery (a 224 px tile is ~2.5 kB; a big EXIF block
#: pushes the header further and Pillow reads it instead)
JPEG_HEAD_BYTES = 16 << 10
#: the largest single-page TIFF taken into a collection (bigger ones are slides)
MAX_TIFF_PIXELS = 4096 * 4096
#: a grey image stored as RGB: channels equal within this many grey levels
GREY_TOLERANCE = 1
#: subgroup of images that keep their colour in a grayscale modality (Doppler overlays)
COLOUR_GROUP = "rgb"
MAIN_GROUP = "all"

# Pillow mode -> (mode to convert to or None, channels, dtype)
_MODES: dict[str, tuple[str | None, int, str]] = {
    "L": (None, 1, "uint8"),
    "1": ("L", 1, "uint8"),
    "LA": ("L", 1, "uint8"),
    "I;16": (None, 1, "uint16"),
    "I;16L": (None, 1, "uint16"),
    "I;16B": (None, 1, "uint16"),
    "I;16N": (None, 1, "uint16"),
    "I": (None, 1, "uint16"),  # 16-bit PNG/TIFF opened as 32-bit int: stored as uint16 (checked on decode)
    "RGB": (None, 3, "uint8"),
}


def target_of(mode: str) -> tuple[str | None, int, str]:
    """How an image of Pillow ``mode`` is stored: (convert-to mode, channels, dtype). Others become RGB."""
    return _MODES.get(mode, ("RGB", 3, "uint8"))


@dataclass(frozen=True)
class RasterHeader:
    """What the header of a 2-D raster image says, read without decoding pixels."""

    height: int
    width: int
    channels: int
    dtype: str
    format: str


#: JPEG start-of-frame markers Pillow opens (baseline, extended, progressive, lossless; Huffman and
#: arithmetic); DHT (C4), JPG (C8) and DAC (CC) share the range but are not frames
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_header(head: bytes) -> RasterHeader | None:
    """The frame header of a plain 8-bit grey or colour JPEG read from its first bytes, or None when
    anything is unusual (another format, an MPO, CMYK, 12-bit, markers cut off before the start of
    scan, ``head`` too short to reach it): Pillow decides those.

    Why: discovery reads the header of every file in the driver before any shard starts (one core
    idle meanwhile), and Pillow's ``Image.open`` was most of it: a 20,000-tile folder's discovery took
    1.1-1.5 s with it, 0.7-0.8 s with this marker walk. What it returns is what Pillow's header gives
    for such a file (mode L or RGB; checked against Pillow in the tests)."""
    segments = jpeg_segments(head)
    if segments is None or segments[-1][2] > len(head):  # the scan's header must be whole too
        return None
    found: RasterHeader | None = None
    for marker, i, end in segments:
        if marker == 0xE2 and head[i + 4 : i + 8] == b"MPF\0":
            return None  # multi-picture (MPO): Pillow's own class and frame count
        if marker in _JPEG_SOF:
            precision = head[i + 4]
            height = int.from_bytes(head[i + 5 : i + 7], "big")
            width = int.from_bytes(head[i + 7 : i + 9], "big")
            components = head[i + 9] if end - i - 2 >= 8 else 0
            if found is not None or precision != 8 or components not in (1, 3) or height == 0 or width == 0:
                return None
            found = RasterHeader(height, width, components, "uint8", "jpeg")
    return found


def raster_header(fh: Any, name: str) -> RasterHeader | None:
    """The header of a collectable 2-D image, or None when the file is not one (a slide TIFF, a
    multi-page file, an unreadable header): those take the one-item-per-file path."""
    try:
        start = fh.tell()
        fast = jpeg_header(fh.read(JPEG_HEAD_BYTES))
        if fast is not None:
            return fast
        fh.seek(start)
        with Image.open(fh) as im:
            fmt = (im.format or "").upper()
            if fmt == "TIFF":
                if name.lower().endswith(".svs") or getattr(im, "n_frames", 1) != 1:
                    return None
                if 322 in getattr(im, "tag_v2", {}) or im.width * im.height > MAX_TIFF_PIXELS:  # 322: TileWidth
                    return None
            elif getattr(im, "n_frames", 1) != 1 and fmt not in ("PNG", "JPEG", "MPO"):
                return None
            _, c, dtype = target_of(im.mode)
            return RasterHeader(int(im.height), int(im.width), c, dtype, fmt.lower())
    except Exception:
        return None


def decode_fast_jpeg(data: bytes) -> np.ndarray | None:
    """(Y, X, C) pixels of a complete grey or YCbCr/RGB JPEG through libjpeg-turbo (imagecodecs), about
    twice as fast as Pillow's loop and equal to it pixel for pixel; None for anything else (CMYK,
    a file cut short: libjpeg-turbo would fill the missing rows with grey instead of failing), which
    then takes Pillow's path and its errors."""
    if not (data.startswith(b"\xff\xd8") and data.rstrip(b"\0\r\n ").endswith(JPEG_EOI)):
        return None
    try:
        arr = decode_jpeg(data)
    except Exception:
        return None
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        return None
    return np.ascontiguousarray(arr[..., None] if arr.ndim == 2 else arr)


def decode_image(data: bytes) -> np.ndarray:
    """Pixels of one encoded image as (Y, X, C), converted as :func:`target_of` says."""
    fast = decode_fast_jpeg(data)
    if fast is not None:
        return fast
    with Image.open(io.BytesIO(data)) as src:
        src.load()
        mode = src.mode
        convert, _, dtype = target_of(mode)
        arr = np.asarray(src.convert(convert) if convert is not None else src)
    if arr.dtype != np.dtype(dtype):
        if arr.dtype.kind in "iu" and np.dtype(dtype) == np.uint16:
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ValueError(f"{arr.dtype} pixels outside 0..65535 cannot be stored as uint16")
            arr = arr.astype(np.uint16)
        elif arr.dtype.byteorder not in "=|" and arr.dtype.newbyteorder("=") == np.dtype(dtype):
            arr = arr.astype(np.dtype(dtype))
        else:
            raise ValueError(f"unexpected pixel type {arr.dtype} for mode {mode}")
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.ascontiguousarray(arr)


def grey_of(rgb: np.ndarray, tolerance: int = GREY_TOLERANCE) -> np.ndarray | None:
    """One channel when the RGB channels of ``rgb`` (Y, X, 3) agree within ``tolerance``, else None."""
    x = rgb.astype(np.int16)
    if int(np.abs(x[..., 0] - x[..., 1]).max(initial=0)) > tolerance:
        return None
    if int(np.abs(x[..., 0] - x[..., 2]).max(initial=0)) > tolerance:
        return None
    return np.ascontiguousarray(((x.sum(axis=2) + 1) // 3).astype(rgb.dtype)[..., None])


@dataclass
class ShardPlan:
    """One collection shard: which files, of which shape, into which item."""

    item_id: str
    collection: str
    root: str  # the folder the relative paths are under
    sources: list[str]  # full URLs
    relpaths: list[str]
    shape: tuple[int, int, int]  # (H, W, C) from the headers
    dtype: str
    fingerprint: str
    modality: str
    labels_from_folders: bool = False
    source_bytes: list[int] = field(default_factory=list)
    grayscale: bool = False  # the modality's images are one channel: equal-channel RGB is stored as grey


def folder_label(relpath: str) -> str | None:
    """The class of an image in an ImageFolder layout: its parent folder's name (None at the root)."""
    parts = relpath.split("/")
    return parts[-2] if len(parts) >= 2 else None


def shard_fingerprint(members: list[str], options: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for m in members:
        h.update(m.encode())
        h.update(b"\0")
    h.update(repr(sorted(options.items())).encode())
    return f"sha256:{h.hexdigest()[:32]}"


def _reader_for(root: str, storage_options: dict[str, Any] | None) -> Callable[[str], bytes]:
    if not sfs.is_remote(root):

        def read_local(url: str) -> bytes:
            with open(url, "rb") as fh:
                return fh.read()

        return read_local
    fs, _ = sfs.get_fs(root, storage_options)
    return lambda url: fs.cat_file(sfs.get_fs(url, storage_options)[1])


class _Group:
    """One (N, C, Y, X) array of a shard, filled in order, trimmed to its count at the end.

    The array is a Zarr v3 array with one image per chunk and ``per_file`` chunks per shard file. Its
    metadata comes from zarr; the shard files are assembled here from chunks the decode threads
    already compressed (the same Blosc frames zarr writes, the sharding codec's index at the end with
    its crc32c): zarr's own per-chunk path cost ~0.9 ms per image, more than decoding a 224 px JPEG.
    Reading goes through zarr, so a mistake here shows as a pixel mismatch in the round-trip tests.
    """

    def __init__(
        self,
        root: zarr.Group,
        url: str,
        name: str,
        capacity: int,
        shape: tuple[int, int, int],
        dtype: str,
        options: ZarrOptions,
        storage_options: dict[str, Any] | None,
    ) -> None:
        h, w, c = shape
        per_file = max(1, min(capacity, options.collection_file_bytes // max(1, h * w * c * np.dtype(dtype).itemsize)))
        self.name, self.shape, self.dtype = name, shape, dtype
        self.array = root.create_group(name).create_array(
            name="images",
            shape=(capacity, c, h, w),
            chunks=(1, c, h, w),
            shards=(per_file, c, h, w),
            dtype=dtype,
            **image_codecs(options, (1, c, h, w), dtype),
            dimension_names=["n", "c", "y", "x"],
            fill_value=0,
        )
        self.url = sfs.join(url, name, "images")
        self.storage_options = storage_options
        self.per_file = per_file
        self.count = 0
        self.buffer: list[bytes] = []
        self.relpaths: list[str] = []

    def add(self, chunk: bytes, relpath: str) -> None:
        self.buffer.append(chunk)
        self.relpaths.append(relpath)
        if len(self.buffer) >= self.per_file:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        index = np.full((self.per_file, 2), np.iinfo(np.uint64).max, dtype="<u8")
        offset = 0
        for j, chunk in enumerate(self.buffer):
            index[j] = (offset, len(chunk))
            offset += len(chunk)
        raw_index = index.tobytes()
        crc = np.array([google_crc32c.value(raw_index)], dtype="<u4").tobytes()
        key = f"c/{self.count // self.per_file}/0/0/0"
        sfs.atomic_write_bytes(sfs.join(self.url, key), b"".join([*self.buffer, raw_index, crc]), self.storage_options)
        self.count += len(self.buffer)
        self.buffer = []

    def finish(self) -> dict[str, Any]:
        self.flush()
        if self.count != self.array.shape[0]:
            self.array.resize((self.count, *self.array.shape[1:]))
        h, w, c = self.shape
        return {"count": self.count, "shape": [c, h, w], "files": self.relpaths}


def image_codecs(options: ZarrOptions, chunks: tuple[int, int, int, int], dtype: str) -> dict[str, Any]:
    """Codecs of a collection array. zstd is Zarr v3's own ``zstd`` codec here, without Blosc's
    framing: on one 224 px tile per chunk it compressed ~25 % faster than Blosc-zstd (0.34 vs 0.45 ms)
    for ~8 % more bytes, and compression is the largest cost of a lossless collection ingest."""
    options = options.resolved("collection")
    if options.compressor == "zstd" and not options.lossy_fits(chunks, dtype, ["n", "c", "y", "x"]):
        from zarr.codecs import ZstdCodec

        return {"compressors": [ZstdCodec(level=options.level)]}
    return options.array_codecs(chunks, dtype, ["n", "c", "y", "x"])


def chunk_encoder(options: ZarrOptions, dtype: str, channels: int) -> Callable[[np.ndarray], bytes]:
    """(Y, X, C) image -> the encoded bytes of its (1, C, Y, X) chunk, as :func:`image_codecs` encodes."""
    options = options.resolved("collection")
    if options.lossy_fits((1, channels, 1, 1), dtype, ["n", "c", "y", "x"]):
        return CODECS[options.compressor](quality=options.quality).encode_image
    if not options.codecs():
        return lambda img: np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes()
    if options.compressor == "zstd":
        return _zstd_encoder(options.level)
    from numcodecs import Blosc

    cname = "zstd" if options.lossy else options.compressor
    shuffle = Blosc.SHUFFLE if np.dtype(dtype).itemsize > 1 else Blosc.NOSHUFFLE  # as options.codecs declares
    blosc = Blosc(cname=cname, clevel=options.level, shuffle=shuffle, blocksize=0)
    return lambda img: bytes(blosc.encode(np.ascontiguousarray(img.transpose(2, 0, 1))))


def _zstd_encoder(level: int) -> Callable[[np.ndarray], bytes]:
    """(Y, X, C) image -> one zstd frame of its (C, Y, X) bytes, the frame Zarr's ``zstd`` codec writes
    and reads (byte for byte what numcodecs' Zstd writes at the same level: same libzstd call).

    Per image this is the largest cost of a lossless collection ingest, so: the (C, Y, X) copy goes
    into a buffer each decode thread keeps (a fresh 150 kB array per 224 px tile cost page faults), and
    the frame comes from ``imagecodecs.zstd_encode`` straight into the returned bytes (numcodecs
    returned an array that ``bytes()`` copied again). Both release the GIL while compressing. Measured
    on 2,000 224 px tiles, one thread: decode + transpose + compress 0.70 -> 0.58 ms per image."""
    import threading

    import imagecodecs

    local = threading.local()

    def encode(img: np.ndarray) -> bytes:
        shape = (img.shape[2], img.shape[0], img.shape[1])
        buf = getattr(local, "buf", None)
        if buf is None or buf.shape != shape or buf.dtype != img.dtype:
            buf = local.buf = np.empty(shape, img.dtype)
        np.copyto(buf, img.transpose(2, 0, 1))
        return bytes(imagecodecs.zstd_encode(buf, level=level))  # type: ignore[arg-type]  # any buffer works

    return encode


def codec_note(options: ZarrOptions, dtype: str, channels: int) -> dict[str, Any]:
    """What the card says about how pixels are stored (lossy or not, and at which quality)."""
    options = options.resolved("collection")
    if options.lossy_fits((1, channels, 1, 1), dtype, ["n", "c", "y", "x"]):
        note: dict[str, Any] = {"name": options.compressor, "lossless": False, "quality": options.quality}
        if options.compressor == "jpeg":
            note["jpeg_sources"] = "kept as they are (metadata segments dropped)"
        return note
    return {"name": "zstd" if options.lossy else options.compressor, "lossless": True}


def write_shard(
    plan: ShardPlan,
    dest: str,
    options: ZarrOptions | None = None,
    storage_options: dict[str, Any] | None = None,
    threads: int = 4,
) -> list[ItemResult]:
    """Write one shard; returns its result first, then one failed result per image left out.

    Never raises for bad images (they are reported); a shard whose every image fails is not written.
    """
    options = (options or ZarrOptions()).resolved("collection")
    t0 = time.perf_counter()
    url = item_url(dest, plan.item_id)
    result = ItemResult(item_id=plan.item_id, status="failed", source=plan.root)
    bad: list[ItemResult] = []
    try:
        card = read_card(url, storage_options)
        if (
            card is not None
            and is_complete(card)
            and card.get("source", {}).get("fingerprint") == plan.fingerprint
            and card.get("layout_version") == LAYOUT_VERSION
        ):
            result.status = "skipped"
            failed = card.get("collection", {}).get("failed", {})
            bad = [ItemResult(plan.item_id, "failed", s, reason=f"(earlier run) {r}") for s, r in failed.items()]
            return [result, *bad]
        if card is not None or sfs.exists(url, storage_options):
            sfs.remove_tree(url, storage_options)
        grayscale = plan.grayscale and plan.shape[2] == 3
        card = {
            "layout_version": LAYOUT_VERSION,
            "status": STATUS_WRITING,
            "item_id": plan.item_id,
            "kind": "image",
            "modality": plan.modality,
            "patient_id": None,
            "study_id": None,
            "series_id": None,
            "source": {
                "uris": [plan.root],
                "reader": "collection",
                "fingerprint": plan.fingerprint,
                "checksum": plan.fingerprint,
                "metadata": {"format": "collection"},
            },
            "warnings": [],
        }
        root = zarr.open_group(
            sfs.zarr_store(url, storage_options=storage_options), mode="w", zarr_format=3, attributes={CARD_KEY: card}
        )
        h, w, c = plan.shape
        n = len(plan.sources)
        groups: dict[str, _Group] = {}

        def group(name: str, shape: tuple[int, int, int]) -> _Group:
            if name not in groups:
                groups[name] = _Group(root, url, name, n, shape, plan.dtype, options, storage_options)
            return groups[name]

        read = _reader_for(plan.root, storage_options)
        encoders = {ch: chunk_encoder(options, plan.dtype, ch) for ch in {1, c}}
        # a JPEG source becomes its chunk as it is (metadata segments dropped) when the store codec is JPEG
        keep_jpeg = options.compressor == "jpeg" and options.lossy_fits((1, c, 1, 1), plan.dtype, ["n", "c", "y", "x"])

        def load(i: int) -> tuple[int, bytes | None, str | None, int, bool]:
            """Read, decode, check, make grey when the modality says so, compress: all in a thread."""
            try:
                data = read(plan.sources[i])
                if not data:
                    return i, None, "empty file (0 bytes)", 0, False
                img = decode_image(data)
            except Exception as exc:
                return i, None, f"cannot decode image: {one_line(exc)}", 0, False
            if img.shape != (h, w, c) or img.dtype != np.dtype(plan.dtype):
                return (
                    i,
                    None,
                    (
                        f"decoded as {img.shape[1]}x{img.shape[0]}x{img.shape[2]} {img.dtype}, "
                        f"header said {w}x{h}x{c} {plan.dtype}"
                    ),
                    0,
                    False,
                )
            grey = grey_of(img) if grayscale else None
            if grey is not None:
                return i, encoders[1](grey), None, len(data), True
            if keep_jpeg and data.startswith(b"\xff\xd8"):
                kept = strip_jpeg_metadata(data)
                if kept is not None:
                    return i, kept, None, len(data), False
            return i, encoders[c](img), None, len(data), False

        grey_count, colour_ids = 0, []
        total_bytes = 0
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for i, chunk, reason, nbytes, is_grey in pool.map(load, range(n)):
                rel = plan.relpaths[i]
                if chunk is None:
                    bad.append(ItemResult(plan.item_id, "failed", plan.sources[i], reason=reason))
                    continue
                total_bytes += nbytes
                if is_grey:
                    grey_count += 1
                    group(MAIN_GROUP, (h, w, 1)).add(chunk, rel)
                elif grayscale:
                    colour_ids.append(rel)
                    group(COLOUR_GROUP, (h, w, c)).add(chunk, rel)
                else:
                    group(MAIN_GROUP, (h, w, c)).add(chunk, rel)
        result.source_bytes = total_bytes
        if not groups:
            raise ValueError(f"none of the {n} images could be read")
        splits = {name: g.finish() for name, g in groups.items()}
        main = splits.get(MAIN_GROUP) or next(iter(splits.values()))
        labels = None
        if plan.labels_from_folders:
            labels = {name: [folder_label(r) for r in meta["files"]] for name, meta in splits.items()}
        if grey_count:
            card["warnings"].append(
                f"{grey_count} RGB image(s) with equal channels (within {GREY_TOLERANCE} grey level) stored as one "
                f"channel ({plan.modality} is grayscale)"
            )
        if colour_ids:
            card["warnings"].append(
                f"{len(colour_ids)} image(s) carry colour (e.g. a Doppler overlay), kept as RGB in group "
                f"'{COLOUR_GROUP}': {', '.join(colour_ids[:3])}{' ...' if len(colour_ids) > 3 else ''}"
            )
        card.update(
            {
                "codec": codec_note(options, plan.dtype, c),
                "axes": "ncyx",
                "dtype": plan.dtype,
                "channels": int(main["shape"][0]),
                "shape": [h, w],
                "splits": {k: {"count": v["count"], "shape": v["shape"]} for k, v in splits.items()},
                "collection": {
                    "name": plan.collection,
                    "root": plan.root,
                    "files": {k: v["files"] for k, v in splits.items()},
                    "labels": labels,
                    "failed": {b.source: b.reason for b in bad},
                    "grey_from_rgb": grey_count,
                },
                "status": STATUS_COMPLETE,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
        )
        root.attrs.put({CARD_KEY: card})  # the last write: only now is the shard an item
        result.status = "ingested"
        result.warnings = list(card["warnings"])
    except Exception as exc:
        result.reason = one_line(exc)
        try:
            sfs.remove_tree(url, storage_options)
        except Exception:
            pass
    finally:
        result.seconds = time.perf_counter() - t0
    return [result, *bad]


def collection_rows(card: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Catalog rows of a collection shard: one per image, source = the image's file."""
    coll = card["collection"]
    root = coll["root"]
    labels = coll.get("labels") or {}
    rows = []
    for split, meta in card.get("splits", {}).items():
        files = coll["files"][split]
        lab = labels.get(split)
        prefix = f"{card['item_id']}-{split}-"
        for i, rel in enumerate(files):
            row = dict(base)
            row.update(
                item_id=f"{prefix}{i:06d}",
                index=i,
                split=None,
                relpath=rel,
                label=None if lab is None else lab[i],
                shape=meta["shape"],
                channels=meta["shape"][0],
                frames=None,
                source=sfs.join(root, rel),
            )
            rows.append(row)
    return rows
