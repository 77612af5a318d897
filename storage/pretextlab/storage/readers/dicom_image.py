"""DICOM single- and multi-frame images (ultrasound cine loops and stills, other modalities).

Decoding is pydicom's, with pylibjpeg / Pillow plugins for JPEG baseline, JPEG 2000 and RLE.
Palette colour becomes RGB, YBR becomes RGB, grayscale stays one channel; MONOCHROME1 is inverted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import pydicom
from pydicom.pixels import iter_pixels

from pretextlab.modalities import get_modality, modality_for_source
from pretextlab.storage.readers.base import (
    CineSource,
    Modality,
    ReaderError,
    SlideSource,
    Source,
    SourceInfo,
    channel_last,
)
from pretextlab.storage.readers.dicom_common import check_decodable, describe, ids, is_dicom, to_display
from pretextlab.storage.readers.registry import Reader, register_reader

BATCH = 16


def frame_time_ms(ds: pydicom.Dataset) -> float | None:
    if ds.get("FrameTime"):
        return float(ds.FrameTime)
    if ds.get("FrameTimeVector"):
        vec = [float(v) for v in ds.FrameTimeVector][1:]
        return float(np.mean(vec)) if vec else None
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        if ds.get(key):
            return 1000.0 / float(ds.get(key))
    return None


def pixel_spacing_mm(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: ultrasound regions (cm) first, then PixelSpacing."""
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        if int(region.get("PhysicalUnitsXDirection", 0)) == 3 and int(region.get("PhysicalUnitsYDirection", 0)) == 3:
            return (abs(float(region.PhysicalDeltaY)) * 10.0, abs(float(region.PhysicalDeltaX)) * 10.0)
    for key in ("PixelSpacing", "ImagerPixelSpacing"):  # projection radiographs (DX) carry the latter
        if ds.get(key):
            r, c = ds.get(key)
            return (float(r), float(c))
    return None


def _frames(path: str, ds: pydicom.Dataset) -> Iterator[np.ndarray]:
    """Display-ready frames (Y, X, C), one at a time."""
    for frame in iter_pixels(path):
        yield channel_last(to_display(frame, ds))


@register_reader
class DicomImageReader(Reader):
    name = "dicom"
    description = "DICOM single/multi-frame images: ultrasound cine loops and stills (pydicom)"
    suffixes = (".dcm", ".dicom")
    priority = 11

    @classmethod
    def sniff(cls, head: bytes, name: str, header: Any = None) -> bool:
        return is_dicom(head)

    def open(self, paths: list[str], modality: Modality | None) -> Source:
        (path,) = paths
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise ReaderError(f"not a readable DICOM file: {type(exc).__name__}: {exc}") from None
        if "Rows" not in ds or "Columns" not in ds:
            raise ReaderError("DICOM file holds no image (no Rows/Columns)")
        check_decodable(ds)
        inferred, warning = modality_for_source("dicom", str(ds.get("Modality", "")))
        info = SourceInfo(
            reader=self.name,
            modality=modality or inferred,
            metadata={"format": "dicom", **describe(ds)},
            **ids(ds),
        )
        if modality is None and warning:
            info.warnings.append(warning)
        n = int(ds.get("NumberOfFrames", 1) or 1)
        try:
            first = next(_frames(path, ds))
        except StopIteration:
            raise ReaderError("DICOM file has no frames") from None
        except Exception as exc:
            raise ReaderError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from None
        rows, cols, channels = first.shape
        if get_modality(info.modality).reader.still == "slide" and n == 1:
            return SlideSource(levels=[da.from_array(first, chunks=(1024, 1024, channels))], info=info)

        def batches() -> Iterator[np.ndarray]:
            buf: list[np.ndarray] = []
            count = 0
            try:
                for frame in _frames(path, ds):
                    buf.append(frame)
                    count += 1
                    if len(buf) == BATCH:
                        yield np.stack(buf)
                        buf = []
            except ReaderError:
                raise
            except Exception as exc:
                raise ReaderError(f"cannot decode frame {count}: {type(exc).__name__}: {exc}") from None
            if buf:
                yield np.stack(buf)
            if count != n:
                raise ReaderError(f"decoded {count} frames, header says {n}")

        return CineSource(
            shape=(n, rows, cols, channels),
            dtype=first.dtype,
            batches=batches,
            info=info,
            frame_time_ms=frame_time_ms(ds),
            pixel_spacing_mm=pixel_spacing_mm(ds),
        )
