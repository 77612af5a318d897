"""Lossy image codecs for Zarr v3 chunks: JPEG (libjpeg-turbo) and JPEG-XL, through imagecodecs.

Why: a folder of JPEG tiles was lossy already. Stored losslessly (zstd) its decoded pixels take about
5x the JPEG bytes (3,000 H&E tiles: 30 MB of JPEG became 150 MB); stored as JPEG, a JPEG source's own
bytes become the chunk unchanged (no second generation of loss, no growth), and other sources are
encoded once at ``quality``. JPEG-XL at distance ~1 writes about half of JPEG q90 but encodes ~15x
slower (docs/storage.md, "Codecs", has the measured trade-off).

A chunk holds one 2-D image: shape (1, C, Y, X) for collection shards (or (C, Y, X)), uint8, C = 1
or 3. Both codecs are Zarr v3 *array -> bytes* codecs (they replace ``bytes``) named
``pretextlab.jpeg`` / ``pretextlab.jpegxl``. Zarr finds them through the package's ``zarr.codecs``
entry points; :func:`register` also registers them in-process, which every pretextlab reader and
writer calls, so an editable checkout on ``PYTHONPATH`` reads them too.

Reference: imagecodecs (Gohlke), https://github.com/cgohlke/imagecodecs; Zarr v3 codec spec,
https://zarr-specs.readthedocs.io/en/latest/v3/core/v3.0.html#codecs
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import JSON, parse_named_configuration

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

#: JPEG end-of-image marker: a file that does not end with it was cut short (libjpeg-turbo decodes
#: a truncated file without an error, filling the rest with grey, so the fast path checks it)
JPEG_EOI = b"\xff\xd9"


def hwc_of(chunk: np.ndarray) -> np.ndarray:
    """A (1, C, Y, X) or (C, Y, X) uint8 chunk as the (Y, X, C) image codecs take."""
    arr = chunk.reshape(chunk.shape[-3:]) if chunk.ndim == 4 else chunk
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or arr.dtype != np.uint8:
        raise ValueError(
            f"JPEG/JPEG-XL chunks hold one uint8 image of 1 or 3 channels, got {chunk.shape} {chunk.dtype}"
        )
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


def _as_chunk(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    return np.ascontiguousarray(img.transpose(2, 0, 1)).reshape(shape)


def decode_jpeg(data: bytes) -> np.ndarray:
    """(Y, X) or (Y, X, C) pixels of a baseline/progressive JPEG, as Pillow decodes them (checked in tests)."""
    import imagecodecs

    return np.asarray(imagecodecs.jpeg8_decode(data))


@dataclass(frozen=True)
class _ImageCodec(ArrayBytesCodec):
    """Shared plumbing: one image per chunk, encode/decode in a thread (the C codecs release the GIL)."""

    is_fixed_size = False
    name = ""
    quality: int = 90

    def __init__(self, *, quality: int = 90) -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"quality must be 1..100, got {quality}")
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, cls.name, require_configuration=False)
        return cls(**(config or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": self.name, "configuration": {"quality": self.quality}}

    def encode_image(self, hwc: np.ndarray) -> bytes:
        raise NotImplementedError

    def decode_image(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        native = dtype.to_native_dtype() if hasattr(dtype, "to_native_dtype") else np.dtype(dtype)
        if np.dtype(native) != np.uint8:
            raise ValueError(f"{self.name} stores uint8 images only, not {native}")

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        data = chunk_bytes.to_bytes()
        img = await asyncio.to_thread(self.decode_image, data)
        arr = _as_chunk(img, chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)  # type: ignore[arg-type]  # numpy is one

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        hwc = hwc_of(np.asarray(chunk_array.as_ndarray_like()))
        out = await asyncio.to_thread(self.encode_image, hwc)
        return chunk_spec.prototype.buffer.from_bytes(out)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # variable size


@dataclass(frozen=True)
class JpegCodec(_ImageCodec):
    """JPEG (libjpeg-turbo) at ``quality``; decodes any baseline or progressive JPEG chunk."""

    name = "pretextlab.jpeg"

    def encode_image(self, hwc: np.ndarray) -> bytes:
        import imagecodecs

        img = hwc[..., 0] if hwc.shape[2] == 1 else hwc
        return bytes(imagecodecs.jpeg8_encode(img, level=self.quality))

    def decode_image(self, data: bytes) -> np.ndarray:
        return decode_jpeg(data)


@dataclass(frozen=True)
class JpegXlCodec(_ImageCodec):
    """JPEG-XL (libjxl, effort 3) at a distance mapped from ``quality`` the way libjxl's cjxl maps it."""

    name = "pretextlab.jpegxl"

    def encode_image(self, hwc: np.ndarray) -> bytes:
        import imagecodecs

        img = hwc[..., 0] if hwc.shape[2] == 1 else hwc
        return bytes(imagecodecs.jpegxl_encode(img, level=self.quality, effort=3))

    def decode_image(self, data: bytes) -> np.ndarray:
        import imagecodecs

        return np.asarray(imagecodecs.jpegxl_decode(data))


