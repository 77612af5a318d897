"""DICOM VL Whole Slide Microscopy: the files of one series (one per pyramid level) make one slide.

Tiles are decoded one frame at a time inside dask tasks, so a level is never whole in memory. The byte
range of every frame is found once per level when the slide is opened (:mod:`.dicom_frames`: offset
tables or one scan of the fragment headers); a tile then costs one seek + one read of its own bytes and
a decode, whatever the number of frames in the level. Files the index cannot handle (big-endian, 1-bit)
fall back to ``pydicom.pixels.pixel_array(path, index=i)``, which re-reads the header per frame.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import dask
import dask.array as da
import numpy as np
import pydicom
from pydicom.pixels import pixel_array

from pretextlab.modalities import modality_for_source
from pretextlab.storage.bands import TileRows
from pretextlab.storage.readers.base import Modality, ReaderError, SlideSource, SourceInfo
from pretextlab.storage.readers.dicom_common import (
    VL_WSI_SOP_CLASS,
    check_decodable,
    describe,
    ids,
    is_dicom,
    read_header,
)
from pretextlab.storage.readers.dicom_frames import FrameIndex, FrameIndexError
from pretextlab.storage.readers.registry import Reader, register_reader

SKIP_IMAGE_TYPES = {"LABEL", "OVERVIEW", "THUMBNAIL"}


def _decode_tile(frames: FrameIndex | str, index: int, th: int, tw: int, channels: int, dtype: np.dtype) -> np.ndarray:
    """Frame ``index`` of a level: through its frame index, or (``frames`` a path) pydicom's own access."""
    if isinstance(frames, FrameIndex):
        path, tile = frames.path, frames.decode(index)
    else:
        path, tile = frames, pixel_array(frames, index=index)
    if tile.ndim == 2:
        tile = tile[..., None]
    if tile.shape != (th, tw, channels):
        raise ReaderError(f"{path}: frame {index} has shape {tile.shape}, expected {(th, tw, channels)}")
    return tile.astype(dtype, copy=False)


def _tile_positions(ds: pydicom.Dataset, nx: int, ny: int, tw: int, th: int) -> dict[tuple[int, int], int]:
    """(tile row, tile col) -> frame index, for TILED_FULL and TILED_SPARSE organisations."""
    n = int(ds.get("NumberOfFrames", 1))
    if str(ds.get("DimensionOrganizationType", "")) != "TILED_SPARSE":
        if n < nx * ny:
            raise ReaderError(f"TILED_FULL level has {n} frames, needs {nx * ny} ({ny}x{nx} tiles)")
        return {(r, c): r * nx + c for r in range(ny) for c in range(nx)}
    out: dict[tuple[int, int], int] = {}
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pos = fg.PlanePositionSlideSequence[0]
        r = (int(pos.RowPositionInTotalImagePixelMatrix) - 1) // th
        c = (int(pos.ColumnPositionInTotalImagePixelMatrix) - 1) // tw
        out.setdefault((r, c), i)
    return out


class DicomRows(TileRows):
    """Rows of one DICOM-WSI level for the band writer: frames decoded a row of tiles at a time on
    the writer's pool, through the level's frame index (the same decode as the dask level's tiles)."""

    def __init__(
        self,
        frames: FrameIndex | str,
        positions: dict[tuple[int, int], int],
        shape: tuple[int, int, int, int, int, int],
        dtype: np.dtype,
        fill: int,
    ) -> None:
        height, width, th, tw, channels, _ = shape
        super().__init__(height, width, th, tw, channels, dtype, fill)
        self.frames, self.positions = frames, positions

    def decode_row(self, r: int, pool: Executor) -> list[np.ndarray | None]:
        def decode(c: int) -> np.ndarray | None:
            idx = self.positions.get((r, c))
            if idx is None:
                return None
            return _decode_tile(self.frames, idx, self.th, self.tw, self.samples, self.dtype)

        return list(pool.map(decode, range(self.nx)))


