"""Collections: folders of 2-D images ingested as stack shards (issue 13, parts 1-5).

Real Ray (the session cluster), real files, real S3 (moto); pixels checked against independent
decoders (imagecodecs for PNG/JPEG, tifffile for TIFF), not against the Pillow path under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import psutil
import pytest
import tifffile
from PIL import Image

from pretextlab.jobs.ingest import IngestConfig, aggregate_warnings, run_ingest
from pretextlab.storage import open_item, read_catalog
from pretextlab.storage.writer import ItemResult


def ingest(sources, dest, **kw):
    return run_ingest(IngestConfig(sources=[str(s) for s in sources], dest=str(dest), **kw), progress=False)


def pixels_of(dest, row) -> np.ndarray:
    """One image of a catalog row, read the way evaluation reads stack rows (group / subgroup / index)."""
    sub = row["item_id"][len(row["group"]) + 1 :].rsplit("-", 1)[0]
    arr = open_item(str(dest), row["group"]).group[sub]["images"]
    return np.asarray(arr[int(row["index"])]).transpose(1, 2, 0)


def _rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """An ImageFolder tree: PNG, JPEG and TIFF of two sizes, a labels CSV and a README beside them,
    a hidden file, and a JPEG truncated to garbage mid-file (its header still reads)."""
    root = tmp_path_factory.mktemp("ds") / "tiles"
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(_rgb(rng, 24, 32)).save(root / cls / f"{cls} ({i}).png")
        Image.fromarray(_rgb(rng, 24, 32)).save(root / cls / f"{cls}-j.jpg", quality=90)
        tifffile.imwrite(root / cls / f"{cls}-t.tif", _rgb(rng, 24, 32))
        Image.fromarray(_rgb(rng, 40, 40)).save(root / cls / f"{cls}-big.png")
    good = root / "benign" / "benign-j.jpg"
    data = good.read_bytes()
    (root / "malignant" / "corrupt.jpg").write_bytes(data[:300] + b"\0" * 20)
    (root / "labels.csv").write_text("source,label\n")
    (root / "README.md").write_text("# tiles\n")
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


def test_folder_becomes_shards_grouped_by_shape_with_rows_per_image(ray_session, dataset, tmp_path):
    dest = tmp_path / "store"
    rep = ingest([dataset], dest, shard_size=4, labels_from_folders=True)
    # the 12 24x32 images in 3 shards of <= 4, the two 40x40 in one; the corrupt JPEG reported, not fatal
    shards = sorted(r.item_id for r in rep.results if r.status == "ingested")
    assert shards == ["tiles-24x32x3-0000", "tiles-24x32x3-0001", "tiles-24x32x3-0002", "tiles-40x40x3-0000"]
    failed = {Path(r.source).name: r.reason for r in rep.results if r.status == "failed"}
    assert list(failed) == ["corrupt.jpg"] and "cannot decode image" in failed["corrupt.jpg"]
    assert not rep.ok  # the exit code says something failed
    assert len(rep.skipped_files) == 3  # labels.csv, README.md, .DS_Store: skipped, not failed
    assert "skipped 3 non-image files: README.md, labels.csv" in rep.render()

    df = read_catalog(str(dest))
    assert len(df) == 14 and df["item_id"].is_unique and set(df["kind"]) == {"image"}
    assert set(df["label"]) == {"benign", "malignant"}
    by_rel = df.set_index("relpath")
    assert by_rel.loc["malignant/malignant (2).png", "label"] == "malignant"
    assert by_rel.loc["benign/benign-big.png", "source"] == str(dataset / "benign" / "benign-big.png")
    for rel, row in by_rel.iterrows():  # every row's pixels equal an independent decode of its file
        path = dataset / rel
        got = pixels_of(dest, row)
        if path.suffix == ".tif":
            np.testing.assert_array_equal(got, tifffile.imread(path))
        elif path.suffix == ".png":
            np.testing.assert_array_equal(got, imagecodecs.png_decode(path.read_bytes()))
        else:
            ref = imagecodecs.jpeg8_decode(path.read_bytes()).astype(int)
            assert np.abs(got.astype(int) - ref).max() <= 2
    # one file per (Zarr) shard of images, not a file per image
    files = [p for p in (dest / "items").rglob("*") if p.is_file()]
    assert len(files) < 14 * 2

    rep2 = ingest([dataset], dest, shard_size=4, labels_from_folders=True)
    assert {r.status for r in rep2.results if r.item_id.startswith("tiles-")} >= {"skipped"}
    assert rep2.count("ingested") == 0 and len(read_catalog(str(dest))) == 14


def test_labels_csv_by_relative_path_and_group_column(ray_session, dataset, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "source,label,group\nbenign/benign (1).png,B1,case-1\n"
        f"{dataset}/malignant/malignant (0).png,M0,case-2\nbenign-t.tif,T,case-3\n"
        "ghost/none.png,X,case-9\n"
    )
    dest = tmp_path / "store"
    rep = ingest([dataset], dest, labels=str(labels))
    by_rel = read_catalog(str(dest)).set_index("relpath")
    assert by_rel.loc["benign/benign (1).png", "label"] == "B1"  # relative path under the source folder
    assert by_rel.loc["malignant/malignant (0).png", "label"] == "M0"  # full path
    assert by_rel.loc["benign/benign-t.tif", "label"] == "T"  # bare file name
    assert by_rel.loc["benign/benign (1).png", "patient_id"] == "case-1"  # 'group' is the split group
    assert pd.isna(by_rel.loc["benign/benign (2).png", "label"])
    assert rep.unmatched_labels == ["ghost/none.png"]
    assert rep.render().count("match no item") == 1


def test_grey_rgb_becomes_one_channel_and_colour_is_kept_with_a_warning(ray_session, tmp_path):
    raw = tmp_path / "us"
    raw.mkdir()
    rng = np.random.default_rng(1)
    greys = {}
    for i in range(3):
        g = rng.integers(0, 255, (20, 30), dtype=np.uint8)
        rgb = np.repeat(g[..., None], 3, axis=2)
        rgb[..., 2] = np.clip(rgb[..., 2].astype(int) + (i == 1), 0, 255)  # within 1 grey level
        Image.fromarray(rgb).save(raw / f"still{i}.png")
        greys[f"still{i}.png"] = rgb
    doppler = np.repeat(rng.integers(0, 255, (20, 30, 1), dtype=np.uint8), 3, axis=2)
    doppler[5:10, 5:10] = [200, 30, 30]
    Image.fromarray(doppler).save(raw / "doppler.png")
    dest = tmp_path / "store"
    rep = ingest([raw], dest, modality="ultrasound")
    assert rep.ok, rep.render()
    df = read_catalog(str(dest)).set_index("relpath")
    assert df.loc["still0.png", "channels"] == 1 and df.loc["doppler.png", "channels"] == 3
    for name, rgb in greys.items():
        got = pixels_of(dest, {**df.loc[name], "item_id": df.loc[name, "item_id"]})
        assert got.shape == (20, 30, 1) and np.abs(got[..., 0].astype(int) - rgb[..., 0]).max() <= 1
    np.testing.assert_array_equal(pixels_of(dest, df.loc["doppler.png"]), doppler)
    (shard,) = {r.item_id for r in rep.results}
    card = open_item(str(dest), shard).card
    assert any("3 RGB image(s) with equal channels" in w for w in card["warnings"])
    text = rep.render()
    assert text.count("carry colour") == 1 and "doppler.png" in text


def test_histology_rgb_keeps_three_channels(ray_session, tmp_path):
    raw = tmp_path / "he"
    raw.mkdir()
    grey = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    Image.fromarray(grey).save(raw / "a.png")
    Image.fromarray(grey).save(raw / "b.png")
    dest = tmp_path / "store"
    assert ingest([raw], dest).ok
    assert set(read_catalog(str(dest))["channels"]) == {3}  # histopathology is not a grayscale modality


def test_named_files_fail_loudly_and_one_item_per_file_keeps_old_items(ray_session, dataset, tmp_path):
    rep = ingest([dataset / "README.md", dataset / "benign" / "benign (0).png"], tmp_path / "s1")
    failed = {Path(r.source).name: r.reason for r in rep.results if r.status == "failed"}
    assert "not a recognised image format" in failed["README.md"] and not rep.skipped_files
    assert [r.item_id for r in rep.results if r.status == "ingested"] == ["benign-0"]  # a named file: its own item

    rep = ingest([dataset / "benign"], tmp_path / "s2", one_item_per_file=True)
    kinds = set(read_catalog(str(tmp_path / "s2"))["kind"])
    assert rep.count("ingested") == 7 and kinds == {"slide"}

    rep = ingest(
        [dataset / "benign" / "benign (0).png", dataset / "malignant" / "malignant (0).png"],
        tmp_path / "s3",
        collection="picked",
        labels_from_folders=True,
    )
    df = read_catalog(str(tmp_path / "s3"))
    assert list(df["group"].unique()) == ["picked-24x32x3-0000"] and list(df["label"]) == ["benign", "malignant"]


def test_mixed_depths_and_modes_group_apart(ray_session, tmp_path):
    raw = tmp_path / "mixed"
    raw.mkdir()
    g16 = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200
    Image.fromarray(g16).save(raw / "deep.png")
    Image.new("CMYK", (16, 16), (10, 20, 30, 0)).save(raw / "cmyk.jpg")
    Image.fromarray(np.full((16, 16, 4), 90, np.uint8)).save(raw / "rgba.png")
    dest = tmp_path / "store"
    assert ingest([raw], dest).ok
    df = read_catalog(str(dest)).set_index("relpath")
    assert df.loc["deep.png", "dtype"] == "uint16" and df.loc["deep.png", "group"] == "mixed-16x16x1-uint16-0000"
    np.testing.assert_array_equal(
        pixels_of(dest, df.loc["deep.png"])[..., 0], imagecodecs.png_decode((raw / "deep.png").read_bytes())
    )
    assert df.loc["cmyk.jpg", "channels"] == 3 and df.loc["rgba.png", "channels"] == 3


def test_s3_to_s3_collection(ray_session, s3_server, dataset, tmp_path):
    bucket = s3_server.new_bucket()
    s3_server.upload(dataset, bucket, "in/tiles")
    dest = f"s3://{bucket}/store"
    rep = ingest([f"s3://{bucket}/in/tiles"], dest, labels_from_folders=True)
    assert [r.item_id for r in rep.results if r.status == "ingested"] == ["tiles-24x32x3-0000", "tiles-40x40x3-0000"]
    df = read_catalog(dest).set_index("relpath")
    assert len(df) == 14
    assert df.loc["benign/benign (3).png", "source"] == f"s3://{bucket}/in/tiles/benign/benign (3).png"
    row = df.loc["benign/benign (3).png"]
    np.testing.assert_array_equal(
        pixels_of(dest, row), imagecodecs.png_decode((dataset / "benign" / "benign (3).png").read_bytes())
    )


def _status(dest: Path, item: str) -> str | None:
    try:
        card = json.loads((dest / "items" / f"{item}.zarr" / "zarr.json").read_text())
        return card["attributes"]["pretextlab"]["status"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


_WRITER = """
import sys
from pretextlab.storage.collection import write_shard
from pretextlab.storage.discovery import discover
from pretextlab.storage.options import ZarrOptions
found = discover([sys.argv[1]], shard_size=int(sys.argv[3]))
for plan in found.shards:
    write_shard(plan, sys.argv[2], ZarrOptions(collection_file_bytes=1 << 16), threads=1)
