"""DICOM-WSI frame offsets read once per level (issue 18 item 5): a tile read is one seek + one read of its
own frame's bytes, whatever the number of frames; pixels equal pydicom's for every way the standard lets
a file say where its frames are (native, no offset table, Basic / Extended Offset Table)."""

from __future__ import annotations

import builtins
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.pixels import pixel_array

from identity import dicom_wsi_level
from pretextlab.storage import synthetic as syn
from pretextlab.storage.readers.dicom_frames import FrameIndex
from pretextlab.storage.readers.dicom_wsi import DicomWsiReader

warnings.filterwarnings("ignore", message=".*JFIF APP marker.*")

VARIANTS = [("none", "none"), ("jpeg", "none"), ("jpeg", "bot"), ("jpeg", "eot")]


@pytest.mark.parametrize("compression,offset_table", VARIANTS)
def test_frames_equal_pydicom(tmp_path, compression, offset_table):
    files = syn.write_wsi_dicom_series(
        tmp_path / "s", 300, 500, tile=128, levels=2, compression=compression, offset_table=offset_table
    )
    for f in files:
        ix = FrameIndex.build(str(f))
        assert ix.source == {"none": "native"}.get(compression, "fragments" if offset_table == "none" else offset_table)
        for i in range(ix.number_of_frames):
            np.testing.assert_array_equal(ix.decode(i), pixel_array(f, index=i))


@pytest.mark.parametrize("compression,offset_table", [("jpeg", "none"), ("jpeg", "bot")])
def test_reader_levels_equal_pydicom(tmp_path, compression, offset_table):
    files = syn.write_wsi_dicom_series(
        tmp_path / "s", 300, 500, tile=128, levels=2, compression=compression, offset_table=offset_table
    )
    src = DicomWsiReader().open([str(f) for f in files], None)
    for lv, f in zip(src.levels, files, strict=True):
        np.testing.assert_array_equal(lv.compute(scheduler="sync"), dicom_wsi_level(f))


def test_band_rows_equal_the_level_and_fill_absent_tiles(tmp_path):
    """The band writer's row reader gives the dask level's pixels in bands that cut tiles in two; a
    tile a TILED_SPARSE level lacks reads as white, as the dask level has it."""
    from concurrent.futures import ThreadPoolExecutor

    files = syn.write_wsi_dicom_series(tmp_path / "s", 300, 500, tile=128, levels=1, compression="jpeg")
    src = DicomWsiReader().open([str(f) for f in files], None)
    rows = src.row_readers[0]
    want = src.levels[0].compute(scheduler="sync")
    with ThreadPoolExecutor(2) as pool:
        got = np.concatenate([rows(y, min(300, y + 96), pool) for y in range(0, 300, 96)])
        np.testing.assert_array_equal(got, want)
        del rows.positions[(1, 2)]  # as if the file had no frame for tile row 1, column 2
        rows._cached = None
        sparse = rows(0, 300, pool)
    want[128:256, 256:384] = 255
    np.testing.assert_array_equal(sparse, want)


class _Counting:
    """A file object that counts the bytes read through it."""

    def __init__(self, fh, counter: dict):
        self._fh, self._counter = fh, counter

    def read(self, *a):
        out = self._fh.read(*a)
        self._counter["bytes"] += len(out)
        return out

    def readinto(self, b):
        n = self._fh.readinto(b)
        self._counter["bytes"] += n or 0
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


@pytest.fixture
def count_reads(monkeypatch):
    """Bytes read from files under a given folder, through every ``open`` (pydicom's included)."""
    counter = {"bytes": 0, "opens": 0}
    real_open = builtins.open

    def counting_open(file, mode="r", *a, **kw):
        fh = real_open(file, mode, *a, **kw)
        if "b" in mode and "r" in mode and str(file).startswith(counter.get("under", "\0")):
            counter["opens"] += 1
            return _Counting(fh, counter)
        return fh

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)  # pathlib's Path.open goes through io.open
    return counter


def test_tile_read_does_not_reparse_the_level(tmp_path, count_reads):
    """The last tile of a 5,000-frame level (JPEG, no offset table: the worst case, whose frames are found
    by scanning fragment headers) reads about its own bytes, as the last tile of a 100-frame level does;
    the offsets were read when the slide was opened."""
    reads = {}
    frame_bytes = {}
    for n in (100, 5000):
        path = syn.write_wsi_dicom_level(tmp_path / f"n{n}" / "level.dcm", n, tile=32)
        src = DicomWsiReader().open([str(path)], None)  # header + offsets: once per level
        ix = FrameIndex.build(str(path))
        frame_bytes[n] = int(ix.ends[n - 1] - ix.starts[n - 1])
        level = src.levels[0]
        nx = -(-level.shape[1] // 32)
        r, c = divmod(n - 1, nx)
        count_reads.update(bytes=0, opens=0, under=str(tmp_path / f"n{n}"))
        tile = level[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32].compute(scheduler="sync")
        reads[n] = dict(count_reads)
        np.testing.assert_array_equal(tile, pixel_array(path, index=n - 1))
    for n, r in reads.items():
        assert r["opens"] == 1, reads
        assert r["bytes"] <= frame_bytes[n] + 64, (n, reads, frame_bytes)  # the frame (and item headers)
    assert Path(tmp_path / "n5000" / "level.dcm").stat().st_size > 40 * reads[5000]["bytes"]


def test_offsets_are_found_once_per_level(tmp_path, monkeypatch):
    calls = []
    real = FrameIndex.build.__func__

    def counting(cls, path):
        calls.append(path)
        return real(cls, path)

    monkeypatch.setattr(FrameIndex, "build", classmethod(counting))
    files = syn.write_wsi_dicom_series(tmp_path / "s", 600, 600, tile=64, levels=2, compression="jpeg")
    src = DicomWsiReader().open([str(f) for f in files], None)
    for lv in src.levels:
        lv.compute(scheduler="threads")
    assert sorted(calls) == sorted(str(f) for f in files)  # one per level, none per tile