def _level_array(path: str, ds: pydicom.Dataset) -> tuple[da.Array, DicomRows]:
    H, W = int(ds.TotalPixelMatrixRows), int(ds.TotalPixelMatrixColumns)
    th, tw = int(ds.Rows), int(ds.Columns)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    channels = 3 if int(ds.get("SamplesPerPixel", 1)) == 3 or photometric == "PALETTE COLOR" else 1
    int_type = np.uint8 if int(ds.BitsAllocated) <= 8 else np.uint16
    dtype = np.dtype(int_type)
    nx, ny = -(-W // tw), -(-H // th)
    positions = _tile_positions(ds, nx, ny, tw, th)
    fill = np.iinfo(int_type).max  # missing sparse tiles are background (white)
    try:  # the frames' byte ranges, read once for the level; one graph node every tile task shares
        index: FrameIndex | str = FrameIndex.build(path)
    except FrameIndexError:
        index = path
    frames: Any = dask.delayed(index, pure=True) if isinstance(index, FrameIndex) else index
    rows = []
    for r in range(ny):
        row = []
        for c in range(nx):
            idx = positions.get((r, c))
            if idx is None:
                tile = da.full((th, tw, channels), fill, dtype=dtype)
            else:
                tile = da.from_delayed(
                    dask.delayed(_decode_tile)(frames, idx, th, tw, channels, dtype), (th, tw, channels), dtype
                )
            row.append(tile)
        rows.append(row)
    grid = da.concatenate([da.concatenate(row, axis=1) for row in rows], axis=0)
    return grid[:H, :W], DicomRows(index, positions, (H, W, th, tw, channels, 0), dtype, int(fill))


@register_reader
class DicomWsiReader(Reader):
    name = "dicom-wsi"
    description = "DICOM VL Whole Slide Microscopy series (one file per level)"
    suffixes = (".dcm",)
    priority = 10

    @classmethod
    def sniff(cls, head: bytes, name: str, header: Any = None) -> bool:
        return is_dicom(head) and header is not None and str(header.get("SOPClassUID", "")) == VL_WSI_SOP_CLASS

    def open(self, paths: list[str], modality: Modality | None) -> SlideSource:
        headers = []
        for p in paths:
            ds = read_header(p)
            image_type = [str(t).upper() for t in ds.get("ImageType", [])]
            if SKIP_IMAGE_TYPES & set(image_type[2:3]):
                continue
            if "TotalPixelMatrixRows" not in ds:
                raise ReaderError(f"{p}: whole-slide file without TotalPixelMatrixRows")
            check_decodable(ds)
            headers.append((p, ds))
        if not headers:
            raise ReaderError("series has no VOLUME images (only label/overview/thumbnail)")
        series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
        if len(series) > 1:
            raise ReaderError(f"files belong to {len(series)} different series; one slide is one series")
        headers.sort(key=lambda pd: -int(pd[1].TotalPixelMatrixColumns))
        levels, row_readers = zip(*(_level_array(p, ds) for p, ds in headers), strict=True)
        base = headers[0][1]
        mpp = None
        try:
            spacing = base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
            mpp = float(spacing[1]) * 1000.0
        except (AttributeError, IndexError, KeyError):
            pass
        power = None
        for op in base.get("OpticalPathSequence", []):
            if op.get("ObjectiveLensPower") is not None:
                power = float(op.ObjectiveLensPower)
                break
        info = SourceInfo(
            reader=self.name,
            modality=modality or modality_for_source("slide", "SM")[0],
            metadata={
                "format": "dicom-wsi",
                "levels": [describe(ds) for _, ds in headers],
                "files": [p.rsplit("/", 1)[-1] for p, _ in headers],
            },
            **ids(base),
        )
        if mpp is None:
            info.warnings.append("source has no pixel size: µm/px unknown (set it before sampling by µm/px)")
        if power is None:
            info.warnings.append("source has no objective power")
        w0 = levels[0].shape[1]
        return SlideSource(
            levels=list(levels),
            info=info,
            mpp=mpp,
            objective_power=power,
            downsamples=[w0 / lv.shape[1] for lv in levels],
            row_readers=list(row_readers),
        )
