"""Random access to the frames of a multi-frame DICOM file: the byte range of every frame is found once
per file (a pyramid level), then each frame read is one seek + one read of that frame's bytes.

Where the frames are, in the order the standard allows them to be told:
  * native (uncompressed) pixel data: frame ``i`` starts at ``value offset + i * frame bytes``;
  * encapsulated, with an Extended Offset Table (7FE0,0001): its offsets (one fragment per frame);
  * encapsulated, with a Basic Offset Table of one entry per frame: its offsets, the last frame ending
    at the sequence delimiter;
  * encapsulated, no usable table: one scan of the fragment item headers (8 bytes each, values skipped),
    frames = fragments when the counts agree, else JPEG / JPEG-LS / JPEG 2000 start-of-image markers.

Decoding a frame goes through pydicom's decoder for the transfer syntax (the same plugins as
``pydicom.pixels.pixel_array``), given that frame's bytes alone, so pixels are identical to pydicom's.
``FrameIndex.build`` raises :class:`FrameIndexError` for what it does not handle (big-endian, 1-bit
native pixels, unsplittable fragments); callers fall back to ``pixel_array(path, index=i)``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom

ITEM = (0xFFFE, 0xE000)
SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
PIXEL_DATA = (0x7FE0, 0x0010)
#: first bytes of a frame's codestream: JPEG / JPEG-LS SOI, JPEG 2000 SOC + SIZ
FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51")


class FrameIndexError(ValueError):
    """This file's frames cannot be indexed here (use pydicom's own frame access)."""


@dataclass
class FrameIndex:
    """Where each frame's bytes lie in ``path``, and how to decode them."""

    path: str
    number_of_frames: int
    encapsulated: bool
    #: byte range [start, end) of each frame: the raw pixels (native) or its fragment items, headers
    #: included (encapsulated)
    starts: np.ndarray
    ends: np.ndarray
    transfer_syntax: str
    decode_options: dict[str, Any] = field(default_factory=dict)
    #: how the frame boundaries were found: native, eot, bot, fragments, markers
    source: str = ""

    @classmethod
    def build(cls, path: str) -> FrameIndex:
        """Read the header (once) and the frame offsets of ``path``."""
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            pixel_pos = fh.tell()  # pydicom stops with the file at the Pixel Data element's tag
            ts = ds.file_meta.TransferSyntaxUID
            if not ts.is_little_endian:
                raise FrameIndexError(f"{path}: big-endian transfer syntax {ts.name}")
            fh.seek(pixel_pos)
            tag, value_pos, length = _element_header(fh, ts.is_implicit_VR)
            if tag != PIXEL_DATA:
                raise FrameIndexError(f"{path}: no Pixel Data element where the header ends ({tag})")
            n = int(ds.get("NumberOfFrames", 1) or 1)
            rows, cols = int(ds.Rows), int(ds.Columns)
            spp, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
            opts = {
                "rows": rows,
                "columns": cols,
                "samples_per_pixel": spp,
                "number_of_frames": 1,
                "bits_allocated": bits,
                "bits_stored": int(ds.get("BitsStored", bits)),
                "pixel_representation": int(ds.get("PixelRepresentation", 0)),
                "photometric_interpretation": str(ds.PhotometricInterpretation),
                "pixel_keyword": "PixelData",
            }
            if spp > 1:
                opts["planar_configuration"] = int(ds.get("PlanarConfiguration", 0))
            if length != 0xFFFFFFFF:  # native
                if bits % 8:
                    raise FrameIndexError(f"{path}: {bits}-bit native pixels")
                frame_bytes = rows * cols * spp * bits // 8
                if frame_bytes * n > length:
                    raise FrameIndexError(f"{path}: pixel data holds {length} bytes, {n} frames need {frame_bytes * n}")
                starts = value_pos + frame_bytes * np.arange(n, dtype=np.int64)
                return cls(path, n, False, starts, starts + frame_bytes, str(ts), opts, "native")
            starts, ends, source = _encapsulated_ranges(fh, ds, value_pos, n, path)
            return cls(path, n, True, starts, ends, str(ts), opts, source)

    def read_bytes(self, index: int, fh: Any = None) -> bytes:
        """Frame ``index``'s pixel bytes (fragments joined): one seek and one read."""
        if not 0 <= index < self.number_of_frames:
            raise IndexError(f"frame {index} of {self.number_of_frames}")
        start, end = int(self.starts[index]), int(self.ends[index])
        if fh is None:
            with open(self.path, "rb") as f:
                f.seek(start)
                raw = f.read(end - start)
        else:
            fh.seek(start)
            raw = fh.read(end - start)
        if len(raw) != end - start:
            raise FrameIndexError(f"{self.path}: frame {index} is truncated")
        if not self.encapsulated:
            return raw
        return b"".join(_fragments(raw, self.path))

    def decode(self, index: int, fh: Any = None) -> np.ndarray:
        """Frame ``index`` as pydicom decodes it: (rows, columns) or (rows, columns, samples)."""
        data = self.read_bytes(index, fh)
        o = self.decode_options
        if not self.encapsulated:
            dtype = np.dtype(f"<{'i' if o['pixel_representation'] else 'u'}{o['bits_allocated'] // 8}")
            arr = np.frombuffer(data, dtype)
            spp = o["samples_per_pixel"]
            if spp == 1:
                return arr.reshape(o["rows"], o["columns"])
            if o.get("planar_configuration", 0):
                return arr.reshape(spp, o["rows"], o["columns"]).transpose(1, 2, 0)
            return arr.reshape(o["rows"], o["columns"], spp)
        from pydicom.encaps import encapsulate
        from pydicom.pixels import get_decoder
        from pydicom.uid import UID

        arr, _ = get_decoder(UID(self.transfer_syntax)).as_array(encapsulate([data]), index=0, **o)
        return arr


