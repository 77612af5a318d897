"""The ingest job on a real local Ray cluster: report, idempotency, labels, every bad-input case."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from pretextlab.core.errors import UserError
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage import ItemNotFound, open_item, read_catalog
from pretextlab.storage import synthetic as syn


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    syn.write_slide_tiff(root / "slides" / "a.tif", 1024, 1280, tile=256, levels=2)
    syn.write_slide_tiff(root / "slides" / "b.svs", 768, 768, tile=256, levels=1, svs=True, seed=3)
    syn.write_us_dicom(root / "us" / "loop.dcm", frames=6, rows=64, cols=80, syntax="rle")
    syn.write_us_dicom(root / "us" / "still.dcm", frames=1, rows=64, cols=80, color="RGB")
    syn.write_video(root / "us" / "clip.mp4", frames=8, rows=48, cols=64)
    return root


def ingest(sources, dest, **kw):
    return run_ingest(IngestConfig(sources=[str(s) for s in sources], dest=str(dest), **kw), progress=False)


def test_ingest_report_catalog_and_idempotent_rerun(ray_session, sample, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "source,label,patient_id,split\na.tif,tumour,P1,train\nloop.dcm,lesion,P2,val\nghost.tif,x,P9,test\n"
    )
    dest = tmp_path / "store"
    rep = ingest([sample / "slides", sample / "us"], dest, labels=str(labels))
    assert rep.ok and rep.count("ingested") == 5 and rep.count("skipped") == 0
    assert rep.unmatched_labels == ["ghost.tif"]
    df = read_catalog(str(dest))
    assert sorted(df["item_id"]) == ["a", "b", "clip", "loop", "still"]
    by_id = df.set_index("item_id")
    assert by_id.loc["a", "label"] == "tumour" and by_id.loc["a", "patient_id"] == "P1"
    assert by_id.loc["loop", "split"] == "val" and by_id.loc["loop", "kind"] == "cine"
    assert by_id.loc["b", "mpp"] == pytest.approx(0.5) and by_id.loc["b", "objective_power"] == 20
    assert pd.isna(by_id.loc["clip", "label"])
    assert all(str(c).startswith("sha256:") for c in df["checksum"])
    report = json.loads((dest / "ingest-report.json").read_text())
    assert report["ingested"] == 5 and report["failed"] == 0

    mtime = (dest / "items" / "a.zarr" / "zarr.json").stat().st_mtime_ns
    rep2 = ingest([sample / "slides", sample / "us"], dest)
    assert rep2.count("skipped") == 5 and rep2.count("ingested") == 0
    assert (dest / "items" / "a.zarr" / "zarr.json").stat().st_mtime_ns == mtime  # untouched
    # labels stored with the store survive a rebuild without --labels
    assert read_catalog(str(dest)).set_index("item_id").loc["a", "label"] == "tumour"

    # a changed source is re-ingested, the others skipped
    changed = tmp_path / "changed"
    shutil.copytree(sample / "us", changed)
    syn.write_us_dicom(changed / "loop.dcm", frames=3, rows=64, cols=80, syntax="rle", seed=9)
    rep3 = ingest([sample / "slides", changed], dest)
    assert rep3.count("ingested") == 1 and rep3.count("skipped") == 4
    assert open_item(str(dest), "loop").frames().shape[0] == 3


def test_store_inside_a_source_folder_is_not_ingested_as_source(ray_session, sample, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(sample / "us", src)
    first = ingest([src], src / "store")
    second = ingest([src], src / "store")
    assert first.ok and second.ok
    assert first.count("ingested") == 3 and second.count("skipped") == 3 and len(second.results) == 3


def test_bad_inputs_fail_alone_and_leave_nothing_partial(ray_session, sample, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = syn.write_us_dicom(bad / "good.dcm", frames=2, rows=32, cols=32)
    data = good.read_bytes()
    (bad / "truncated.dcm").write_bytes(data[: len(data) - 900])
    (bad / "notes.txt").write_text("this is not an image\n")
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    mpeg = syn.write_us_dicom(bad / "mpeg2.dcm", frames=1, rows=32, cols=32)
    import pydicom

    ds = pydicom.dcmread(mpeg)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + os.urandom(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(mpeg, enforce_file_format=True)
    (bad / "broken.tif").write_bytes(b"II*\x00" + os.urandom(200))

    dest = tmp_path / "store"
    rep = ingest([bad, tmp_path / "does-not-exist"], dest)
    reasons = {Path(r.source).name: r.reason for r in rep.results if r.status == "failed"}
    assert rep.count("ingested") == 1 and not rep.ok
    assert "less than expected" in reasons["truncated.dcm"] or "frame" in reasons["truncated.dcm"], reasons
    assert "notes.txt" not in reasons and [Path(f).name for f in rep.skipped_files] == [
        "notes.txt"
    ]  # found in a folder: skipped
    assert reasons["empty.dcm"] == "empty file (0 bytes)"
    assert "DICOM" in reasons["garbage.dcm"]
    assert "unsupported transfer syntax" in reasons["mpeg2.dcm"] and "MPEG2" in reasons["mpeg2.dcm"]
    assert "TIFF" in reasons["broken.tif"]
    assert "no such file" in reasons["does-not-exist"]
    assert all("\n" not in r and "Traceback" not in r for r in reasons.values())
    # nothing partial: only the good item exists in the store, and it is complete
    assert sorted(p.name for p in (dest / "items").iterdir()) == ["good.zarr"]
    assert list(read_catalog(str(dest))["item_id"]) == ["good"]


def test_incomplete_item_is_invisible(ray_session, sample, tmp_path):
    dest = tmp_path / "store"
    ingest([sample / "us" / "loop.dcm"], dest)
    card_path = dest / "items" / "loop.zarr" / "zarr.json"
    meta = json.loads(card_path.read_text())
    meta["attributes"]["pretextlab"]["status"] = "writing"  # as a crash mid-write leaves it
    card_path.write_text(json.dumps(meta))
    with pytest.raises(ItemNotFound, match="incomplete"):
        open_item(str(dest), "loop")
    from pretextlab.storage.catalog import rebuild_catalog

    df, _ = rebuild_catalog(str(dest))
    assert df.empty
    rep = ingest([sample / "us" / "loop.dcm"], dest)  # the rerun rewrites it
    assert rep.count("ingested") == 1
    np.testing.assert_array_equal(
        open_item(str(dest), "loop").frames()[..., 0],
        __import__("pydicom").dcmread(sample / "us" / "loop.dcm").pixel_array,
    )


def test_labels_errors_are_one_line_before_work(tmp_path, sample):
    bad = tmp_path / "l.csv"
    bad.write_text("name,label\na,1\n")
    with pytest.raises(UserError, match=r"l.csv: needs an 'item_id' or 'source' column"):
        ingest([sample / "slides"], tmp_path / "s", labels=str(bad))
    assert not (tmp_path / "s").exists()
    dup = tmp_path / "d.csv"
    dup.write_text("item_id,label\na,1\na,2\n")
    with pytest.raises(UserError, match="repeats 'a'"):
        ingest([sample / "slides"], tmp_path / "s", labels=str(dup))


def test_cli_end_to_end_exit_codes(sample, tmp_path):
    dest = tmp_path / "cli-store"
    src = tmp_path / "src"
    shutil.copytree(sample / "us", src)
    (src / "junk.bin").write_bytes(b"\x01\x02junk")
    # junk.bin named explicitly fails loudly (found only by walking the folder it would be skipped)
    out = run_cli(
        "ingest",
        str(src / "junk.bin"),
        str(src),
        "--to",
        str(dest),
        "--quiet",
        "--set",
        "zarr.chunk=256",
        env={"RAY_ADDRESS": ""},
    )
    assert out.returncode == 1, out.stdout + out.stderr  # one item failed
    assert "3 ingested, 0 skipped, 1 failed" in out.stdout
    assert "FAILED" in out.stdout and "junk.bin: not a recognised image format" in out.stdout
    assert "Traceback" not in out.stderr
    cat = run_cli("catalog", str(dest))
    assert cat.returncode == 0 and "3 items (3 cine)" in cat.stdout and "loop" in cat.stdout
    js = run_cli("catalog", str(dest), "--format", "json")
    assert {r["item_id"] for r in json.loads(js.stdout)} == {"clip", "loop", "still"}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["ingest", "x.tif"], "DEST"),  # --to missing -> pydantic names the field 'dest'
        (["ingest", "--to", "/tmp/x"], "sources"),
        (["ingest", "a.tif", "--to", "/tmp/x", "--set", "zarr.chunk=abc"], "zarr.chunk"),
        (["ingest", "a.tif", "--to", "/tmp/x", "--set", "zarr.chunky=1"], "zarr.chunky: unknown field"),
        (
            ["ingest", "a.tif", "--to", "/tmp/x", "--config", "/nonexistent.yaml"],
            "/nonexistent.yaml: config file not found",
        ),
        (["ingest", "a.tif", "--to", "/tmp/x", "--modality", "mri"], "invalid choice"),
        (["catalog", "/nonexistent/store"], "no catalog here"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_cli_usage_errors_exit_2_one_line(args, needle, tmp_path):
    out = run_cli(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert needle in out.stderr or needle.lower() in out.stderr.lower(), out.stderr
    error_lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
    assert len(error_lines) == 1, out.stderr


def test_slide_levels_with_the_jpeg_codec_keep_source_tiles_and_read_back_smaller(ray_session, sample, tmp_path):
    lossless = ingest([sample / "slides" / "a.tif"], tmp_path / "zstd")
    lossy = ingest([sample / "slides" / "a.tif"], tmp_path / "jpeg", zarr={"compressor": "jpeg", "quality": 90})
    assert lossless.ok and lossy.ok, lossy.render()
    a, b = open_item(str(tmp_path / "zstd"), "a"), open_item(str(tmp_path / "jpeg"), "a")
    assert b.card["codec"]["name"] == "jpeg" and b.card["codec"]["lossless"] is False and "codec" not in a.card
    # the source's JPEG tiles (256 px) are kept as level 0's and level 1's chunks: exact, at the tile size
    np.testing.assert_array_equal(np.asarray(b.level(0)[:]), np.asarray(a.level(0)[:]))
    assert b.level(0).chunks == (3, 256, 256) and b.card["levels"][1]["source_jpeg"] is True
    # a level built here is encoded once at the quality: lossy, but close
    last = b.num_levels - 1
    assert "source_jpeg" not in b.card["levels"][last] and b.level(last).chunks == (3, 512, 512)
    ref, got = np.asarray(a.level(last)[:]).astype(int), np.asarray(b.level(last)[:]).astype(int)
    assert got.shape == ref.shape and 0 < np.abs(got - ref).mean() < 3.0
    # the mask is not an image: stored lossless (zstd), though computed from the lossy pyramid levels
    assert "jpeg" not in json.dumps(b.group["tissue_mask"].metadata.to_dict()["codecs"])
    assert "pretextlab.jpeg" in json.dumps(b.level(0).metadata.to_dict()["codecs"])
    mask_a, mask_b = np.asarray(a.group["tissue_mask"]), np.asarray(b.group["tissue_mask"])
    assert (mask_a != mask_b).mean() < 0.001

    def size(root):
        return sum(p.stat().st_size for p in (root / "items").rglob("*") if p.is_file() and p.name != "zarr.json")

    assert size(tmp_path / "jpeg") < size(tmp_path / "zstd") / 2
