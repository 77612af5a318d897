"""Every real sample file in ../shared/data ingests, and reads back identical to its source reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from identity import dicom_frames, dicom_wsi_level, pil_image, tiff_levels
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage import open_item, read_catalog

SKIP_SUFFIXES = {".md"}


@pytest.fixture(scope="module")
def store(ray_session, shared_data, tmp_path_factory):
    dest = tmp_path_factory.mktemp("shared-store")
    # one item per file: this module checks each file against its own reader (collections: test_collections)
    rep = run_ingest(IngestConfig(sources=[str(shared_data)], dest=str(dest), one_item_per_file=True), progress=False)
    return dest, rep


def test_every_shared_file_ingests(store, shared_data):
    dest, rep = store
    failed = {r.source: r.reason for r in rep.results if r.status == "failed"}
    # SOURCES.md is documentation found in the folder: skipped and counted, not failed
    assert not failed, failed
    assert rep.skipped_files == [str(shared_data / "SOURCES.md")]
    sources = [p for p in shared_data.rglob("*") if p.is_file() and p.suffix not in SKIP_SUFFIXES]
    covered = set()
    for r in rep.results:
        if r.status == "ingested":
            covered.update(open_item(str(dest), r.item_id).card["source"]["uris"])
    assert covered == {str(p) for p in sources}
    df = read_catalog(str(dest))
    assert len(df) == len(rep.results)
    kinds = df.set_index("item_id")["kind"].to_dict()
    assert kinds["wsi-dicom-cmu-1-small-region"] == "slide" and kinds["us-pal-8-10x-echo"] == "cine"


def _item_for(dest: Path, source: Path):
    for item_id in read_catalog(str(dest))["item_id"]:
        item = open_item(str(dest), item_id)
        if str(source) in item.card["source"]["uris"]:
            return item
    raise AssertionError(f"no item for {source}")


@pytest.mark.parametrize("name", ["wsi-svs/CMU-1-Small-Region.svs", "wsi-svs/tcga-cr-7395-01a-01-ts1.svs"])
def test_svs_identical(store, shared_data, name):
    dest, _ = store
    item = _item_for(dest, shared_data / name)
    for i, lv in enumerate(tiff_levels(shared_data / name)):
        np.testing.assert_array_equal(item.to_numpy(i), lv)


def test_svs_physical_metadata(store, shared_data):
    dest, _ = store
    cmu = _item_for(dest, shared_data / "wsi-svs/CMU-1-Small-Region.svs")
    assert cmu.mpp == pytest.approx(0.499) and cmu.card["objective_power"] == 20


def test_aperio_jpeg_tiles_kept_identical(shared_data, tmp_path):
    """An Aperio SVS (RGB-coded JPEG tiles of 240 px, shared JPEGTables) under the jpeg codec: the
    tiles become the chunks at their own size (tables merged, an Adobe no-transform marker added) and
    decode to exactly tifffile's pixels."""
    from pretextlab.storage import discover, write_item
    from pretextlab.storage.options import ZarrOptions

    src = shared_data / "wsi-svs/CMU-1-Small-Region.svs"
    plan = discover([str(src)]).plans[0]
    res = write_item(plan, str(tmp_path / "s"), ZarrOptions(compressor="jpeg"))
    assert res.status == "ingested", res.reason
    item = open_item(str(tmp_path / "s"), plan.item_id)
    assert item.card["levels"][0].get("source_jpeg") is True and item.level(0).chunks == (3, 240, 240)
    np.testing.assert_array_equal(item.to_numpy(0), tiff_levels(src)[0])


def test_dicom_wsi_identical(store, shared_data):
    dest, _ = store
    folder = shared_data / "wsi-dicom-cmu-1-small-region"
    item = _item_for(dest, folder / "level-0-frames-0-30.dcm")
    assert item.mpp == pytest.approx(0.499)
    for i in range(3):  # levels 0-2 are multi-frame tiled
        (f,) = folder.glob(f"level-{i}-frames-*.dcm")
        np.testing.assert_array_equal(item.to_numpy(i), dicom_wsi_level(f))
    assert item.level(0).shape == (3, 2967, 2220)


@pytest.mark.parametrize(
    "name",
    sorted(
        str(p.relative_to(Path(__file__).resolve().parents[2] / "shared" / "data"))
        for p in (Path(__file__).resolve().parents[2] / "shared" / "data").glob("ultrasound-dicom-*/*.dcm")
    ),
)
def test_ultrasound_dicom_identical(store, shared_data, name):
    dest, _ = store
    item = _item_for(dest, shared_data / name)
    np.testing.assert_array_equal(item.frames(), dicom_frames(shared_data / name))


@pytest.mark.parametrize("name", ["tissue-level0-4302-10273-4814-10785.png", "no-tissue.png"])
def test_png_tiles_identical(store, shared_data, name):
    dest, _ = store
    item = _item_for(dest, shared_data / "he-tiles-histolab" / name)
    np.testing.assert_array_equal(item.to_numpy(), pil_image(shared_data / "he-tiles-histolab" / name))
    frac = item.card["tissue_mask"]["tissue_fraction"]
    assert (frac < 0.05) if name == "no-tissue.png" else (frac > 0.2)