def _element_header(fh: Any, implicit: bool) -> tuple[tuple[int, int], int, int]:
    """(tag, value offset, value length) of the data element at the file's position (little-endian)."""
    head = fh.read(8)
    if len(head) < 8:
        raise FrameIndexError("file ends inside a data element header")
    group, elem = struct.unpack("<HH", head[:4])
    if implicit:
        (length,) = struct.unpack("<I", head[4:8])
        return (group, elem), fh.tell(), length
    vr = head[4:6]
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"):
        (length,) = struct.unpack("<I", fh.read(4))
    else:
        (length,) = struct.unpack("<H", head[6:8])
    return (group, elem), fh.tell(), length


def _item_header(fh: Any) -> tuple[tuple[int, int], int]:
    head = fh.read(8)
    if len(head) < 8:
        raise FrameIndexError("file ends inside an item header")
    group, elem, length = struct.unpack("<HHI", head)
    return (group, elem), length


def _fragments(raw: bytes, path: str) -> list[bytes]:
    """Fragment values of a run of encapsulated items (stops at a sequence delimiter)."""
    out, pos = [], 0
    while pos + 8 <= len(raw):
        group, elem, length = struct.unpack_from("<HHI", raw, pos)
        if (group, elem) == SEQUENCE_DELIMITER:
            break
        if (group, elem) != ITEM:
            raise FrameIndexError(f"{path}: expected a fragment item, found ({group:04X},{elem:04X})")
        out.append(raw[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return out


def _encapsulated_ranges(
    fh: Any, ds: pydicom.Dataset, value_pos: int, n: int, path: str
) -> tuple[np.ndarray, np.ndarray, str]:
    fh.seek(value_pos)
    tag, bot_len = _item_header(fh)
    if tag != ITEM:
        raise FrameIndexError(f"{path}: encapsulated pixel data without a Basic Offset Table item")
    bot = np.frombuffer(fh.read(bot_len), "<u4").astype(np.int64) if bot_len else np.zeros(0, np.int64)
    first = value_pos + 8 + bot_len  # the first fragment's item tag; the tables count from here
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = np.frombuffer(ds.ExtendedOffsetTable, "<u8").astype(np.int64)
        lengths = np.frombuffer(ds.ExtendedOffsetTableLengths, "<u8").astype(np.int64)
        if len(offsets) == n == len(lengths):
            starts = first + offsets
            return starts, starts + 8 + lengths, "eot"  # one fragment per frame with an EOT
    if len(bot) == n and n > 0 and (n == 1 or np.all(np.diff(bot) > 0)):
        starts = first + bot
        ends = np.empty(n, np.int64)
        ends[:-1] = starts[1:]
        fh.seek(int(starts[-1]))  # the last frame runs to the sequence delimiter
        while True:
            pos = fh.tell()
            tag, length = _item_header(fh)
            if tag != ITEM:
                break
            fh.seek(length, 1)
        ends[-1] = pos
        return starts, ends, "bot"
    # no usable table: one scan of the item headers, values skipped
    fh.seek(first)
    items: list[tuple[int, int]] = []  # (item offset, value length)
    while True:
        pos = fh.tell()
        tag, length = _item_header(fh)
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM:
            raise FrameIndexError(f"{path}: expected a fragment item at byte {pos}")
        items.append((pos, length))
        fh.seek(length, 1)
    end_all = pos
    if not items:
        raise FrameIndexError(f"{path}: encapsulated pixel data without fragments")
    item_pos = np.array([p for p, _ in items], np.int64)
    if len(items) == n:
        ends = np.append(item_pos[1:], end_all)
        return item_pos, ends, "fragments"
    if n == 1:
        return item_pos[:1], np.array([end_all], np.int64), "fragments"
    firsts = []
    for i, (p, length) in enumerate(items):
        fh.seek(p + 8)
        if fh.read(min(4, length)).startswith(FRAME_STARTS):
            firsts.append(i)
    if len(firsts) != n or firsts[0] != 0:
        raise FrameIndexError(f"{path}: {len(items)} fragments for {n} frames and no way to split them")
    starts = item_pos[firsts]
    return starts, np.append(starts[1:], end_all), "markers"
