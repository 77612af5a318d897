"""Each reader, through the writer, gives back exactly the pixels its source library decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from identity import dicom_frames, dicom_wsi_level, pil_image, tiff_levels, video_frames
from pretextlab.storage import discover, open_item, write_item
from pretextlab.storage import synthetic as syn
from pretextlab.storage.options import ZarrOptions


def ingest_one(src: Path, dest: Path, **kw):
    found = discover([str(src)], **kw)
    assert not found.failures, found.failures
    assert len(found.plans) == 1, found.plans
    result = write_item(found.plans[0], str(dest), ZarrOptions(chunk=256, min_level_size=256))
    assert result.status == "ingested", result.reason
    return open_item(str(dest), found.plans[0].item_id), result


def test_pyramidal_tiff_levels_identical_and_pyramid_continued(tmp_path):
    src = syn.write_slide_tiff(tmp_path / "s.tif", 1536, 2048, tile=256, levels=2, mpp=0.25)
    item, _ = ingest_one(src, tmp_path / "store")
    ref = tiff_levels(src)
    assert item.kind == "slide" and item.modality == "histopathology"
    assert item.mpp == pytest.approx(0.25)
    for i, lv in enumerate(ref):  # source levels are copied exactly
        np.testing.assert_array_equal(item.to_numpy(i), lv)
    # then 2x levels are built down to <= 256 px: 2048 -> 1024 -> 512 -> 256
    shapes = [item.level(i).shape for i in range(item.num_levels)]
    assert shapes[-1][1:] == (192, 256) and len(shapes) == 4
    last = item.to_numpy(2).astype(np.float64)
    expected = ref[1].reshape(384, 2, 512, 2, 3).mean(axis=(1, 3))
    assert np.abs(last - expected).max() <= 0.5 + 1e-9  # box mean, rounded
    # NGFF multiscales scale doubles per level, in micrometres
    ome = dict(item.group.attrs)["ome"]["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"][1] for d in ome["datasets"]] == [0.25, 0.5, 1.0, 2.0]
    # region reads equal slicing the source
    np.testing.assert_array_equal(item.read_region(0, 300, 200, 64, 32), ref[0][200:232, 300:364])


def test_svs_metadata_and_tissue_mask(tmp_path):
    src = syn.write_slide_tiff(tmp_path / "a.svs", 1024, 1024, tile=256, levels=2, mpp=0.5, svs=True)
    item, result = ingest_one(src, tmp_path / "store")
    assert item.mpp == pytest.approx(0.5) and item.card["objective_power"] == 20
    assert result.warnings == []
    mask = item.tissue_mask()
    frac = item.card["tissue_mask"]["tissue_fraction"]
    assert 0.05 < frac < 0.95 and mask.mean() == pytest.approx(frac, abs=1e-3)
    # where the mask says tissue, the slide is pinker than the glass
    level = item.to_numpy(item.card["tissue_mask"]["level"])
    sat = level.max(-1).astype(int) - level.min(-1)
    assert sat[mask == 1].mean() > sat[mask == 0].mean() + 30


def test_tiff_without_pixel_size_warns_not_guesses(tmp_path):
    src = syn.write_slide_tiff(tmp_path / "n.tif", 512, 512, tile=256, levels=1, mpp=None)
    item, result = ingest_one(src, tmp_path / "store")
    assert item.mpp is None
    assert any("no pixel size" in w for w in result.warnings)


@pytest.mark.parametrize(
    "syntax,color,frames",
    [
        ("explicit", "MONOCHROME2", 6),
        ("rle", "MONOCHROME2", 5),
        ("jpeg2000", "MONOCHROME2", 3),
        ("jpeg-baseline", "RGB", 4),  # YBR_FULL_422 -> RGB
        ("rle", "PALETTE COLOR", 1),
        ("explicit", "RGB", 1),
    ],
)
def test_dicom_ultrasound_identical(tmp_path, syntax, color, frames):
    src = syn.write_us_dicom(tmp_path / "u.dcm", frames=frames, rows=64, cols=80, syntax=syntax, color=color)
    item, _ = ingest_one(src, tmp_path / "store")
    ref = dicom_frames(src)
    assert item.kind == "cine" and item.modality == "ultrasound"
    got = item.frames()
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert got.shape[-1] == (1 if color == "MONOCHROME2" else 3)  # grayscale stays one channel
    assert item.card["pixel_spacing_mm"] == pytest.approx([0.2, 0.2])
    assert item.card["patient_id"] == "SYNTH-001"
    if frames > 1:
        assert item.card["frame_time_ms"] == pytest.approx(40.0)


def test_dicom_wsi_series_is_one_slide(tmp_path):
    files = syn.write_wsi_dicom_series(tmp_path / "series", 700, 900, tile=256, levels=2)
    item, _ = ingest_one(tmp_path / "series", tmp_path / "store")
    assert item.item_id == "series"
    assert item.mpp == pytest.approx(0.25) and item.card["objective_power"] == 40
    for i, f in enumerate(files):
        np.testing.assert_array_equal(item.to_numpy(i), dicom_wsi_level(f))


@pytest.mark.parametrize(
    "codec,suffix,gray", [("libx264", "mp4", False), ("ffv1", "avi", True), ("mjpeg", "avi", False)]
)
def test_video_identical(tmp_path, codec, suffix, gray):
    src = syn.write_video(tmp_path / f"v.{suffix}", frames=10, rows=48, cols=64, codec=codec, gray=gray)
    item, _ = ingest_one(src, tmp_path / "store")
    ref = video_frames(src)
    got = item.frames()
    assert got.shape[0] == 10
    if ref.shape[-1] == 3 and (ref[..., 0] == ref[..., 1]).all() and (ref[..., 1] == ref[..., 2]).all():
        ref = ref[..., :1]  # gray content decoded as RGB is kept as one channel
    np.testing.assert_array_equal(got, ref)
    assert item.card["frame_time_ms"] == pytest.approx(40.0)


def test_png_rgba_and_ultrasound_still(tmp_path):
    src = syn.write_png(tmp_path / "t.png", size=96, rgba=True)
    item, _ = ingest_one(src, tmp_path / "s1")
    np.testing.assert_array_equal(item.to_numpy(), pil_image(src))
    assert item.kind == "slide"
    cine, _ = ingest_one(src, tmp_path / "s2", modality="ultrasound")
    assert cine.kind == "cine" and cine.frames().shape == (1, 96, 96, 3)


def test_npz_stack_rows_and_labels(tmp_path):
    from pretextlab.storage.catalog import rebuild_catalog

    src = syn.write_npz(tmp_path / "m.npz", per_split=5, size=16)
    item, _ = ingest_one(src, tmp_path / "store")
    df, _ = rebuild_catalog(str(tmp_path / "store"))
    assert len(df) == 15 and set(df["split"]) == {"train", "val", "test"}
    ref = np.load(src)
    row = df[(df["split"] == "val")].iloc[3]
    image, label = item.stack_image("val", int(row["index"]))
    np.testing.assert_array_equal(image[..., 0], ref["val_images"][3])
    assert row["label"] == str(int(ref["val_labels"][3, 0])) and int(label[0]) == int(ref["val_labels"][3, 0])


def test_jpeg_tiles_are_kept_as_they_are_under_the_jpeg_codec(tmp_path):
    """With ``compressor: jpeg`` each source level's JPEG tiles become its chunks unchanged, at the
    tile size (256 px here, the levels built below at zarr.chunk, 128): exactly tifffile's pixels,
    and no bigger than the source."""
    src = syn.write_slide_tiff(tmp_path / "s.tif", 1024, 1536, tile=256, levels=2, mpp=0.25)
    found = discover([str(src)])
    options = ZarrOptions(chunk=128, compressor="jpeg", min_level_size=128)
    result = write_item(found.plans[0], str(tmp_path / "store"), options)
    assert result.status == "ingested", result.reason
    item = open_item(str(tmp_path / "store"), found.plans[0].item_id)
    ref = tiff_levels(src)
    for i, lv in enumerate(ref):
        np.testing.assert_array_equal(item.to_numpy(i), lv)
        assert item.card["levels"][i]["source_jpeg"] is True
        assert item.level(i).chunks == (3, 256, 256)
    assert "source_jpeg" not in item.card["levels"][len(ref)]  # built here, encoded once
    assert [item.level(i).shape[1] for i in range(item.num_levels)] == [1024, 512, 256, 128, 64]
    built = item.to_numpy(len(ref)).astype(np.float64)
    expected = ref[-1].reshape(256, 2, 384, 2, 3).mean(axis=(1, 3))
    assert np.abs(built - expected).mean() < 3.0
    assert item.level(len(ref)).chunks == (3, 128, 128)
    below = item.to_numpy(len(ref) + 1).astype(np.float64)  # built from a band of the level above
    assert np.abs(below - expected.reshape(128, 2, 192, 2, 3).mean(axis=(1, 3))).mean() < 3.0
    (item_dir,) = (tmp_path / "store" / "items").glob("*.zarr")
    level0 = sum(p.stat().st_size for p in (item_dir / "0" / "c").rglob("*") if p.is_file())
    with tifffile.TiffFile(src) as tf:
        assert level0 <= sum(tf.series[0].levels[0].pages[0].databytecounts)