CODECS: dict[str, type[_ImageCodec]] = {"jpeg": JpegCodec, "jpegxl": JpegXlCodec}
_registered = False


def register() -> None:
    """Make Zarr know ``pretextlab.jpeg`` / ``pretextlab.jpegxl`` in this process (idempotent)."""
    global _registered
    if _registered:
        return
    from zarr.registry import register_codec

    for cls in CODECS.values():
        register_codec(cls.name, cls)
    _registered = True


#: JPEG markers kept when a source JPEG becomes a chunk as it is: APP0 (JFIF) and APP14 (Adobe) can
#: change how the decoder converts colour; every other APPn (EXIF, XMP, ICC, vendor data) and COM
#: segment is metadata that may name a patient, a device or a date, so it is dropped.
_KEEP_APP = {0xE0, 0xEE}


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]] | None:
    """(marker, start, end) of each marker segment of a JPEG's header, in order, ending with the start
    of scan (``end``: its header's end, which may lie past ``data`` when the file is cut there); None
    when ``data`` is no JPEG, the walk breaks, or it ends (end of image, cut-off segment) before the
    scan. Fill bytes are skipped; markers without a length (TEM, RSTn) are 2-byte segments."""
    if not data.startswith(b"\xff\xd8"):
        return None
    segments: list[tuple[int, int, int]] = []
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            segments.append((marker, i, i + 2))
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if marker == 0xDA:  # start of scan: the entropy-coded data and everything after follow
            segments.append((marker, i, i + 2 + length))
            return segments
        if marker == 0xD9 or i + 2 + length > n:  # end of image, or a segment cut off
            return None
        segments.append((marker, i, i + 2 + length))
        i += 2 + length
    return None


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """``data`` without its APPn / COM metadata segments (pixels unchanged); None when the header
    cannot be walked (the caller then re-encodes the decoded pixels instead)."""
    segments = jpeg_segments(data)
    if segments is None:
        return None
    kept = [
        data[a:b]
        for marker, a, b in segments[:-1]
        if not ((0xE0 <= marker <= 0xEF and marker not in _KEEP_APP) or marker == 0xFE)
    ]
    return b"".join([b"\xff\xd8", *kept, data[segments[-1][1] :]])


def with_tables(tables: bytes | None, data: bytes) -> bytes:
    """A TIFF tile's abbreviated JPEG stream made whole: the page's JPEGTables (quantisation and
    Huffman tables, a JPEG of their own between SOI and EOI) inserted after the tile's SOI."""
    if not tables:
        return data
    return tables[:-2] + data[2:]


#: An Adobe APP14 segment saying "no colour transform": a 3-component JPEG with it decodes as RGB
#: as stored. TIFF says the same with PhotometricInterpretation RGB (Aperio SVS tiles), which a
#: JPEG file on its own cannot, so kept tiles carry this marker instead.
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def with_adobe_rgb(data: bytes) -> bytes | None:
    """``data`` with :data:`ADOBE_RGB` after its SOI, unless it has an APP14 segment already (None
    when the header cannot be walked)."""
    segments = jpeg_segments(data)
    if segments is None:
        return None
    if any(marker == 0xEE for marker, _, _ in segments):
        return data
    return data[:2] + ADOBE_RGB + data[2:]
