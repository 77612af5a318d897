"""SVS, pyramidal TIFF, OME-TIFF and plain TIFF through tifffile (tiles decoded by imagecodecs)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from concurrent.futures import Executor
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import tifffile.tifffile
import zarr

from pretextlab.modalities import get_modality, modality_for_source
from pretextlab.storage.bands import TileRows
from pretextlab.storage.codecs import decode_jpeg, strip_jpeg_metadata, with_adobe_rgb, with_tables
from pretextlab.storage.readers.base import (
    Modality,
    ReaderError,
    SlideSource,
    Source,
    SourceInfo,
    single_frame_cine,
)
from pretextlab.storage.readers.registry import Reader, register_reader

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# micrometres per ResolutionUnit (2 = inch, 3 = centimetre)
_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}
_OME_UNITS_UM = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _svs_mpp(tf: tifffile.TiffFile) -> tuple[float | None, float | None]:
    try:
        meta = tifffile.tifffile.svs_description_metadata(tf.pages.first.description or "")
    except ValueError:
        meta = {}
    mpp = meta.get("MPP")
    mag = meta.get("AppMag")
    return (float(mpp) if mpp else None, float(mag) if mag else None)


def _ome_mpp(tf: tifffile.TiffFile) -> tuple[float | None, float | None]:
    try:
        root = ET.fromstring(tf.ome_metadata or "")
    except ET.ParseError:
        return None, None
    mpp = mag = None
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and mpp is None and (size_x := el.get("PhysicalSizeX")):
            unit = el.get("PhysicalSizeXUnit", "µm")
            mpp = float(size_x) * _OME_UNITS_UM.get(unit, 1.0)
        if tag == "Objective" and (nominal := el.get("NominalMagnification")):
            mag = float(nominal)
    return mpp, mag


def _page(page: tifffile.TiffPage | tifffile.TiffFrame | None) -> tifffile.TiffPage:
    """A series' first page, which tifffile reads as a full TiffPage (frames only follow a keyframe)."""
    if not isinstance(page, tifffile.TiffPage):
        raise ReaderError(f"TIFF series starts with a {type(page).__name__}, not a page")
    return page


def _tag_mpp(page: tifffile.TiffPage) -> float | None:
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    xres = tags.get("XResolution")
    if unit is None or xres is None:
        return None
    per_unit = _UM_PER_UNIT.get(int(unit.value))
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    if per_unit is None or not num or not den:
        return None
    res = num / den  # pixels per unit
    if res <= 1.0:  # 1 pixel/unit is the "no resolution" default of many writers
        return None
    return per_unit / res


class TiffRows(TileRows):
    """Rows of one TIFF level, decoded tile by tile on the writer's pool (a :data:`RowReader`).

    Raw tile bytes are read in file order for one row of tiles at a time and decoded by tifffile's
    own decoder for the page (JPEG tables and colour space as tifffile applies them). Pixels equal
    ``series.aszarr(level)``'s: the same decoder on the same bytes. Strips are a grid one tile wide.
    """

    def __init__(self, page: tifffile.TiffPage) -> None:
        kf = page.keyframe
        height, width = int(kf.imagelength), int(kf.imagewidth)
        if kf.is_tiled:
            th, tw = int(kf.tilelength), int(kf.tilewidth)
        else:
            th, tw = min(int(kf.rowsperstrip) or height, height), width
        samples = int(kf.samplesperpixel) if kf.planarconfig == 1 else 1
        super().__init__(height, width, th, tw, samples, np.dtype(kf.dtype))
        self.page = page
        self.decodeargs: dict[str, Any] = {"_fullsize": bool(kf.is_tiled)}
        if kf.compression in {6, 7, 34892, 33007}:  # JPEG flavours: as TiffPage.segments passes them
            self.decodeargs["jpegtables"] = page.jpegtables
            self.decodeargs["jpegheader"] = kf.jpegheader
        self._decode = kf.decode

    @classmethod
    def for_page(cls, page: Any) -> TiffRows | None:
        """A row reader for pages laid out as one grid of contiguous-sample tiles or strips, else None."""
        if not isinstance(page, tifffile.TiffPage):
            return None
        kf = page.keyframe
        if kf.planarconfig != 1 or kf.imagedepth != 1:
            return None
        rows = cls(page)
        if len(page.dataoffsets) != rows.ny * rows.nx:
            return None
        return rows

    def _raw(self, r: int) -> list[tuple[bytes | None, int]]:
        fh = self.page.parent.filehandle
        first = r * self.nx
        return list(
            fh.read_segments(  # type: ignore[arg-type]  # flat=True: an iterator of (bytes, index)
                self.page.dataoffsets[first : first + self.nx],
                self.page.databytecounts[first : first + self.nx],
                indices=range(first, first + self.nx),
                sort=True,
                lock=fh.lock,
                flat=True,
            )
        )

    def decode_row(self, r: int, pool: Executor) -> list[np.ndarray | None]:
        first = r * self.nx

        def decode(item: tuple[bytes | None, int]) -> tuple[int, np.ndarray | None]:
            data, index = item
            if data is None:
                return index, None
            return index, self._decode(data, index, **self.decodeargs)[0]

        tiles: list[np.ndarray | None] = [None] * self.nx
        for index, tile in pool.map(decode, self._raw(r)):
            tiles[index - first] = tile
        return tiles

    def jpeg_tile(self) -> int | None:
        """The tile edge when this level's JPEG tiles can be stored as they are, as chunks of the
        ``pretextlab.jpeg`` codec; else None. That takes square 8-bit tiles of 1 or 3 samples, and the
        first tile, made whole (:func:`with_tables`, metadata stripped, an Adobe no-transform marker
        for RGB-coded tiles), must decode by the codec's plain decoder to exactly the pixels tifffile
        decodes (this catches colour conventions a JPEG file cannot carry on its own)."""
        kf = self.page.keyframe
        if not (
            kf.is_tiled
            and kf.compression == 7
            and kf.jpegheader is None
            and self.th == self.tw
            and self.th % 16 == 0
            and self.dtype == np.uint8
            and self.samples in (1, 3)
        ):
            return None
        for r in range(self.ny):
            for data, index in self._raw(r):
                if data is None:
                    continue
                whole = self._whole(data)
                if whole is None:
                    return None
                want = self._decode(data, index, **self.decodeargs)[0]
                if want is None:
                    return None
                got = decode_jpeg(whole)
                return self.th if np.array_equal(got.reshape(want.shape), want) else None
        return None

    def _whole(self, data: bytes) -> bytes | None:
        whole = strip_jpeg_metadata(with_tables(self.page.jpegtables, data))
        if whole is not None and self.samples == 3 and self.page.keyframe.photometric == 2:
            whole = with_adobe_rgb(whole)  # RGB-coded tiles (Aperio): no YCbCr conversion on decode
        return whole

    def jpeg_row(self, r: int) -> list[bytes | None]:
        """Row ``r`` of tiles as whole JPEG files (None: an empty tile), for :meth:`jpeg_tile` levels."""
        out: list[bytes | None] = [None] * self.nx
        for data, index in self._raw(r):
            if data is not None:
                whole = self._whole(data)
                if whole is None:
                    raise ReaderError(f"tile {index} of a {self.width}x{self.height} level is not a readable JPEG")
                out[index - r * self.nx] = whole
        return out


