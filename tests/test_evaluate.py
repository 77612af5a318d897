"""Frozen-feature evaluation: kNN, linear probe, few-shot, metrics with CIs, splits, diagnostics, feature
maps, catalogs as evaluation sets, and the `pretextlab evaluate` command (tiny ViTs, 32 px, patch 8)."""

from __future__ import annotations

import ast
import copy
import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from conftest import REPO, run_cli
from pretextlab.core.errors import UserError
from pretextlab.evaluate import (
    alignment,
    anchor_similarity,
    classification_metrics,
    cls_attention_maps,
    embedding_std,
    extract_features,
    few_shot,
    is_collapsed,
    knn_predict,
    linear_probe,
    load_eval_set,
    make_split,
    patch_tokens,
    preprocess,
    rankme,
    save_feature_maps,
    uniformity,
)
from pretextlab.evaluate.feature_maps import last_block_attention
from pretextlab.models import BackboneConfig, EncoderCard, create_backbone, save_encoder
from pretextlab.storage import discover, open_item, synthetic, write_item
from pretextlab.storage.catalog import rebuild_catalog

TINY = BackboneConfig(img_size=32, patch_size=8, in_chans=1)


# ---------------------------------------------------------------- fixtures


def _ingest(src: Path, dest: Path, labels: Path | None = None) -> str:
    for plan in discover([str(src)]).plans:
        assert write_item(plan, str(dest)).status == "ingested"
    rebuild_catalog(str(dest), str(labels) if labels else None)
    return str(dest)


def _save_tiny(folder: Path, cfg: BackboneConfig = TINY, seed: int = 0, name: str = "tiny") -> Path:
    torch.manual_seed(seed)
    model = create_backbone(cfg)
    card = EncoderCard(
        name=name,
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        objective="random-init",
    )
    return save_encoder(model, card, folder)


@pytest.fixture(scope="module")
def npz_store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("npz")
    synthetic.write_npz(root / "src" / "stripes.npz", per_split=16, size=28, channels=1, seed=3)
    return _ingest(root / "src", root / "stripes")


@pytest.fixture(scope="module")
def cine_sources(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("cine-src")
    for i in range(4):
        synthetic.write_us_dicom(src / f"liver-{i}.dcm", frames=5, rows=48, cols=64, seed=i, label=i % 2)
    return src


@pytest.fixture(scope="module")
def unlabelled_cine_store(cine_sources, tmp_path_factory) -> str:
    return _ingest(cine_sources, tmp_path_factory.mktemp("cine-unlabelled") / "store")


@pytest.fixture(scope="module")
def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone(TINY).eval()


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("enc") / "tiny")


