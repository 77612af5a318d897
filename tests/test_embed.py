"""`pretextlab embed`: every tissue patch of every slide and every frame of every cine loop, embedded on a Ray
Data actor pool into Zarr + TRIDENT/CLAM HDF5 bags equal to in-process embeddings; a killed run resumes
without embedding any item twice or missing one; bad input is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import REPO, kill_session
from pretextlab.evaluate.features import embed_images
from pretextlab.jobs.embed_batch import EmbedConfig, run_embed
from pretextlab.models import BackboneConfig, EncoderCard, create_backbone, save_encoder
from pretextlab.storage import open_item, read_catalog
from pretextlab.storage.bags import read_h5
from pretextlab.storage.patches import PatchSpec, item_patches

PATCH = 64
MIN_TISSUE = 0.2


@pytest.fixture(scope="module")
def world(ray_session, tmp_path_factory):
    from pretextlab.jobs.ingest import IngestConfig, run_ingest
    from pretextlab.registry import EncoderRegistry
    from pretextlab.storage import synthetic as syn

    base = tmp_path_factory.mktemp("embed")
    raw = base / "raw"
    for i in range(2):
        syn.write_slide_tiff(raw / f"slide-{i}.tif", 384, 512, tile=256, levels=1, seed=10 + i)
    for i in range(3):
        syn.write_us_dicom(raw / f"loop-{i}.dcm", frames=5 + i, rows=40 + 8 * i, cols=56, seed=20 + i)
    rep = run_ingest(IngestConfig(sources=[str(raw)], dest=str(base / "store"), zarr={"chunk": 128}), progress=False)
    assert rep.ok, rep.render()
    torch.manual_seed(5)
    cfg = BackboneConfig(arch="vit_tiny", img_size=32, patch_size=8, in_chans=3, depth=1)
    model = create_backbone(cfg).eval()
    card = EncoderCard(
        name="bags",
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=32,
        patch_size=8,
        in_chans=3,
        mean=[0.6, 0.5, 0.6],
        std=[0.2, 0.2, 0.2],
        modality="histopathology",
    )
    folder = save_encoder(model, card, base / "encoder")
    reg = EncoderRegistry(str(base / "registry"))
    ref = reg.register(model, card)
    reg.choose(ref, "histopathology")
    return {
        "base": base,
        "store": str(base / "store"),
        "encoder": folder,
        "model": model,
        "card": card,
        "registry": str(base / "registry"),
        "ref": ref,
        "address": ray_session.get_runtime_context().gcs_address,
    }


def _expected_counts(store: str) -> dict[str, int]:
    cat = read_catalog(store)
    spec = PatchSpec(patch_size=PATCH, min_tissue=MIN_TISSUE)
    out = {}
    for row in cat.itertuples(index=False):
        item = open_item(store, row.item_id)
        out[row.item_id] = len(item_patches(item, spec)) if item.kind == "slide" else int(item.level(0).shape[0])
    return out


def _cmd(world, dest: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pretextlab.jobs.embed",
        "chosen:histopathology",
        world["store"],
        "--to",
        str(dest),
        "--registry",
        world["registry"],
        "--patch-size",
        str(PATCH),
        "--min-tissue",
        str(MIN_TISSUE),
        "--address",
        world["address"],
        *extra,
    ]


def _markers(dest: Path) -> dict[str, dict]:
    folder = dest / "done"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


@pytest.mark.slow
def test_killed_run_resumes_without_repeats_or_gaps_and_bags_match(world, tmp_path):
    dest = tmp_path / "bags"
    expected = _expected_counts(world["store"])
    assert len(expected) == 5 and all(n > 0 for n in expected.values())
    # one actor, small batches: items finish one after another, so the kill lands mid-run
    log = open(tmp_path / "run1.log", "wb")
    proc = subprocess.Popen(
        _cmd(world, dest, "--batch-size", "4", "--concurrency", "1", "--no-progress"),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not _markers(dest) and proc.poll() is None:
        time.sleep(0.02)
    kill_session(proc.pid)  # the driver, its local Ray cluster and every worker (own process groups) die
    proc.wait(30)
    log.close()
    first = _markers(dest)
    assert 1 <= len(first) < len(expected), (
        f"kill landed outside the run: {len(first)} items done\n" + (tmp_path / "run1.log").read_text()[-3000:]
    )
    mtimes = {i: (dest / "h5_files" / f"{i}.h5").stat().st_mtime_ns for i in first}

    out = subprocess.run(_cmd(world, dest, "--batch-size", "16"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(expected) - len(first)} items embedded" in out.stdout, out.stdout
    summary = json.loads((dest / "embed.json").read_text())
    # none embedded twice: the first run's items were skipped and their files untouched
    assert sorted(summary["skipped_items"]) == sorted(first)
    assert sorted(summary["embedded_items"]) == sorted(set(expected) - set(first))
    assert {i: (dest / "h5_files" / f"{i}.h5").stat().st_mtime_ns for i in first} == mtimes
    final = _markers(dest)
    assert {i: m["run_id"] for i, m in final.items() if i in first} == {i: m["run_id"] for i, m in first.items()}
    # none missed: every item complete, with exactly its planned rows, each once
    assert {i: m["count"] for i, m in final.items()} == expected
    for item_id, n in expected.items():
        feats, coords, _ = read_h5(dest / "h5_files" / f"{item_id}.h5")
        assert feats.shape == (n, 192) and coords.shape == (n, 2)
        assert len({tuple(c) for c in coords}) == n

    # the bags hold what evaluation computes in process, in the TRIDENT/CLAM layout
    model, card = world["model"], world["card"]
    slide = open_item(world["store"], "slide-1")
    feats, coords, attrs = read_h5(dest / "h5_files" / "slide-1.h5")
    assert attrs["patch_size"] == PATCH and attrs["level"] == 0 and attrs["encoder"] == world["ref"].id
    refs = item_patches(slide, PatchSpec(patch_size=PATCH, min_tissue=MIN_TISSUE))
    assert sorted((r.x, r.y) for r in refs) == sorted(map(tuple, coords.tolist()))
    patches = np.stack([slide.read_region(0, x, y, PATCH, PATCH) for x, y in coords])
    assert np.abs(feats - embed_images(model, card, patches, device="cpu").numpy()).max() <= 1e-5
    loop = open_item(world["store"], "loop-1")
    feats, coords, attrs = read_h5(dest / "h5_files" / "loop-1.h5")
    assert attrs["kind"] == "cine" and coords[:, 0].tolist() == list(range(expected["loop-1"]))
    assert np.abs(feats - embed_images(model, card, loop.frames(), device="cpu").numpy()).max() <= 1e-5
    group = zarr.open_group(str(dest / "zarr" / "loop-1.zarr"), mode="r")
    np.testing.assert_array_equal(group["features"][:], feats)
    np.testing.assert_array_equal(group["frames"][:], coords[:, 0])

    # a third run has nothing left to do (and needs no Ray pipeline for that)
    cfg = EmbedConfig(
        encoder="chosen:histopathology",
        registry=world["registry"],
        catalog=world["store"],
        dest=str(dest),
        patch_size=PATCH,
        min_tissue=MIN_TISSUE,
    )
    report = run_embed(cfg, progress=False)
    assert report.embedded == [] and sorted(report.skipped_complete) == sorted(expected)


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/encoder", "{store}", "--to", "{dest}"], "no such encoder folder"),
        (["{encoder}", "{store}"], "--to DEST is required"),
        (["{encoder}", "/no/such/store", "--to", "{dest}"], "no catalog here"),
        (["{encoder}", "{store}", "--to", "{dest}", "--items", "ghost"], "items: not slide, cine or image-stack items"),
        (["{encoder}", "{store}", "--to", "{dest}", "--batch-size", "0"], "batch_size"),
        (["nope", "{store}", "--to", "{dest}", "--registry", "{registry}"], "no encoder named 'nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2(world, tmp_path, capsys, args, message):
    from pretextlab.cli import main

    subst = {
        "store": world["store"],
        "dest": str(tmp_path / "o"),
        "encoder": str(world["encoder"]),
        "registry": world["registry"],
    }
    assert main(["embed", *[a.format(**subst) for a in args]]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_dest_of_another_encoder_is_refused(world, tmp_path, capsys):
    from pretextlab.cli import main

    dest = tmp_path / "o"
    (dest / "done").mkdir(parents=True)
    (dest / "done" / "slide-0.json").write_text(json.dumps({"item_id": "slide-0", "encoder": "other@123", "spec": {}}))
    assert main(["embed", str(world["encoder"]), world["store"], "--to", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "holds features of another run" in err and len(err.strip().splitlines()) == 1


def test_collection_rows_are_embedded_one_bag_per_shard_equal_to_the_encoder_on_their_pixels(world, tmp_path):
    """Image stacks (here a collection of PNG stills) embed as one bag per shard, a row per image,
    each equal to the encoder's features of that row's pixels read back from the store."""
    from PIL import Image

    from pretextlab.evaluate.features import extract_features
    from pretextlab.jobs.ingest import IngestConfig, run_ingest
    from pretextlab.models.encoder_io import preprocess

    rng = np.random.default_rng(7)
    src = tmp_path / "stills" / "c"
    src.mkdir(parents=True)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(src / f"s{i}.png")
    store = tmp_path / "store"
    rep = run_ingest(IngestConfig(sources=[str(tmp_path / "stills")], dest=str(store), shard_size=4), progress=False)
    assert rep.ok and rep.shards == 2, rep.render()
    dest = tmp_path / "bags"
    report = run_embed(EmbedConfig(encoder=str(world["encoder"]), catalog=str(store), dest=str(dest)), progress=False)
    assert sorted(report.embedded) == ["stills-20x24x3-0000-all", "stills-20x24x3-0001-all"]
    cat = read_catalog(str(store)).set_index("item_id")
    model, card = world["model"], world["card"]
    seen = []
    for bag_id in report.embedded:
        feats, coords, attrs = read_h5(dest / "h5_files" / f"{bag_id}.h5")
        assert attrs["kind"] == "image" and attrs["split"] == "all"
        for k, index in enumerate(coords[:, 0]):
            row_id = f"{bag_id}-{index:06d}"
            row = cat.loc[row_id]
            img = np.asarray(open_item(str(store), row["group"]).group["all"]["images"][int(index)])
            ref = extract_features(model, preprocess(img.transpose(1, 2, 0)[None], card))
            np.testing.assert_allclose(feats[k], ref[0].numpy(), rtol=1e-4, atol=1e-4)
            seen.append(row["source"])
    assert sorted(seen) == sorted(str(p) for p in src.glob("*.png"))  # every image once
