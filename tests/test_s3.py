"""Ingest from and to object storage through a real S3 server on 127.0.0.1 (moto, IAM auth on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, run_cli
from identity import dicom_frames, tiff_levels
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage import open_item, read_catalog
from pretextlab.storage import synthetic as syn


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s3raw")
    syn.write_slide_tiff(root / "slides" / "big.tif", 1024, 1536, tile=256, levels=2, seed=4)
    syn.write_us_dicom(root / "us" / "loop.dcm", frames=5, rows=64, cols=80, syntax="jpeg2000")
    syn.write_wsi_dicom_series(root / "wsi" / "case-7", 600, 800, tile=256, levels=2)
    return root


def test_s3_to_s3_ingest_and_read_back(ray_session, s3_server, raw, tmp_path):
    bucket = s3_server.new_bucket()
    s3_server.upload(raw, bucket, "incoming")
    dest = f"s3://{bucket}/stores/main"
    labels = tmp_path / "labels.csv"
    labels.write_text("item_id,label\nbig,tumour\nloop,lesion\n")
    rep = run_ingest(IngestConfig(sources=[f"s3://{bucket}/incoming"], dest=dest, labels=str(labels)), progress=False)
    assert rep.ok, [r.reason for r in rep.results]
    assert sorted(r.item_id for r in rep.results) == ["big", "case-7", "loop"]
    df = read_catalog(dest)
    labels_by_id = {k: (None if v != v else v) for k, v in zip(df["item_id"], df["label"], strict=True)}
    assert labels_by_id == {"big": "tumour", "case-7": None, "loop": "lesion"}
    assert df.set_index("item_id").loc["big", "source"] == f"s3://{bucket}/incoming/slides/big.tif"

    slide = open_item(dest, "big")
    for i, lv in enumerate(tiff_levels(raw / "slides" / "big.tif")):
        np.testing.assert_array_equal(slide.to_numpy(i), lv)
    np.testing.assert_array_equal(open_item(dest, "loop").frames(), dicom_frames(raw / "us" / "loop.dcm"))
    assert open_item(dest, "case-7").num_levels == 2

    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="stores/main/")["Contents"]]
    assert "stores/main/catalog.parquet" in keys and "stores/main/items/big.zarr/zarr.json" in keys

    rep2 = run_ingest(IngestConfig(sources=[f"s3://{bucket}/incoming"], dest=dest), progress=False)
    assert rep2.count("skipped") == 3


def test_unreachable_and_unauthorised_buckets_fail_alone(ray_session, s3_server, raw, tmp_path):
    bucket = s3_server.new_bucket()
    s3_server.upload(raw / "us", bucket, "us")
    dest = tmp_path / "store"
    good = raw / "slides" / "big.tif"

    rep = run_ingest(
        IngestConfig(sources=[str(good), "s3://no-such-bucket-pretextlab/x"], dest=str(dest)), progress=False
    )
    failed = {r.source: r.reason for r in rep.results if r.status == "failed"}
    assert rep.count("ingested") == 1 and list(failed) == ["s3://no-such-bucket-pretextlab/x"]
    assert "no such file" in failed["s3://no-such-bucket-pretextlab/x"].lower()

    wrong = {"key": "AKIAWRONGWRONGWRONG", "secret": "not-the-secret"}
    rep = run_ingest(
        IngestConfig(sources=[f"s3://{bucket}/us"], dest=str(tmp_path / "s2")), storage_options=wrong, progress=False
    )
    (r,) = rep.results[:1]
    assert r.status == "failed" and "Access Key Id you provided does not exist" in r.reason

    closed = f"http://127.0.0.1:{free_port()}"
    rep = run_ingest(
        IngestConfig(sources=[f"s3://{bucket}/us"], dest=str(tmp_path / "s3")),
        storage_options={"endpoint_url": closed},
        progress=False,
    )
    assert rep.results[0].status == "failed" and "Could not connect" in rep.results[0].reason


def test_cli_reads_credentials_from_environment(s3_server, raw, tmp_path):
    bucket = s3_server.new_bucket()
    s3_server.upload(raw / "us", bucket, "us")
    ok = run_cli("ingest", f"s3://{bucket}/us", "--to", f"s3://{bucket}/store", "--quiet")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 ingested" in ok.stdout
    denied = run_cli(
        "ingest",
        f"s3://{bucket}/us",
        "--to",
        str(tmp_path / "x"),
        "--quiet",
        env={"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG", "AWS_SECRET_ACCESS_KEY": "nope"},
    )
    assert denied.returncode == 1
    assert "does not exist in our records" in denied.stdout and "Traceback" not in denied.stderr