def _clusters(n_per_class: int, classes: int = 3, dim: int = 16, seed: int = 0, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(scale=spread, size=(len(y), dim))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


# ---------------------------------------------------------------- kNN, linear probe, few-shot


def test_knn_matches_hand_computed_weighted_votes():
    """6 points at 0..180 deg; the test point at 40 deg is 40, 30, 20 deg from class 0 and 50 deg from class 1."""
    deg = np.array([0, 10, 20, 90, 100, 180], dtype=np.float64)
    norms = np.array([[1], [2], [3], [1], [5], [1]])
    train = np.stack([np.cos(np.radians(deg)), np.sin(np.radians(deg))], axis=1) * norms
    labels = np.array([0, 0, 0, 1, 1, 1])
    test = np.array([[math.cos(math.radians(40)), math.sin(math.radians(40))]]) * 7  # norms must not matter
    T = 0.1
    preds, probs = knn_predict(train, labels, test, k=4, temperature=T)
    w0 = sum(math.exp(math.cos(math.radians(a)) / T) for a in (40, 30, 20))  # 0, 10, 20 deg are 40, 30, 20 deg away
    w1 = math.exp(math.cos(math.radians(50)) / T)  # 90 deg is 50 deg away; 100 and 180 deg are not among the top 4
    assert isinstance(preds, np.ndarray) and preds.tolist() == [0]
    np.testing.assert_allclose(probs[0], [w0 / (w0 + w1), w1 / (w0 + w1)], rtol=1e-5)
    # k larger than the training set is capped; tensors in -> tensors out
    tp, tprobs = knn_predict(torch.tensor(train), torch.tensor(labels), torch.tensor(test), k=100, temperature=T)
    assert isinstance(tp, torch.Tensor) and tprobs.shape == (1, 2)
    w1_all = w1 + sum(math.exp(math.cos(math.radians(a)) / T) for a in (60, 140))
    assert tprobs[0, 1].item() == pytest.approx(w1_all / (w0 + w1_all), rel=1e-5)


def test_knn_and_linear_probe_separate_clusters():
    x, y = _clusters(40, classes=3, seed=1)
    tr, te = slice(0, 60), slice(60, None)
    preds, probs = knn_predict(x[tr], y[tr], x[te], k=5, num_classes=3, chunk_size=7)  # several chunks
    assert (preds == y[te]).mean() >= 0.95
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    lin = linear_probe(x[tr], y[tr], x[te], num_classes=3)
    assert (lin.preds == y[te]).mean() >= 0.95
    assert lin.selection.startswith("held-out") and lin.C in lin.val_scores
    np.testing.assert_allclose(lin.probs.sum(axis=1), 1.0, rtol=1e-6)
    # with an explicit validation split, C is chosen there and the probe refit on train + val
    val = linear_probe(x[:40], y[:40], x[te], x[40:60], y[40:60], Cs=(0.01, 1.0), num_classes=3)
    assert val.selection == "validation split" and set(val.val_scores) == {0.01, 1.0}
    assert (val.preds == y[te]).mean() >= 0.95


def test_linear_probe_is_class_balanced():
    """95:5 imbalance with overlapping classes: balanced weights keep the minority class recall up."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(190, int), np.ones(10, int)]
    x = rng.normal(size=(200, 4)) + y[:, None] * 1.5
    yt = np.r_[np.zeros(100, int), np.ones(100, int)]
    xt = rng.normal(size=(200, 4)) + yt[:, None] * 1.5
    res = linear_probe(x, y, xt, C=1.0)
    assert res.selection == "fixed"
    assert (res.preds[yt == 1] == 1).mean() > 0.85  # 0.95 here; an unweighted probe finds 0.68 of class 1


def test_few_shot_draws_n_per_class_and_reports_mean_std():
    x, y = _clusters(30, classes=2, seed=2, spread=1.5)
    out = few_shot(x[:40], y[:40], x[40:], y[40:], shots=(1, 5), repeats=3, method="linear")
    assert [r.shots for r in out] == [1, 5]
    for r in out:
        assert len(r.values["accuracy"]) == 3
        assert r.mean["accuracy"] == pytest.approx(np.mean(r.values["accuracy"]))
        assert r.std["accuracy"] == pytest.approx(np.std(r.values["accuracy"], ddof=1))
    assert out[1].mean["accuracy"] >= 0.9
    knn = few_shot(x[:40], y[:40], x[40:], y[40:], shots=(100,), repeats=2, method="knn", k=5)
    assert knn[0].notes and "fewer than 100" in knn[0].notes[0]
    from pretextlab.evaluate.fewshot import sample_shots

    pick = sample_shots(y[:40], 5, np.random.default_rng(0))
    assert np.bincount(y[:40][pick]).tolist() == [5, 5]


# ---------------------------------------------------------------- metrics


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_equal_sklearn_and_cis_behave():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 120)
    logits = rng.normal(size=(120, 3)) + np.eye(3)[y] * 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    m = classification_metrics(y, pred, probs, 3, n_boot=500, seed=1)
    assert m["accuracy"].value == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"].value == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auroc"].value == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for est in m.values():
        assert est.low <= est.value <= est.high and est.n_boot == 500
    # predictions with a class absent from y_true (sklearn's macro-F1 still counts it); binary AUROC
    yb = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    pb = np.array([0, 2, 1, 1, 0, 0, 0, 1, 2, 0])
    sb = np.linspace(0.1, 0.9, 10)
    mb = classification_metrics(yb, pb, n_boot=50)
    assert mb["macro_f1"].value == pytest.approx(f1_score(yb, pb, average="macro"))
    assert mb["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(yb, pb))
    sb[[2, 3]] = sb[[4, 5]]  # ties count one half, as in sklearn
    binary = classification_metrics(yb, (sb > 0.5).astype(int), np.c_[1 - sb, sb], 2, n_boot=50)
    assert binary["auroc"].value == pytest.approx(roc_auc_score(yb, sb))

    # the same error rate on 40x more rows gives a much narrower interval
    def width(n: int) -> float:
        yy = np.arange(n) % 2
        pp = np.where(np.arange(n) % 5 == 0, 1 - yy, yy)  # 80 % correct
        est = classification_metrics(yy, pp, n_boot=400, seed=0)["accuracy"]
        assert est.value == pytest.approx(0.8) and est.low <= 0.8 <= est.high
        return est.high - est.low

    assert width(2000) < width(50) / 4


def test_auroc_is_nan_with_a_note_when_a_class_is_absent():
    y = np.array([0, 1, 0, 1, 0, 1])
    probs = np.full((6, 3), 1 / 3)
    m = classification_metrics(y, y, probs, 3, n_boot=20)
    assert math.isnan(m["auroc"].value) and "absent" in m["auroc"].note and "[2]" in m["auroc"].note
    assert m["accuracy"].value == 1.0


# ---------------------------------------------------------------- splits


def test_patient_grouped_split_never_shares_a_patient():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"P{i:02d}" for i in range(20)], rng.integers(1, 6, 20))
    per_patient = {p: rng.integers(0, 2) for p in np.unique(patients)}
    labels = np.array([per_patient[p] for p in patients])
    for seed in range(5):
        s = make_split(labels, patients, seed=seed)
        assert not set(patients[s.train]) & set(patients[s.test])
        assert len(s.train) + len(s.test) == len(labels) and s.strategy.startswith("patient-grouped")
        assert set(labels[s.test]) == {0, 1}  # stratified: both classes held out
    # one row per group: a stratified row split
    s = make_split(np.arange(40) % 2, None, test_size=0.25, seed=0)
    assert len(s.test) == 10 and np.bincount(np.arange(40)[s.test] % 2).tolist() == [5, 5]


def test_explicit_split_column_is_honoured():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    explicit = ["train", "train", "Valid", "val", "test", "test", None, "train"]
    s = make_split(labels, None, explicit)
    assert s.train.tolist() == [0, 1, 7] and s.val.tolist() == [2, 3] and s.test.tolist() == [4, 5]
    assert s.strategy == "catalog split column" and "1 labelled rows" in s.notes[0]
    s = make_split(labels, None, ["train"] * 6 + ["val"] * 2)
    assert s.test.tolist() == [6, 7] and len(s.val) == 0 and "val is used as the test set" in s.notes[0]


# ---------------------------------------------------------------- diagnostics


def test_rankme_and_collapse_diagnostics(tiny_vit):
    d = 32
    assert rankme(torch.eye(d)) == pytest.approx(d, rel=1e-3)
    rng = np.random.default_rng(0)
    rank1 = np.outer(rng.normal(size=100), rng.normal(size=d))
    assert rankme(rank1) == pytest.approx(1.0, abs=1e-2)
    assert embedding_std(rng.normal(size=(2000, d))) == pytest.approx(1 / math.sqrt(d), rel=0.1)
    images = torch.randn(16, 1, 32, 32)
    healthy = extract_features(tiny_vit, images, batch_size=8, device="cpu")
    assert healthy.shape == (16, 192) and not is_collapsed(healthy)
    dead = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()
        dead.norm.bias.fill_(0.5)  # every input -> the same non-zero vector
    constant = extract_features(dead, images, device="cpu")
    assert torch.allclose(constant, constant[:1].expand_as(constant))
    assert is_collapsed(constant) and embedding_std(constant) < 1e-6
    x = torch.randn(64, 8)
    assert alignment(x, x * 3) == pytest.approx(0.0, abs=1e-9)  # scale does not matter after l2 normalisation
    assert alignment(x, -x) == pytest.approx(4.0)
    assert uniformity(x[:1].expand(10, -1)) == pytest.approx(0.0, abs=1e-9)
    assert uniformity(x) < -0.5


def test_preprocess_follows_the_card():
    card = EncoderCard(
        timm_name="x", timm_kwargs={}, embed_dim=8, img_size=32, patch_size=8, in_chans=1, mean=[0.5], std=[0.25]
    )
    rgb = np.zeros((2, 32, 32, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: luminance 0.299
    x = preprocess(rgb, card)
    assert x.shape == (2, 1, 32, 32)
    assert x[0, 0, 0, 0].item() == pytest.approx((0.299 - 0.5) / 0.25, rel=1e-4)
    gray = np.full((1, 28, 20), 255, np.uint8)  # resized to 32x32 only because the size differs
    card3 = card.model_copy(update={"in_chans": 3, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]})
    y = preprocess(gray, card3)
    assert y.shape == (1, 3, 32, 32) and torch.allclose(y, torch.ones_like(y), atol=1e-5)


# ---------------------------------------------------------------- feature maps


def test_feature_maps_pngs_and_anchor_similarity(tiny_vit, tmp_path):
    image = torch.randn(1, 1, 32, 32)
    paths = save_feature_maps(tiny_vit, image, tmp_path / "maps", anchor=(1, 2), mean=[0.5], std=[0.5])
    names = sorted(p.name for p in paths)
    heads = tiny_vit.blocks[-1].attn.num_heads
    assert names == sorted(
        ["input.png", "attention-mean.png", "pca.png", "similarity-r1-c2.png"]
        + [f"attention-head{h}.png" for h in range(heads)]
    )
    for p in paths:
        assert p.is_file()
        with Image.open(p) as im:
            assert im.size == (32, 32)
    tokens = patch_tokens(tiny_vit, image)
    assert tokens.shape == (4, 4, 192)
    sim = anchor_similarity(tokens, (1, 2))
    assert np.unravel_index(np.argmax(sim), sim.shape) == (1, 2) and sim[1, 2] == pytest.approx(1.0)
    maps = cls_attention_maps(tiny_vit, image)
    assert maps.shape == (heads, 4, 4) and (maps >= 0).all() and (maps.sum(dim=(1, 2)) <= 1 + 1e-5).all()
    import timm

    no_cls = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        in_chans=1,
        num_classes=0,
        depth=1,
        class_token=False,
        global_pool="avg",
    )
    names = sorted(p.name for p in save_feature_maps(no_cls, image, tmp_path / "no-cls"))
    assert names == ["input.png", "pca.png", "similarity-r2-c2.png"]  # no CLS token: no attention maps


def test_manual_attention_reproduces_the_last_block(tiny_vit):
    """softmax(q k^T * scale) recomputed from norm1 + qkv, applied to v and projected, equals timm's own attention."""
    image = torch.randn(1, 1, 32, 32)
    probs = last_block_attention(tiny_vit, image)
    from pretextlab.evaluate.feature_maps import _tokens_before_last_block

    blk = tiny_vit.blocks[-1]
    with torch.no_grad():
        h = blk.norm1(_tokens_before_last_block(tiny_vit, image))
        b, n, dim = h.shape
        v = blk.attn.qkv(h).reshape(b, n, 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)[2]
        mine = blk.attn.proj((probs.unsqueeze(0) @ v).transpose(1, 2).reshape(b, n, dim))
        theirs = blk.attn(h)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))


