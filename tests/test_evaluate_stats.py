"""evaluate_encoder's CIs are cluster CIs when test rows share a patient, and say so (in-process, no Ray, tiny ViT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pretextlab.evaluate import evaluate_encoder, render_table
from pretextlab.evaluate.metrics import classification_metrics
from pretextlab.models import BackboneConfig, EncoderCard, create_backbone, save_encoder
from pretextlab.storage import discover, read_catalog, synthetic, write_item
from pretextlab.storage.catalog import rebuild_catalog

TINY = BackboneConfig(img_size=32, patch_size=8, in_chans=1)
FAST = {
    "shots": [2],
    "fewshot_repeats": 2,
    "n_bootstrap": 300,
    "alignment_images": 0,
    "k": 5,
    "device": "cpu",
    "linear_Cs": [1.0],
}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_backbone(TINY)
    card = EncoderCard(
        name="tiny",
        timm_name=TINY.timm_name,
        timm_kwargs=TINY.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=32,
        patch_size=8,
        in_chans=1,
        objective="random-init",
    )
    return save_encoder(model, card, tmp_path_factory.mktemp("enc") / "tiny")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[str, str]:
    """The same 48 labelled images twice: without patients, and with 4 images per patient (within each split)."""
    root = tmp_path_factory.mktemp("npz")
    synthetic.write_npz(root / "src" / "stripes.npz", per_split=16, size=28, channels=1, seed=3)
    out = []
    for name in ("plain", "patients"):
        dest = root / name
        for plan in discover([str(root / "src")]).plans:
            assert write_item(plan, str(dest)).status == "ingested"
        rebuild_catalog(str(dest))
        if name == "patients":
            cat = read_catalog(str(dest))
            rows = [
                f"{r.item_id},{r.label},{r.split}-P{int(r.item_id.rsplit('-', 1)[1]) // 4}" for r in cat.itertuples()
            ]
            (root / "labels.csv").write_text("item_id,label,patient_id\n" + "\n".join(rows) + "\n")
            rebuild_catalog(str(dest), str(root / "labels.csv"))
        out.append(str(dest))
    return out[0], out[1]


@pytest.fixture(scope="module")
def grouped(encoder, stores) -> dict:
    """The tiny encoder on the store whose test rows come 4 per patient, with its per-row predictions."""
    return evaluate_encoder(encoder, stores[1], {**FAST, "keep_predictions": True})


def test_evaluate_resamples_patients_and_reports_the_unit(encoder, stores, grouped):
    plain_store, patient_store = stores
    plain = evaluate_encoder(encoder, plain_store, FAST)
    assert "predictions" not in plain
    assert plain["bootstrap"]["unit"] == "sample" and plain["bootstrap"]["n_groups"] == 16
    assert grouped["bootstrap"] == {
        "unit": "group",
        "group_by": "patient_id",
        "n_groups": 4,
        "n_test": 16,
        "method": "cluster bootstrap: whole groups resampled with replacement",
    }
    for block in ("knn", "linear"):
        p, g = plain[block]["metrics"]["accuracy"], grouped[block]["metrics"]["accuracy"]
        assert p["value"] == g["value"]  # same images, same features, same predictions
        assert p["unit"] == "sample" and g["unit"] == "group" and g["n_units"] == 4
    cat = read_catalog(patient_store)
    test = cat[cat["split"] == "test"]
    assert grouped["fewshot"]["results"][0]["accuracy_ci"]["unit"] == "group"
    knn = grouped["knn"]["metrics"]["balanced_accuracy"]
    assert knn["low"] <= knn["value"] <= knn["high"]
    assert sorted(set(test["patient_id"])) == ["test-P0", "test-P1", "test-P2", "test-P3"]
    assert "resampling 4 patients" in render_table(grouped) and "resampling" not in render_table(plain)


def test_grouped_cis_are_wider_for_correlated_rows():
    """Whole patients right or wrong (rows of a patient agree): the patient bootstrap is much wider."""
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(20), 10)
    y = rng.integers(0, 2, 200)
    right = rng.random(20) < 0.7
    pred = np.where(right[patients], y, 1 - y)
    rows = classification_metrics(y, pred, n_boot=500)["accuracy"]
    clus = classification_metrics(y, pred, n_boot=500, groups=patients)["accuracy"]
    assert clus.value == rows.value and (clus.high - clus.low) > 2.5 * (rows.high - rows.low)


def test_evaluate_marks_a_dino_run_whose_loss_ended_at_ln_k(stores, tmp_path):
    """The card's final loss at ln(out_dim) is a collapse signal; a dead encoder is complete collapse."""
    torch.manual_seed(0)
    model = create_backbone(TINY)
    card = EncoderCard(
        name="dino-uniform",
        timm_name=TINY.timm_name,
        timm_kwargs=TINY.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=32,
        patch_size=8,
        in_chans=1,
        objective="dino",
        objective_config={"out_dim": 1024},
        metrics={"loss_dino": 6.931, "loss": 6.931},
    )
    res = evaluate_encoder(save_encoder(model, card, tmp_path / "uniform"), stores[0], FAST)
    d = res["diagnostics"]
    assert d["collapse"] == "partial" and d["collapsed"] is False  # healthy random-init features, uniform loss
    assert any("uniform-output value 6.931" in r for r in d["collapse_reasons"])
    assert "collapsed: PARTIAL" in render_table(res) and any(n.startswith("partial collapse") for n in res["notes"])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.norm.bias.fill_(0.5)  # every input -> the same vector
    res = evaluate_encoder(save_encoder(model, card, tmp_path / "dead"), stores[0], FAST)
    assert res["diagnostics"]["collapse"] == "complete" and res["diagnostics"]["collapsed"] is True
    assert len(res["diagnostics"]["collapse_reasons"]) >= 2 and "collapsed: COMPLETE" in render_table(res)