"""


def test_killed_mid_shard_leaves_it_invisible_and_rerun_writes_only_missing(ray_session, tmp_path):
    raw = tmp_path / "many"
    raw.mkdir()
    rng = np.random.default_rng(2)
    n = 1200
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            raw / f"img{i:05d}.png", compress_level=0
        )
    dest = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(raw), str(dest), "600"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    second = dest / "items" / "many-32x32x3-0001.zarr" / "all" / "images"
    killed_mid_write = False
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if second.exists() and len(list(second.rglob("c/*/*/*/*"))) >= 2:
                psutil.Process(proc.pid).kill()
                proc.wait(30)
                killed_mid_write = _status(dest, "many-32x32x3-0001") == "writing"
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed_mid_write, "finished or never started before the kill: " + proc.stdout.read().decode()[-2000:]
    assert _status(dest, "many-32x32x3-0000") == "complete"
    mtime = (dest / "items" / "many-32x32x3-0000.zarr" / "zarr.json").stat().st_mtime_ns

    rep = ingest([raw], dest, shard_size=600)
    assert {r.item_id: r.status for r in rep.results} == {
        "many-32x32x3-0000": "skipped",
        "many-32x32x3-0001": "ingested",
    }
    assert (dest / "items" / "many-32x32x3-0000.zarr" / "zarr.json").stat().st_mtime_ns == mtime
    df = read_catalog(str(dest))
    assert len(df) == n and df["source"].is_unique
    assert sorted(df["relpath"]) == [f"img{i:05d}.png" for i in range(n)]
    row = df.set_index("relpath").loc["img00900.png"]
    np.testing.assert_array_equal(pixels_of(dest, row), imagecodecs.png_decode((raw / "img00900.png").read_bytes()))


def test_repeated_warnings_are_aggregated():
    results = [ItemResult(f"tile{i}", "ingested", f"t{i}.png", warnings=["no pixel size"]) for i in range(3000)]
    results.append(ItemResult("odd", "ingested", "odd.png", warnings=["something else"]))
    lines = aggregate_warnings(results)
    assert lines == ["  warning 3,000 items: no pixel size (tile0, tile1, tile2 ...)", "  warning odd: something else"]


def test_cli_flags_reach_the_config(tmp_path):
    import argparse

    from pretextlab.jobs.ingest import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(
        parser.parse_args(
            [
                "x",
                "--to",
                str(tmp_path),
                "--labels-from-folders",
                "--one-item-per-file",
                "--collection",
                "c",
                "--shard-size",
                "7",
            ]
        )
    )
    assert cfg.labels_from_folders and cfg.one_item_per_file and cfg.collection == "c" and cfg.shard_size == 7
    assert not config_from_args(parser.parse_args(["x", "--to", str(tmp_path)])).labels_from_folders


if os.environ.get("PRETEXTLAB_NO_RAY_TESTS"):  # pragma: no cover
    pytestmark = pytest.mark.skip


def test_frozen_evaluation_reads_collection_rows(ray_session, dataset, tmp_path):
    from pretextlab.evaluate.dataset import load_eval_set

    dest = tmp_path / "store"
    ingest([dataset], dest, shard_size=5, labels_from_folders=True)
    ev = load_eval_set(str(dest), size=16)
    assert len(ev) == 14 and ev.class_names == ["benign", "malignant"] and set(ev.kinds) == {"image"}
    assert ev.images.shape == (14, 16, 16, 3) and np.bincount(ev.labels).tolist() == [7, 7]


def test_sixteen_bit_images_stream_and_evaluate_as_their_top_8_bits(ray_session, tmp_path):
    """One bit-depth policy (storage.pixels): the store keeps the 16 bits, the training stream and
    evaluation see the top 8 of them, as serving does for uploaded DICOM."""
    from pretextlab.evaluate.dataset import load_eval_set
    from pretextlab.storage.datasource import read_group
    from pretextlab.storage.stream import StreamSpec, plan_stream

    raw = tmp_path / "deep"
    planes = {}
    for cls in ("a", "b"):
        (raw / cls).mkdir(parents=True)
        for i in range(2):
            g16 = (np.arange(16 * 16, dtype=np.int64).reshape(16, 16) * (97 + 50 * i + (cls == "b"))) % 65536
            Image.fromarray(g16.astype(np.uint16)).save(raw / cls / f"{i}.png")
            planes[f"{cls}/{i}.png"] = g16.astype(np.uint16)
    dest = tmp_path / "store"
    assert ingest([raw], dest, labels_from_folders=True).ok
    df = read_catalog(str(dest)).set_index("item_id")
    assert set(df["dtype"]) == {"uint16"}
    plan = plan_stream(StreamSpec(sources=[str(dest)], kind="frames"))
    for group in plan.epoch_groups(0):
        batch = read_group(plan, group, 0, 0)
        assert batch["image"].dtype == np.uint8
        for item_id, image in zip(batch["item_id"], batch["image"]):
            np.testing.assert_array_equal(image[..., 0], planes[df.loc[item_id, "relpath"]] >> 8)
    ev = load_eval_set(str(dest))
    assert ev.images.dtype == np.uint8
    for item_id, image in zip(ev.item_ids, ev.images):
        np.testing.assert_array_equal(image[..., 0], planes[df.loc[item_id, "relpath"]] >> 8)


def _jpeg_with_metadata(arr: np.ndarray, comment: bytes) -> bytes:
    """A JPEG carrying an EXIF block and a COM segment that both hold ``comment``."""
    import io

    exif = Image.Exif()
    exif[0x010E] = comment.decode()  # ImageDescription
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, exif=exif.tobytes(), comment=comment)
    return buf.getvalue()


def test_jpeg_codec_keeps_source_jpegs_drops_their_metadata_and_encodes_the_rest(ray_session, tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "tiles" / "a"
    root.mkdir(parents=True)
    secret = b"PATIENT^JANE-0042"
    sources = {}
    for i in range(5):
        data = _jpeg_with_metadata(_rgb(rng, 40, 48), secret)
        assert secret in data
        (root / f"t{i}.jpg").write_bytes(data)
        sources[f"a/t{i}.jpg"] = data
    yy, xx = np.mgrid[0:40, 0:48]
    png = np.stack([100 + 2 * yy, 90 + 2 * xx, 120 + yy + xx], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    Image.fromarray(png).save(root / "p.png")
    dest = tmp_path / "store"
    rep = ingest([tmp_path / "tiles"], dest, zarr={"compressor": "jpeg", "quality": 95})
    assert rep.ok, rep.render()
    df = read_catalog(str(dest)).set_index("relpath")
    card = open_item(str(dest), df.iloc[0]["group"]).card
    assert card["codec"] == {
        "name": "jpeg",
        "lossless": False,
        "quality": 95,
        "jpeg_sources": "kept as they are (metadata segments dropped)",
    }
    for rel in sources:  # exactly the pixels of the source JPEG (no second generation)
        np.testing.assert_array_equal(pixels_of(dest, df.loc[rel]), np.asarray(Image.open(root / rel[2:])))
    got = pixels_of(dest, df.loc["a/p.png"]).astype(int)
    assert 0 < np.abs(got - png).mean() < 2.0  # the PNG was encoded once, lossy, at quality 95
    stored = b"".join(p.read_bytes() for p in (dest / "items").rglob("*") if p.is_file())
    assert secret not in stored  # EXIF / COM segments are not copied into the store
    image_bytes = sum(p.stat().st_size for p in (dest / "items").rglob("c/*/*/*/*") if p.is_file())
    assert image_bytes < sum(map(len, sources.values())) + 6 * 1000  # ~ the sources, not 5x them


def test_jpegxl_codec_round_trip_and_sixteen_bit_images_stay_lossless(ray_session, tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "src" / "x").mkdir(parents=True)
    smooth = (rng.random((32, 32)) * 40 + 90).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "src" / "x" / "g.png")
    deep = rng.integers(0, 4096, (32, 32), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "src" / "x" / "d16.png")
    dest = tmp_path / "store"
    rep = ingest([tmp_path / "src"], dest, zarr={"compressor": "jpegxl"})
    assert rep.ok, rep.render()
    df = read_catalog(str(dest)).set_index("relpath")
    grey = pixels_of(dest, df.loc["x/g.png"])[..., 0].astype(int)
    assert 0 < np.abs(grey - smooth).mean() < 3.0
    np.testing.assert_array_equal(pixels_of(dest, df.loc["x/d16.png"])[..., 0], deep)  # 16-bit: zstd, exact
    cards = {r: open_item(str(dest), df.loc[r, "group"]).card["codec"] for r in df.index}
    assert cards["x/g.png"]["name"] == "jpegxl" and cards["x/d16.png"] == {"name": "zstd", "lossless": True}


def test_fast_jpeg_decode_equals_pillow_and_a_cut_file_still_fails(tmp_path):
    import io

    from pretextlab.storage.collection import decode_fast_jpeg, decode_image

    rng = np.random.default_rng(5)
    for mode, kw in (("RGB", {}), ("RGB", {"progressive": True}), ("RGB", {"subsampling": 0}), ("L", {})):
        arr = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
        im = Image.fromarray(arr).convert(mode)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85, **kw)
        data = buf.getvalue()
        fast = decode_fast_jpeg(data)
        assert fast is not None
        ref = np.asarray(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(fast, ref if ref.ndim == 3 else ref[..., None])
    cut = data[: len(data) * 2 // 3]
    assert decode_fast_jpeg(cut) is None  # no end-of-image marker: Pillow's path, which raises
    with pytest.raises(OSError, match="truncated"):
        decode_image(cut)
    cmyk = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(cmyk, "JPEG")
    assert decode_fast_jpeg(cmyk.getvalue()) is None  # CMYK: Pillow converts it to RGB


def test_jpeg_header_fast_path_agrees_with_pillow():
    """Discovery's marker walk gives Pillow's shape and channels for plain JPEGs and defers the rest."""
    import io

    from pretextlab.storage.collection import jpeg_header, raster_header

    rng = np.random.default_rng(6)
    arr = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010E] = "x" * 40_000  # ImageDescription: the frame header lands past 40 kB
    cases = [("RGB", {}), ("RGB", {"progressive": True}), ("L", {}), ("RGB", {"exif": exif.tobytes()})]
    for mode, kw in cases:
        buf = io.BytesIO()
        Image.fromarray(arr).convert(mode).save(buf, "JPEG", quality=85, **kw)
        data = buf.getvalue()
        with Image.open(io.BytesIO(data)) as im:
            want = (im.height, im.width, 1 if im.mode == "L" else 3)
        got = raster_header(io.BytesIO(data), "x.jpg")
        assert got is not None and (got.height, got.width, got.channels, got.dtype) == (*want, "uint8")
        fast = jpeg_header(data[:16384])
        assert fast == (got if "exif" not in kw else None)  # a header past the bytes read: Pillow's path
    cmyk = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(cmyk, "JPEG")
    assert jpeg_header(cmyk.getvalue()) is None  # CMYK: Pillow's header (stored as RGB)
    got = raster_header(io.BytesIO(cmyk.getvalue()), "c.jpg")
    assert got is not None and got.channels == 3
    assert jpeg_header(b"\x89PNG\r\n\x1a\n") is None and jpeg_header(b"\xff\xd8\xff") is None
    plain = io.BytesIO()
    Image.fromarray(arr).save(plain, "JPEG", quality=90)
    for cut in (100, 300, 500):  # markers cut before the start of scan: Pillow decides (and fails)
        assert jpeg_header(plain.getvalue()[:cut] + b"\0" * 20) is None


def test_zstd_chunks_are_the_frames_numcodecs_writes():
    """The collection zstd encoder writes what numcodecs' Zstd (zarr's zstd codec) writes, byte for byte."""
    from numcodecs import Zstd

    from pretextlab.storage.collection import chunk_encoder
    from pretextlab.storage.options import ZarrOptions

    rng = np.random.default_rng(7)
    for dtype, c in (("uint8", 3), ("uint8", 1), ("uint16", 1)):
        enc = chunk_encoder(ZarrOptions(), dtype, c)
        for shape in ((20, 30, c), (20, 30, c), (9, 7, c)):  # a second image reuses the buffer, then a new shape
            img = rng.integers(0, 200, shape).astype(dtype)
            want = bytes(Zstd(level=1).encode(np.ascontiguousarray(img.transpose(2, 0, 1))))
            assert enc(img) == want


def test_plain_zarr_reads_a_jpeg_store_through_the_entry_point(ray_session, tmp_path):
    """A user's own zarr code (no pretextlab import) finds the codec through the installed entry point."""
    rng = np.random.default_rng(6)
    (tmp_path / "src" / "c").mkdir(parents=True)
    Image.fromarray(_rgb(rng, 16, 16)).save(tmp_path / "src" / "c" / "a.jpg", quality=90)
    dest = tmp_path / "store"
    assert ingest([tmp_path / "src"], dest, zarr={"compressor": "jpeg"}).ok
    arr_path = next((dest / "items").rglob("images"))
    code = (
        "import sys, zarr, numpy as np; a = zarr.open_array(sys.argv[1], mode='r'); "
        "print(a.shape, int(np.asarray(a[0]).sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(arr_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    expect = int(np.asarray(Image.open(tmp_path / "src" / "c" / "a.jpg")).sum())
    assert out.stdout.split(")")[-1].strip() == str(expect)
