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


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory):
    """20 local-label histology phantoms at 32 px with their ROI masks, through `bench-data`."""
    tmp = tmp_path_factory.mktemp("bench")
    dest = tmp / "store"
    args = _args(dest, modality="histology", locality=1.0, noise=0.5, items=20, size=32, seed=3, raw=tmp / "raw")
    assert bench_data.run(args) == 0
    return dest


def test_bench_data_writes_a_labelled_store_with_roi_masks(store):
    dest = store
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


def test_evaluate_scores_feature_maps_against_the_roi_masks(store, tmp_path):
    """`evaluate` reads each test row's mask (catalog column 'roi') and scores the feature maps on it: every
    test image whose mask is neither empty nor full is scored, and the text table reports it."""
    import torch

    from pretextlab.evaluate import EvaluateConfig, evaluate_encoder
    from pretextlab.evaluate.report import render_table
    from pretextlab.evaluate.roi import read_roi_masks
    from pretextlab.models import BackboneConfig, EncoderCard, create_backbone, save_encoder

    cat = read_catalog(str(store))
    test = cat[cat["label"].notna() & (cat["split"] == "test")]
    masks = read_roi_masks(str(store), list(test["item_id"])).masks
    ps = generate("histology", n=20, size=32, locality=1.0, noise=0.5, seed=3)
    summary = {r["item_id"]: r["index"] for r in json.loads((store / "bench-data.json").read_text())["records"]}
    for item_id, mask in zip(test["item_id"], masks):
        np.testing.assert_array_equal(mask, ps.masks[summary[item_id]])
    partial = sum(bool(m.any() and not m.all()) for m in masks)
    assert partial >= 1  # the abnormal local items: a few atypical nuclei

    cfg = BackboneConfig(arch="vit_tiny", img_size=32, patch_size=8, depth=1, in_chans=3)
    torch.manual_seed(0)
    model = create_backbone(cfg)
    card = EncoderCard(
        name="tiny",
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=32,
        patch_size=8,
        in_chans=3,
        objective="random-init",
    )
    folder = save_encoder(model, card, tmp_path / "enc")
    ev = EvaluateConfig(shots=[1], fewshot_repeats=1, n_bootstrap=50, alignment_images=0)
    res = evaluate_encoder(folder, str(store), ev)
    loc = res["localisation"]
    assert loc["with_mask"] == len(test) and loc["n_images"] == partial
    assert len(loc["skipped"]) == len(test) - partial
    for score in ("pointing_game", "auroc"):
        est = loc[score]["anchor-similarity"]
        assert 0.0 <= est["low"] <= est["value"] <= est["high"] <= 1.0
    assert f"localisation on {partial} test images with an ROI" in render_table(res)
    off = evaluate_encoder(folder, str(store), ev.model_copy(update={"localisation": False}))
    assert off["localisation"] is None


def test_frames_stream_reads_image_stacks_row_for_row_without_the_roi_masks(store):
    """A store of stills / tiles (image stacks) trains through the frames stream: every image row is one
    sample, with its catalog item id and label and the stored pixels; the ROI mask images never are."""
    from pretextlab.storage.datasource import read_group
    from pretextlab.storage.stream import StreamSpec, plan_stream

    plan = plan_stream(StreamSpec(sources=[str(store)], kind="frames"))
    assert plan.sample_shape == (32, 32, 3) and plan.samples_per_epoch == 20
    cat = read_catalog(str(store)).set_index("item_id")
    seen = {}
    for group in plan.epoch_groups(0):
        batch = read_group(plan, group, 0, 0)
        for item_id, label, pixels in zip(batch["item_id"], batch["label"], batch["image"]):
            row = cat.loc[item_id]
            assert row["kind"] == "image" and "-roi-" not in item_id and label == row["label"]
            split = item_id[len(row["group"]) + 1 :].rsplit("-", 1)[0]
            stored = open_item(str(store), row["group"]).group[split]["images"][int(row["index"])]
            np.testing.assert_array_equal(pixels, stored.transpose(1, 2, 0))
            seen[item_id] = True
    assert len(seen) == 20  # one epoch: every image once
