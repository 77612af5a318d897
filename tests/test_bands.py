"""The band writer (pretextlab.storage.bands): the chunks it writes are the ones Zarr would write,
its 2x levels are the box means of the dask path, and TIFF rows equal tifffile's decode."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pretextlab.storage.bands import StageClock, box2_hwc, dask_rows, write_bands
from pretextlab.storage.pyramid import _box2, downsample2
from pretextlab.storage.readers.tiff import TiffRows


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(6, 8, 3), (7, 9, 1), (1, 5, 3)])
def test_box2_on_bands_equals_box2_on_planes(dtype, shape):
    rng = np.random.default_rng(0)
    top = 255 if dtype == np.uint8 else 65535
    hwc = (rng.random(shape) * top).astype(dtype)
    got = box2_hwc(hwc)
    want = _box2(np.ascontiguousarray(hwc.transpose(2, 0, 1))).transpose(1, 2, 0)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == dtype


def _arrays(root, shapes, chunk, compressors):
    return [
        root.create_array(
            str(i), shape=s, chunks=(s[0], chunk, chunk), dtype=np.uint8, compressors=compressors, fill_value=0
        )
        for i, s in enumerate(shapes)
    ]


@pytest.mark.parametrize(
    "compressors",
    [
        [BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")],  # encoded here, put as files
        [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        [],  # no compressor: the raw bytes
        [ZstdCodec(level=1)],  # a chain the band writer does not encode itself: Zarr writes it
    ],
    ids=["blosc-zstd", "blosc-lz4", "none", "zarr-writes"],
)
def test_written_levels_equal_the_dask_pyramid(tmp_path, compressors):
    rng = np.random.default_rng(1)
    h, w, chunk = 1001, 1300, 128  # odd, not a multiple of the chunk: edge chunks and a last single row
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    shapes = [(3, h, w)]
    while max(shapes[-1][1:]) > 100:
        shapes.append((3, shapes[-1][1] // 2, shapes[-1][2] // 2))
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    arrays = _arrays(root, shapes, chunk, compressors)
    clock = StageClock()
    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as io:
        write_bands(dask_rows(da.from_array(img, chunks=(300, 300, 3))), arrays, pool, io, clock)
    want = da.from_array(np.ascontiguousarray(img.transpose(2, 0, 1)), chunks=(3, chunk, chunk))
    for i, shape in enumerate(shapes):
        back = zarr.open_array(str(tmp_path / "s.zarr" / str(i)), mode="r")
        assert back.shape == shape
        np.testing.assert_array_equal(back[:], want.compute(), err_msg=f"level {i}")
        want = downsample2(want, chunk)
    stages = clock.as_dict()
    assert stages["downsample"] > 0 and stages["read"] > 0
    assert ("encode" in stages) != ("encode+write (zarr)" in stages)


@pytest.mark.parametrize("tile", [176, None], ids=["tiles-176", "strips"])
def test_tiff_rows_equal_tifffile(tmp_path, tile):
    """Tiles that straddle bands (176 into 128-row bands) and strips give tifffile's pixels."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (700, 530, 3), dtype=np.uint8)
    path = tmp_path / "t.tif"
    kw = {"tile": (tile, tile)} if tile else {"rowsperstrip": 50}
    tifffile.imwrite(path, img, photometric="rgb", compression="jpeg", **kw)
    ref = tifffile.imread(path)
    with tifffile.TiffFile(path) as tf, ThreadPoolExecutor(2) as pool:
        rows = TiffRows.for_page(tf.series[0].levels[0].pages[0])
        assert rows is not None
        got = np.concatenate([rows(y, min(700, y + 128), pool) for y in range(0, 700, 128)])
    np.testing.assert_array_equal(got, ref)


def test_adobe_marker_is_added_once_and_switches_off_the_colour_transform():
    import imagecodecs

    from pretextlab.storage.codecs import ADOBE_RGB, decode_jpeg, jpeg_segments, with_adobe_rgb

    img = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    coded = bytes(imagecodecs.jpeg8_encode(img, level=95))  # YCbCr-coded, no APP14
    # as in a TIFF tile: no JFIF APP0 either (libjpeg reads JFIF as "YCbCr", before any APP14)
    (_, a, b) = next(seg for seg in jpeg_segments(coded) if seg[0] == 0xE0)
    jfif = coded[:a] + coded[b:]
    marked = with_adobe_rgb(jfif)
    assert marked is not None and marked[2 : 2 + len(ADOBE_RGB)] == ADOBE_RGB
    assert with_adobe_rgb(marked) == marked  # never a second APP14
    assert [m for m, _, _ in jpeg_segments(marked)].count(0xEE) == 1
    # the same coefficients read as RGB (no YCbCr -> RGB step) give other pixels: the marker is read
    assert not np.array_equal(decode_jpeg(marked), decode_jpeg(jfif))
    assert with_adobe_rgb(b"not a jpeg") is None


def test_levels_below_take_their_own_chunk_size(tmp_path):
    """A first level chunked at its source's tile size (80 px) feeds levels chunked at 128: bands are
    re-cut to each level's chunk rows, and the pixels are still the dask pyramid's."""
    rng = np.random.default_rng(4)
    h, w = 777, 530
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    shapes = [(3, h, w), (3, h // 2, w // 2), (3, h // 4, w // 4), (3, h // 8, w // 8)]
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    codecs = [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")]
    arrays = [
        root.create_array(
            str(i),
            shape=s,
            chunks=(3, 80 if i == 0 else 128, 80 if i == 0 else 128),
            dtype=np.uint8,
            compressors=codecs,
            fill_value=0,
        )
        for i, s in enumerate(shapes)
    ]
    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as io:
        write_bands(dask_rows(da.from_array(img, chunks=(100, 100, 3))), arrays, pool, io, StageClock())
    want = da.from_array(np.ascontiguousarray(img.transpose(2, 0, 1)), chunks=(3, 128, 128))
    for i in range(len(shapes)):
        np.testing.assert_array_equal(arrays[i][:], want.compute(), err_msg=f"level {i}")
        want = downsample2(want, 128)