def test_compare_arms_pairs_the_same_test_rows_by_patient(grouped, stores, tmp_path):
    import copy
    import json

    from pretextlab.evaluate.compare import compare_arms

    torch.manual_seed(1)
    other = create_backbone(TINY)
    card = EncoderCard(
        name="other",
        timm_name=TINY.timm_name,
        timm_kwargs=TINY.timm_kwargs(),
        embed_dim=other.embed_dim,
        img_size=32,
        patch_size=8,
        in_chans=1,
        objective="random-init",
    )
    cfg = {**FAST, "keep_predictions": True}
    results = {"a": grouped, "b": evaluate_encoder(save_encoder(other, card, tmp_path / "other"), stores[1], cfg)}
    results = json.loads(json.dumps(results))  # as read back from the result files
    pred = results["a"]["predictions"]
    assert len(pred["rows"]) == 16 and len(set(pred["groups"])) == 4 and len(pred["linear"]["probs"][0]) == 2
    cmp = compare_arms(results, "knn", "accuracy", n_boot=300)
    (c,) = cmp.comparisons
    d = c.difference
    a_acc, b_acc = (
        results["a"]["knn"]["metrics"]["accuracy"]["value"],
        results["b"]["knn"]["metrics"]["accuracy"]["value"],
    )
    assert d.difference == pytest.approx(a_acc - b_acc) and d.unit == "group" and d.n_units == 4
    assert d.p_holm == d.p_value and c.verdict in ("A > B", "B > A", "tie") and cmp.flagged == {}
    assert compare_arms(results, "linear", "auroc", n_boot=100).comparisons[0].difference.metric == "auroc"
    shifted = copy.deepcopy(results)
    shifted["b"]["predictions"]["rows"][0] += 1
    with pytest.raises(ValueError, match="not scored on the same test rows"):
        compare_arms(shifted)
    del shifted["b"]["predictions"]
    with pytest.raises(ValueError, match="keep_predictions=True"):
        compare_arms(shifted)