# ---------------------------------------------------------------- catalogs as evaluation sets


def test_eval_set_from_npz_catalog(npz_store):
    es = load_eval_set(npz_store)
    assert es.images.shape == (48, 28, 28, 1) and es.images.dtype == np.uint8
    assert es.class_names == ["0", "1"] and set(es.splits) == {"train", "val", "test"}
    assert len(set(es.groups)) == 48  # no patient ids: every image is its own group
    raw = np.load(Path(npz_store).parent / "src" / "stripes.npz")
    for i in (0, 17, 47):
        split, index = es.splits[i], int(es.item_ids[i].rsplit("-", 1)[1])
        np.testing.assert_array_equal(es.images[i, ..., 0], raw[f"{split}_images"][index])
        assert es.labels[i] == raw[f"{split}_labels"][index, 0]
    resized = load_eval_set(npz_store, size=32)
    assert resized.images.shape == (48, 32, 32, 1)


def test_eval_set_from_dicom_cine_catalog(cine_sources, unlabelled_cine_store, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "item_id,label,patient_id\nliver-0,lesion,P1\nliver-1,band,P1\nliver-2,lesion,P2\nliver-3,band,P3\n"
    )
    store = _ingest(cine_sources, tmp_path / "store", labels)
    es = load_eval_set(store)
    assert es.images.shape == (4, 48, 64, 1) and es.class_names == ["band", "lesion"]
    assert es.labels.tolist() == [1, 0, 1, 0] and es.groups.tolist() == ["P1", "P1", "P2", "P3"]
    np.testing.assert_array_equal(es.images[2], open_item(store, "liver-2").frames()[5 // 2])
    every = load_eval_set(store, cine_frame_step=2)
    assert len(every) == 4 * 3 and every.groups.tolist().count("P1") == 6
    with pytest.raises(UserError, match=r"has no labels: attach them with `pretextlab catalog"):
        load_eval_set(unlabelled_cine_store)
    one = tmp_path / "one.csv"
    one.write_text("item_id,label\nliver-0,lesion\nliver-1,lesion\n")
    rebuild_catalog(store, str(one))
    with pytest.raises(UserError, match="only one class"):
        load_eval_set(store)


def test_eval_set_from_slide_catalog_samples_tissue(tmp_path):
    for i in range(2):
        synthetic.write_slide_tiff(tmp_path / "src" / f"slide-{i}.tif", 512, 512, tile=256, levels=2, seed=i)
    labels = tmp_path / "labels.csv"
    labels.write_text("item_id,label,patient_id\nslide-0,normal,P0\nslide-1,tumour,P1\n")
    store = _ingest(tmp_path / "src", tmp_path / "store", labels)
    es = load_eval_set(store, patches_per_slide=5, patch_size=32, seed=0)
    assert es.images.shape == (10, 32, 32, 3)
    assert es.labels.tolist() == [0] * 5 + [1] * 5 and es.groups.tolist() == ["P0"] * 5 + ["P1"] * 5
    assert load_eval_set(store, patches_per_slide=5, patch_size=32, seed=0).images.tobytes() == es.images.tobytes()
    glass = np.array([242, 240, 245])
    tissue_px = [(np.abs(img.astype(int) - glass).sum(axis=2) > 30).mean() for img in es.images]
    assert np.mean(tissue_px) > 0.8  # tissue covers ~4 % of these slides: random patches would be ~0.04


def test_no_ray_in_the_evaluate_package():
    for path in (REPO / "platform" / "pretextlab" / "evaluate").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "ray" for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "ray", path


# ---------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def broken_encoders(encoder_dir, tmp_path_factory) -> dict[str, Path]:
    """A text file, garbage weights, another model's weights, and the same with the card's sha updated."""
    root = tmp_path_factory.mktemp("broken")
    text = root / "notes.txt"
    text.write_text("not an encoder\n")
    garbage = root / "garbage"
    shutil.copytree(encoder_dir, garbage)
    (garbage / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    other = _save_tiny(root / "other-model", BackboneConfig(img_size=32, patch_size=8, in_chans=3), seed=1)
    swapped = root / "swapped"  # another model's weights behind the card: the sha catches it
    shutil.copytree(encoder_dir, swapped)
    shutil.copy(other / "model.safetensors", swapped / "model.safetensors")
    resealed = root / "resealed"  # ... and with the card's sha updated too: the tensor shapes catch it
    shutil.copytree(swapped, resealed)
    card = json.loads((resealed / "card.json").read_text())
    card["weights_sha256"] = json.loads((other / "card.json").read_text())["weights_sha256"]
    (resealed / "card.json").write_text(json.dumps(card))
    return {"text_file": text, "garbage": garbage, "swapped": swapped, "resealed": resealed}


@pytest.fixture(scope="module")
def cli_runs(encoder_dir, npz_store, broken_encoders, tmp_path_factory):
    """The real `pretextlab` entry point, a good and a bad run started together (each pays ~6 s of imports)."""
    maps = tmp_path_factory.mktemp("cli") / "maps"
    runs = {
        "ok": (
            "evaluate",
            str(encoder_dir),
            npz_store,
            "--shots",
            "1,2",
            "--repeats",
            "2",
            "--k",
            "5",
            "--set",
            "n_bootstrap=200",
            "--feature-maps",
            str(maps),
        ),
        "text_file": ("evaluate", str(broken_encoders["text_file"]), npz_store),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {
            name: pool.submit(run_cli, *args, env={"OMP_NUM_THREADS": "1"}, timeout=240) for name, args in runs.items()
        }
        results = {name: f.result() for name, f in futures.items()}
    return results, maps


def test_cli_prints_table_and_writes_json(cli_runs, encoder_dir, npz_store):
    results, maps = cli_runs
    out = results["ok"]
    assert out.returncode == 0, out.stderr[-3000:]
    assert "kNN (k=5)" in out.stdout and "linear (C=" in out.stdout and "2-shot linear (x2)" in out.stdout
    result_file = encoder_dir / f"eval-{Path(npz_store).name}.json"
    assert f"result: {result_file}" in out.stdout
    res = json.loads(result_file.read_text())
    acc = res["knn"]["metrics"]["accuracy"]
    assert 0.0 <= acc["low"] <= acc["value"] <= acc["high"] <= 1.0
    assert f"{acc['value']:.3f}" in out.stdout.split("kNN (k=5)")[1].splitlines()[0]
    assert res["split"] == {
        "strategy": "catalog split column",
        "n_train": 16,
        "n_val": 16,
        "n_test": 16,
        "n_groups": 48,
    }
    assert res["encoder"]["name"] == "tiny" and res["encoder"]["objective"] == "random-init"
    assert res["encoder"]["global_pool"] == "token"  # the embedding evaluated (the card's default readout)
    assert res["config"]["shots"] == [1, 2] and res["config"]["n_bootstrap"] == 200
    assert res["diagnostics"]["collapsed"] is False and res["diagnostics"]["dim"] == 192
    assert (maps / "pca.png").is_file() and len(res["feature_maps"]) == 4 + 3  # input, pca, similarity, mean + 3 heads


def test_cli_error_is_one_line_exit_2_without_traceback(cli_runs):
    out = cli_runs[0]["text_file"]
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "Traceback" not in out.stderr
    assert out.stderr.startswith("pretextlab: error: ") and "expected an encoder folder" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    "case, message",
    [
        ("garbage", "sha256 does not match its card"),
        ("swapped", "sha256 does not match its card"),
        ("resealed", "weights do not match their card"),
        ("no_labels", "has no labels: attach them with `pretextlab catalog"),
    ],
)
def test_cli_errors_exit_2_with_one_line(
    case, message, broken_encoders, encoder_dir, npz_store, unlabelled_cine_store, capsys
):
    """Same dispatcher as the entry point, in this process (the subprocess case above covers the wrapper)."""
    from pretextlab.cli import main

    encoder = encoder_dir if case == "no_labels" else broken_encoders[case]
    store = unlabelled_cine_store if case == "no_labels" else npz_store
    assert main(["evaluate", str(encoder), store, "--out", str(encoder_dir.parent / "never.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pretextlab: error: ") and message in err, err
    assert not (encoder_dir.parent / "never.json").exists()


def test_cli_evaluates_a_registry_address_without_touching_the_version(
    encoder_dir, npz_store, tmp_path, monkeypatch, capsys
):
    """`--registry ROOT chosen:<modality>` evaluates the chosen encoder; the result goes under ./evals/,
    never into the registered version; a wrong address is one line naming what the registry holds."""
    from pretextlab.cli import main
    from pretextlab.models.encoder_io import load_encoder
    from pretextlab.registry import EncoderRegistry

    reg = EncoderRegistry(str(tmp_path / "registry"))
    model, card = load_encoder(encoder_dir)
    ref = reg.register(model, card, "tiny-reg")
    reg.choose(ref, "histopathology")
    before = sorted(p.name for p in Path(ref.uri).iterdir())
    monkeypatch.chdir(tmp_path)
    args = ["--registry", str(tmp_path / "registry"), "--shots", "1", "--repeats", "1", "--set", "n_bootstrap=20"]
    assert main(["evaluate", "chosen:histopathology", npz_store, *args]) == 0
    out = tmp_path / "evals" / "tiny-reg" / ref.version / f"eval-{Path(npz_store).name}.json"
    res = json.loads(out.read_text())
    assert res["encoder_ref"]["id"] == ref.id and res["encoder"]["weights_sha256"] == card.weights_sha256
    assert sorted(p.name for p in Path(ref.uri).iterdir()) == before
    capsys.readouterr()
    assert main(["evaluate", "nope:latest", npz_store, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "tiny-reg" in err, err
