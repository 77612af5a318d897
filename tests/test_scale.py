"""A large collection, bounded for ``make test`` (issue 13, item 7): 6,000 small images ingest, the
catalog answers with a summary and a bounded table, an epoch streams every row once in a few read
tasks, evaluation never holds the set's pixels, and embedding writes every row.

The full figure (100,000 images: time and peak memory of each stage against a 10x smaller set) is
``benchmarks/scale.py``; timings stay there.
"""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from pretextlab.storage import open_item, read_catalog

N = 6000
SIDE = 16


@pytest.fixture(scope="module")
def big_store(ray_session, tmp_path_factory) -> str:
    """N grey SIDE px PNGs in two class folders, ingested as a collection (labels from the folders)."""
    from pretextlab.jobs.ingest import IngestConfig, run_ingest

    root = tmp_path_factory.mktemp("scale")
    rng = np.random.default_rng(0)
    xx = np.mgrid[0:SIDE, 0:SIDE][1]
    for c in "ab":
        (root / "src" / c).mkdir(parents=True)
    for i in range(N):
        base = np.sin(xx * (0.3 + 0.3 * (i % 2))) * 40 + 128
        img = np.clip(base + rng.normal(0, 25, (SIDE, SIDE)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "src" / "ab"[i % 2] / f"{i:05d}.png", compress_level=0)
    rep = run_ingest(
        IngestConfig(sources=[str(root / "src")], dest=str(root / "store"), labels_from_folders=True), progress=False
    )
    assert rep.ok and rep.images == N, rep.render()
    return str(root / "store")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A random-init one-block ViT-Tiny for 96 px grey input (evaluation resizes the 16 px tiles)."""
    from pretextlab.models.encoder_io import EncoderCard, save_encoder
    from pretextlab.models.vit import BackboneConfig, create_backbone

    cfg = BackboneConfig(arch="vit_tiny", img_size=96, patch_size=16, in_chans=1, depth=1)
    torch.manual_seed(0)
    model = create_backbone(cfg)
    card = EncoderCard(
        name="scale",
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=96,
        patch_size=16,
        in_chans=1,
        objective="random-init",
    )
    return Path(save_encoder(model, card, tmp_path_factory.mktemp("enc") / "scale"))


def test_catalog_answers_with_a_summary_and_a_bounded_table(big_store):
    """The table shows the summary and 50 rows and says how many more; csv writes every row; a reader
    that stops early (``| head``) ends the command quietly, with no traceback."""
    res = run_cli("catalog", big_store)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"{N:,} items ({N:,} image); {N:,} labelled (a {N // 2:,}, b {N // 2:,})"
    assert len(lines) == 1 + 1 + 50 + 1  # summary, header, 50 rows, the "more" line
    assert lines[-1].startswith(f"... {N - 50:,} more rows")
    csv = run_cli("catalog", big_store, "--format", "csv")
    assert len(csv.stdout.splitlines()) == N + 1
    bad = run_cli("catalog", big_store, "--limit", "-1")
    assert bad.returncode == 2 and "--limit -1" in bad.stderr and "Traceback" not in bad.stderr

    import subprocess
    import sys

    exe = Path(sys.executable).with_name("pretextlab")
    head = subprocess.run(
        f"'{exe}' catalog '{big_store}' --limit 0 | head -2", shell=True, capture_output=True, text=True, timeout=120
    )
    assert len(head.stdout.splitlines()) == 2 and "Traceback" not in head.stderr and "BrokenPipe" not in head.stderr


def test_an_epoch_streams_every_row_once_in_a_few_read_tasks(big_store):
    """Small images are grouped into read tasks of ~4 MiB (MIN_GROUP_BYTES), not 64-row ones: the per-task
    cost made an epoch of 100,000 32 px images take 138 s as 1,563 tasks. Every row comes exactly once."""
    from pretextlab.storage.datasource import read_stream
    from pretextlab.storage.stream import MIN_GROUP_BYTES, StreamSpec, plan_stream

    plan = plan_stream(StreamSpec(sources=[big_store], kind="frames"))
    groups = plan.epoch_groups(0)
    assert plan.samples_per_epoch == N and len(groups) <= math.ceil(N * plan.sample_bytes / MIN_GROUP_BYTES) + 1
    seen: list[str] = []
    labels = {}
    for batch in read_stream(plan, [0]).iter_batches(batch_size=1000, batch_format="numpy"):
        seen += batch["item_id"].tolist()
        labels.update(zip(batch["item_id"].tolist(), batch["label"].tolist(), strict=True))
    cat = read_catalog(big_store).set_index("item_id")
    assert len(seen) == len(set(seen)) == N and set(seen) == set(cat.index)
    assert all(labels[i] == cat.loc[i, "label"] for i in seen[:: N // 50])


def test_evaluation_reads_batches_and_never_holds_the_set(big_store, encoder):
    """The eval set's images are read per batch: NumPy's traced peak while loading and embedding all N
    images at the encoder's 96 px stays far below the N x 96 x 96 bytes an eager set would hold
    (53 MiB), and the features equal the encoder's on the stored pixels read directly."""
    from pretextlab.evaluate.dataset import load_eval_set, resize_uint8
    from pretextlab.evaluate.features import embed_images, extract_features
    from pretextlab.evaluate.images import EvalImages
    from pretextlab.models.encoder_io import load_encoder, preprocess

    model, card = load_encoder(encoder)
    tracemalloc.start()
    try:
        data = load_eval_set(big_store, size=card.img_size)
        feats = embed_images(model, card, data.images, batch_size=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    eager = N * 96 * 96
    assert isinstance(data.images, EvalImages) and data.images.shape == (N, 96, 96, 1)
    print(f"traced peak {peak / 2**20:.1f} MiB")
    assert peak < eager / 4, f"traced peak {peak / 2**20:.1f} MiB vs {eager / 2**20:.0f} MiB for the whole set"
    assert feats.shape == (N, card.embed_dim)
    cat = read_catalog(big_store).set_index("item_id")
    rows = np.random.default_rng(1).choice(N, 12, replace=False)
    for i in rows:
        row = cat.loc[data.item_ids[i]]
        stored = np.asarray(open_item(big_store, row["group"]).group["all"]["images"][int(row["index"])])
        img = resize_uint8(stored.transpose(1, 2, 0), 96)
        np.testing.assert_array_equal(data.images[int(i)], img)
        ref = extract_features(model, preprocess(img[None], card))
        torch.testing.assert_close(feats[int(i)], ref[0], atol=1e-4, rtol=1e-4)


def test_embedding_writes_every_row_of_every_shard(big_store, encoder, tmp_path):
    """``embed`` writes one bag per shard holding each of its images once (N rows in all)."""
    from pretextlab.jobs.embed_batch import EmbedConfig, run_embed
    from pretextlab.storage.bags import read_h5

    rep = run_embed(EmbedConfig(encoder=str(encoder), catalog=big_store, dest=str(tmp_path / "bags")), progress=False)
    shards = sorted(read_catalog(big_store)["group"].unique())
    assert sorted(rep.embedded) == [f"{s}-all" for s in shards] and rep.frames == N
    total = 0
    for bag in rep.embedded:
        feats, coords, _ = read_h5(tmp_path / "bags" / "h5_files" / f"{bag}.h5")
        assert len(np.unique(coords[:, 0])) == len(coords) == len(feats)
        total += len(feats)
    assert total == N


def test_knn_chunks_bound_the_similarity_matrix_without_changing_answers():
    """kNN's chunk is capped by max_chunk_values (similarities per chunk): the answers are identical."""
    from pretextlab.evaluate.knn import knn_predict

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(500, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
    y = rng.integers(0, 3, 500)
    p1, q1 = knn_predict(train, y, test, k=7)
    p2, q2 = knn_predict(train, y, test, k=7, max_chunk_values=1700)  # 3 test rows per chunk
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(q1, q2, atol=1e-5)  # the same sums, reduced in other matmul shapes