@register_reader
class TiffReader(Reader):
    name = "tiff"
    description = "SVS / pyramidal TIFF / OME-TIFF / plain TIFF (tifffile)"
    suffixes = (".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".ndpi", ".scn")
    priority = 20

    @classmethod
    def sniff(cls, head: bytes, name: str, header: Any = None) -> bool:
        return head[:4] in TIFF_MAGIC

    def open(self, paths: list[str], modality: Modality | None) -> Source:
        (path,) = paths
        try:
            tf = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error...
            raise ReaderError(f"not a readable TIFF: {exc}") from None
        try:
            return self._open(tf, modality)
        except ReaderError:
            tf.close()
            raise
        except Exception as exc:
            tf.close()
            raise ReaderError(f"cannot read TIFF: {type(exc).__name__}: {exc}") from None

    def _open(self, tf: tifffile.TiffFile, modality: Modality | None) -> Source:
        if not tf.series:
            raise ReaderError("TIFF holds no image series")
        series = tf.series[0]
        axes = series.axes
        if axes not in ("YX", "YXS"):
            raise ReaderError(f"unsupported TIFF axes {axes!r} (expected YX or YXS: 2-D grayscale or RGB)")
        if tf.is_svs:
            fmt, (mpp, mag) = "svs", _svs_mpp(tf)
        elif tf.is_ome:
            fmt, (mpp, mag) = "ome-tiff", _ome_mpp(tf)
        else:
            fmt, mpp, mag = "tiff", _tag_mpp(_page(series.pages[0]) if series.pages else tf.pages.first), None
        pyramidal = len(series.levels) > 1
        info = SourceInfo(
            reader=self.name,
            modality=modality or modality_for_source("slide")[0],
            metadata={
                "format": fmt,
                "axes": axes,
                "series": [s.name for s in tf.series],
                "source_levels": [list(lv.shape) for lv in series.levels],
                "compression": tifffile.COMPRESSION(_page(series.pages[0]).compression).name if series.pages else None,
            },
        )
        if fmt == "svs":
            desc = tf.pages.first.description or ""
            info.metadata["description"] = desc[:2000]
        info.closers.append(tf.close)
        if get_modality(info.modality).reader.still == "cine" and not pyramidal:
            image = series.asarray()
            tf.close()
            return single_frame_cine(image, info)
        levels = []
        rows = [TiffRows.for_page(lv.pages[0] if lv.pages else None) for lv in series.levels]
        for i in range(len(series.levels)):
            arr = zarr.open(series.aszarr(level=i), mode="r")
            d = da.from_zarr(arr)
            if d.ndim == 2:
                d = d[..., None]
            levels.append(d)
        if mpp is None:
            info.warnings.append("source has no pixel size: µm/px unknown (set it before sampling by µm/px)")
        h0 = levels[0].shape[0]
        downsamples = [h0 / lv.shape[0] for lv in levels]
        return SlideSource(
            levels=levels, info=info, mpp=mpp, objective_power=mag, downsamples=downsamples, row_readers=rows
        )
