"""`bench-data` writes the phantoms through the normal ingest path: a labelled store with ROI masks."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from pretextlab.core.errors import UserError
from pretextlab.jobs import bench_data
from pretextlab.phantoms import generate
from pretextlab.storage import open_item, read_catalog


def _args(dest, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_data.add_arguments(parser)
    flags = [str(dest)]
    for k, v in kw.items():
        flags += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(flags)


def test_bench_data_writes_a_labelled_store_with_roi_masks(ray_session, tmp_path):
    dest = tmp_path / "store"
    args = _args(dest, modality="histology", locality=1.0, noise=0.5, items=20, size=32, seed=3, raw=tmp_path / "raw")
    assert bench_data.run(args) == 0
    cat = read_catalog(str(dest))
    images = cat[cat["label"].notna()]
    rois = cat[cat["item_id"].str.contains("-roi-")]
    assert len(images) == 20 and len(rois) == 20
    assert set(images["modality"]) == {"histopathology"}
    assert images["label"].value_counts().to_dict() == {"0": 10, "1": 10}
    assert sorted(images["split"].value_counts().to_dict().items()) == [("test", 4), ("train", 12), ("val", 4)]
    assert rois["label"].isna().all()
    # every image row names its mask row, and the stored mask is the generated one
    ps = generate("histology", n=20, size=32, locality=1.0, noise=0.5, seed=3)
    summary = json.loads((dest / "bench-data.json").read_text())
    assert summary["roi_column"] == "roi" and len(summary["records"]) == 20
    by_id = {r["item_id"]: r for r in summary["records"]}
    roi_ids = set(rois["item_id"])
    for row in images.to_dict("records"):
        assert row["roi"] in roi_ids
        rec = by_id[row["item_id"]]
        split, index = row["split"], int(row["index"])
        img = open_item(str(dest), row["group"]).group[split]["images"][index]
        mask = open_item(str(dest), row["roi"].rsplit(f"-{split}-", 1)[0]).group[split]["images"][index][0]
        np.testing.assert_array_equal(img.transpose(1, 2, 0), ps.images[rec["index"]])
        np.testing.assert_array_equal(mask > 0, ps.masks[rec["index"]])
        assert int(row["label"]) == rec["label"] == ps.labels[rec["index"]]


def test_bench_data_bad_flags():
    parser = argparse.ArgumentParser()
    bench_data.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["x", "--locality", "2"])
    with pytest.raises(UserError, match="--items"):
        bench_data.run(_args("x", items=7))
    with pytest.raises(UserError, match="--geometry"):
        bench_data.run(_args("x", modality="histology", geometry="linear"))
