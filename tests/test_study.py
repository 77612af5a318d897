"""`pretextlab study`: datasets x arms x seeds on Ray Tune, each cell pretrained on Ray Train, registered,
evaluated frozen; a report with paired statistics. Budgets are tiny (2 steps, a 1-block ViT at 32 px):
the tests check the machinery and the evidence trail, never which objective wins."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, closed_ray, kill_session, run_cli
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage import synthetic as syn

BACKBONE = {"arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1}
SHARED = {
    "data": {"clip": {"size": 32}},
    "train": {
        "batch_size": 4,
        "num_workers": 1,  # one Train worker per cell: multi-worker DDP is tested in test_pretrain.py
        "cpus_per_worker": 0.5,
        "data_cpus": 0.25,
        "log_every": 1,
        "checkpoint_every": 2,
    },
}
EVALUATE = {"n_bootstrap": 50, "shots": [1], "fewshot_repeats": 1, "alignment_images": 0}
ARMS = [
    {
        "name": "dino",
        "objective": "dino",
        "overrides": {"objective": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}, "views": {"n_local": 2}},
    },
    {"name": "ijepa", "objective": "ijepa"},
    {
        "name": "mae",
        "objective": "mae",
        "overrides": {"objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}},
    },
]


def _us_store(raw: Path, dest: Path, n: int, seed: int, unlabelled: int = 0) -> Path:
    """``n`` labelled cine loops (two classes, one patient each) plus ``unlabelled`` ones, ingested."""
    rows = ["item_id,label,patient_id"]
    for i in range(n + unlabelled):
        syn.write_us_dicom(raw / f"us{i}.dcm", frames=6, rows=48, cols=64, seed=seed + i, label=i % 2)
        if i < n:
            rows.append(f"us{i},{'lesion' if i % 2 == 0 else 'band'},P{seed}-{i}")
    (raw.parent / f"{raw.name}.csv").write_text("\n".join(rows) + "\n")
    rep = run_ingest(
        IngestConfig(sources=[str(raw)], dest=str(dest), labels=str(raw.parent / f"{raw.name}.csv")), progress=False
    )
    assert rep.ok, rep.render()
    return dest


@pytest.fixture(scope="module")
def stores(ray_session, tmp_path_factory):
    base = tmp_path_factory.mktemp("study-data")
    return {
        "a": _us_store(base / "raw-a", base / "store-a", 8, 0),
        "b": _us_store(base / "raw-b", base / "store-b", 8, 100),
    }


def study_yaml(
    tmp: Path,
    datasets: list[dict],
    name: str = "s1",
    arms: list[dict] | None = None,
    storage: str | None = None,
    registry: str | None = None,
) -> Path:
    cfg = {
        "name": name,
        "datasets": datasets,
        "arms": arms if arms is not None else ARMS,
        "seeds": [0],
        "steps": 2,
        "backbone": BACKBONE,
        "pretrain": SHARED,
        "evaluate": EVALUATE,
        "storage": storage or str(tmp / "studies"),
        "registry": registry or str(tmp / "registry"),
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _records(study_dir: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in (study_dir / "cells").glob("*.json")}


@pytest.fixture(scope="module")
def killed_and_resumed(stores, tmp_path_factory):
    """The 2-dataset x 3-arm x 1-seed study through the CLI, killed after its first cells finished, then
    run again to the end."""
    tmp = tmp_path_factory.mktemp("study")
    path = study_yaml(
        tmp,
        [
            {"name": "liver-a", "store": str(stores["a"]), "modality": "ultrasound"},
            {"name": "liver-b", "store": str(stores["b"]), "modality": "ultrasound", "test_store": str(stores["a"])},
        ],
    )
    study_dir = tmp / "studies" / "s1"
    cmd = [str(Path(sys.executable).with_name("pretextlab")), "study", str(path), "--num-cpus", "4"]
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    log = open(tmp / "first.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = (
            [
                k
                for k, v in _records(study_dir).items()
                if json.loads(v)["status"] == "complete" and json.loads(v)["arm"] != "random-init"
            ]
            if (study_dir / "cells").is_dir()
            else []
        )
        if done:
            break
        time.sleep(0.5)
    kill_session(proc.pid)  # the driver, its local Ray cluster and every worker (own process groups) die
    proc.wait(60)
    log.close()
    first = _records(study_dir)
    assert any(json.loads(v)["arm"] != "random-init" for v in first.values()), (tmp / "first.log").read_text()[-3000:]
    # a cell the kill caught mid-run may have recorded "failed" (its Ray workers died under it): the
    # resumed run re-runs it, so only the cells the first run completed must keep their checkpoints
    ckpts = {
        k: sorted(p.name for p in (study_dir / "runs" / k).glob("checkpoint-*"))
        for k, v in first.items()
        if json.loads(v)["arm"] != "random-init" and json.loads(v)["status"] == "complete"
    }
    again = run_cli("study", str(path), "--num-cpus", "4", "--choose", env=env, timeout=900)
    return {"tmp": tmp, "dir": study_dir, "first": first, "ckpts": ckpts, "again": again, "path": path}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the module fixture runs the whole study twice (killed, then resumed)
def test_study_end_to_end_report_and_resume(killed_and_resumed):
    r = killed_and_resumed
    again, study_dir = r["again"], r["dir"]
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(resuming)" in again.stdout and f"report: {study_dir / 'report.html'}" in again.stdout
    # every cell: 2 datasets x (3 arms + random init), each complete with an evaluation
    records = {k: json.loads(v) for k, v in _records(study_dir).items()}
    want = {f"{d}.{a}.s0" for d in ("liver-a", "liver-b") for a in ("random-init", "dino", "ijepa", "mae")}
    assert set(records) == want and all(v["status"] == "complete" for v in records.values())
    # finished cells were not re-run: their records and their run folders are as the first run left them
    for k, v in r["first"].items():
        if json.loads(v)["status"] == "complete":
            assert (study_dir / "cells" / f"{k}.json").read_bytes() == v
    for k, names in r["ckpts"].items():
        assert sorted(p.name for p in (study_dir / "runs" / k).glob("checkpoint-*")) == names
    # results.parquet round-trips and agrees with the records
    table = pd.read_parquet(study_dir / "results.parquet")
    # random init is also read as DINO reads its embedding (the CLS token): a row of its own
    assert set(table["cell"]) == want | {f"{d}.random-init.s0+token" for d in ("liver-a", "liver-b")}
    assert (table["status"] == "complete").all()
    base = records["liver-a.random-init.s0"]
    assert base["evaluation"]["encoder"]["global_pool"] == "avg" and list(base["readouts"]) == ["token"]
    assert base["readouts"]["token"]["evaluation"]["encoder"]["global_pool"] == "token"
    assert base["readouts"]["token"]["encoder"] != base["encoder"]
    rec = records["liver-a.ijepa.s0"]
    row = table.set_index("cell").loc["liver-a.ijepa.s0"]
    assert row["linear_bal_acc"] == pytest.approx(rec["evaluation"]["linear"]["metrics"]["balanced_accuracy"]["value"])
    assert row["steps"] == 2  # the workers' last reported step
    results = json.loads((study_dir / "results.json").read_text())
    assert set(results["verdicts"]) == {"liver-a", "liver-b"}
    for v in results["verdicts"].values():
        assert v["sentence"].startswith(v["dataset"] + ":")
        assert len(v["comparisons"]["0"]) == 10  # every pair of the 3 arms and random init read 2 ways, Holm together
        assert v["readout_note"] == ""  # every arm has random init read its way
    # every arm is a registered encoder, and the report names every cell and the reproduce command
    md = (study_dir / "report.md").read_text()
    for cell in want:
        assert records[cell]["encoder"].split(":")[0] == cell
        assert cell.split(".")[1] in md
    assert f"pretextlab study {r['path']}" in md
    for v in results["verdicts"].values():  # each paired comparison once, as its one-line sentence
        for c in v["comparisons"]["0"]:
            assert f"- {c['sentence']}\n" in md
    html = (study_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "http://" not in html and "https://" not in html
    # external transfer: liver-b's probes were fitted on store b and scored on store a
    ev = records["liver-b.ijepa.s0"]["evaluation"]
    assert ev["dataset"]["test_dest"] and ev["split"]["strategy"] == "catalog split column"
    assert ev["split"]["n_test"] == 8 and ev["split"]["n_train"] + ev["split"]["n_val"] == 8
    # --choose marks a winner only when the verdict has one
    chosen = Path(r["tmp"] / "registry" / "chosen" / "ultrasound.json")
    winners = {v["winner"] for v in results["verdicts"].values()}
    assert chosen.is_file() == (len(winners) == 1 and None not in winners and "random-init" not in winners)


def test_bad_studies_fail_before_ray_and_leave_nothing(stores, tmp_path):
    import shutil

    from pretextlab.storage.catalog import rebuild_catalog

    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(stores["a"], unlabelled)
    (unlabelled / "labels.parquet").unlink()
    rebuild_catalog(str(unlabelled))
    other = tmp_path / "other-labels"  # the same images labelled with classes store a does not have
    shutil.copytree(stores["a"], other)
    (tmp_path / "other.csv").write_text("item_id,label\n" + "".join(f"us{i},class{i % 2}\n" for i in range(8)))
    rebuild_catalog(str(other), str(tmp_path / "other.csv"))
    masked = tmp_path / "masked"  # an ROI column that points at mask items the store does not hold
    shutil.copytree(stores["a"], masked)
    rows = "".join(f"us{i},{'lesion' if i % 2 == 0 else 'band'},us{i}-mask\n" for i in range(8))
    (tmp_path / "roi.csv").write_text("item_id,label,roi\n" + rows)
    rebuild_catalog(str(masked), str(tmp_path / "roi.csv"))
    liver = {"name": "liver-a", "store": str(stores["a"]), "modality": "ultrasound"}
    cases = [
        ({"arms": [{"objective": "byol9"}]}, "unknown objective 'byol9'"),
        ({"datasets": [{"name": "u", "store": str(unlabelled), "modality": "ultrasound"}]}, "no 'label' labels"),
        ({"datasets": [{**liver, "modality": "mri"}]}, "unknown modality 'mri'"),
        ({"datasets": [{**liver, "test_store": str(other)}]}, "share no label"),
        ({"steps": 0}, "steps"),
        ({"datasets": [{**liver, "store": str(masked)}]}, "names 8 mask item(s) the catalog does not hold"),
    ]
    for change, message in cases:
        cfg = {**yaml.safe_load(study_yaml(tmp_path, [liver], name="bad").read_text()), **change}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(cfg))
        res = run_cli("study", str(path), timeout=120, env=closed_ray())
        assert res.returncode == 2, (change, res.stdout, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / "studies").exists()  # no partial study a re-run would take for progress


@pytest.mark.slow
def test_a_changed_study_under_the_same_name_is_refused(killed_and_resumed):
    r = killed_and_resumed
    res = run_cli("study", str(r["path"]), "steps=3", timeout=120, env=closed_ray())
    assert res.returncode == 2 and "a different study ran under the name 's1'" in res.stderr


def test_shipped_study_and_default_arms_validate_for_every_modality():
    """configs/study/*.yaml plan and build; the default arms (one per family) build on every registered
    modality's data kind, so a study runs on any modality without hand-written configs."""
    from pretextlab.modalities import list_modalities
    from pretextlab.study import load_study, plan_cells
    from pretextlab.training.config import PretrainConfig
    from pretextlab.training.setup import check

    for path in sorted((REPO / "configs" / "study").glob("*.yaml")):
        study = load_study(path)
        cells = plan_cells(study, "runs")
        assert {c.arm for c in cells} == {"random-init", *(a.label for a in study.arms)}, path
        for c in cells:
            check(PretrainConfig.model_validate(c.pretrain))
    for modality in list_modalities():
        study = load_study(None, ["name=m", "steps=1", f"datasets=[{{name: d, store: s, modality: {modality}}}]"])
        cells = plan_cells(study, "runs")
        assert {c.arm for c in cells} == {"random-init", "dino", "ijepa", "mae"}  # one arm per family
        for c in cells:
            objective, _views = check(PretrainConfig.model_validate(c.pretrain))
            assert objective.cfg.backbone.in_chans == (3 if modality == "histopathology" else 1)


@pytest.mark.slow
def test_pilot_rows_give_each_arm_its_score_and_ci(killed_and_resumed):
    """recommend --pilot's evidence beyond its verdict: every finished cell of a dataset (random init
    under each readout included) with the study's metric and its CI (the card's pilot table:
    tests/test_recommend.py)."""
    from pretextlab.jobs.recommend import pilot_arms

    records = [json.loads(v) for v in _records(killed_and_resumed["dir"]).values()]
    mine = [r for r in records if r["dataset"] == "liver-a"]
    rows = pilot_arms(mine)
    assert [r["arm"] for r in rows] == ["random-init", "random-init (CLS)", "dino", "ijepa", "mae"]
    by_arm = {r["arm"]: r for r in rows}
    for r in rows:
        lo, hi = r["ci95"]
        assert 0.0 <= lo <= r["linear_bal_acc"] <= hi <= 1.0, r
    ev = next(c for c in mine if c["arm"] == "ijepa")["evaluation"]
    assert by_arm["ijepa"]["linear_bal_acc"] == ev["linear"]["metrics"]["balanced_accuracy"]["value"]
    assert by_arm["dino"]["family"] == "view invariance (JEA)" and by_arm["mae"]["family"] == "pixel reconstruction"
    # a failed cell is no row
    failed = [{**next(c for c in mine if c["arm"] == "mae"), "status": "failed"}]
    assert "mae" not in [r["arm"] for r in pilot_arms([c for c in mine if c["arm"] != "mae"] + failed)]


@pytest.mark.slow
def test_report_html_opens_offline_in_headless_chromium(killed_and_resumed, tmp_path):
    """The self-contained report in a real browser (Debian's chromium): no console error, no request
    beyond the file itself, and a screenshot that is not blank."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"{chromium} missing (apt-get install -y chromium; .ci/run installs it)")
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    report = killed_and_resumed["dir"] / "report.html"
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 1600})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        assert page.locator("img").count() >= 4 and page.locator("p.verdict").count() == 2
        assert all(page.evaluate("Array.from(document.images).map(i => i.naturalWidth > 0)"))  # decoded
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("L"))
    assert shot.std() > 5  # text, tables and plots, not a blank page


@pytest.fixture(scope="module")
def phantom_store(ray_session, tmp_path_factory):
    """16 local-label ultrasound phantoms at 32 px with ROI masks (catalog column 'roi'), via `bench-data`."""
    import argparse

    from pretextlab.jobs import bench_data

    tmp = tmp_path_factory.mktemp("phantoms")
    parser = argparse.ArgumentParser()
    bench_data.add_arguments(parser)
    args = parser.parse_args([str(tmp / "store"), "--items", "16", "--size", "32", "--locality", "1", "--seed", "5"])
    assert bench_data.run(args) == 0
    return tmp / "store"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_study_on_s3_scores_localisation_and_reports_a_failed_cell(phantom_store, s3_server, tmp_path):
    """Everything on the loopback S3 server: a dataset with ROI masks gets the localisation table; a copy
    whose image chunks are corrupt fails its cells with a one-line reason while the other cells complete,
    and the command's exit code is non-zero."""
    import argparse
    import shutil

    from pretextlab.jobs import study as study_job
    from pretextlab.storage import fs as sfs

    bad = tmp_path / "bad"
    shutil.copytree(phantom_store, bad)
    chunks = [p for p in bad.rglob("*") if p.is_file() and "/images/c/" in p.as_posix() and "-roi" not in str(p)]
    assert chunks, "no image chunk files found to corrupt"
    for p in chunks:
        p.write_bytes(b"not a zstd frame" * 4)
    bucket = s3_server.new_bucket()
    s3_server.upload(phantom_store, bucket, "good")
    s3_server.upload(bad, bucket, "bad")
    uri = f"s3://{bucket}"
    path = study_yaml(
        tmp_path,
        [
            {"name": "phantom", "store": f"{uri}/good", "modality": "ultrasound"},
            {"name": "corrupt", "store": f"{uri}/bad", "modality": "ultrasound"},
        ],
        name="s3",
        arms=[ARMS[2]],  # mae: one trained arm (+ random init) per dataset
        storage=f"{uri}/studies",
        registry=f"{uri}/registry",
    )
    parser = argparse.ArgumentParser()
    study_job.add_arguments(parser)
    assert study_job.run(parser.parse_args([str(path)])) == 1  # a failed cell: non-zero exit

    study_uri = f"{uri}/studies/s3"
    cells = {
        c: json.loads(sfs.read_bytes(f"{study_uri}/cells/{c}.json"))
        for c in ("phantom.random-init.s0", "phantom.mae.s0", "corrupt.random-init.s0", "corrupt.mae.s0")
    }
    assert cells["phantom.mae.s0"]["status"] == cells["phantom.random-init.s0"]["status"] == "complete"
    for c in ("corrupt.random-init.s0", "corrupt.mae.s0"):
        assert cells[c]["status"] == "failed" and cells[c]["error"] and "\n" not in cells[c]["error"], cells[c]
    # the masked dataset's cells scored their feature maps on the ROI masks
    for c in ("phantom.mae.s0", "phantom.random-init.s0"):
        loc = cells[c]["evaluation"]["localisation"]
        assert loc["with_mask"] >= 1 and "anchor-similarity" in loc["auroc"], loc
        assert cells[c]["peak_rss_mib"] > 50  # the cost column: a real process's peak memory
    md = sfs.read_bytes(f"{study_uri}/report.md").decode()
    assert "Localisation against the ROI masks" in md and "## Failed cells" in md
    assert "corrupt.mae.s0" in md and md.count("| mae |") >= 2  # the results table and the localisation table
    table = pd.read_parquet(io.BytesIO(sfs.read_bytes(f"{study_uri}/results.parquet")))
    row = table.set_index("cell").loc["phantom.mae.s0"]
    loc = cells["phantom.mae.s0"]["evaluation"]["localisation"]
    assert row["loc_anchor_auroc"] == pytest.approx(loc["auroc"]["anchor-similarity"]["value"])


def test_make_demo_runs_the_shipped_demo_study():
    """`pretextlab demo` (make demo) writes the study configs/study/demo.yaml describes, so a user can re-run
    it with more steps or seeds from the shipped file."""
    from pretextlab.jobs.demo import demo_study

    shipped = yaml.safe_load((REPO / "configs" / "study" / "demo.yaml").read_text())
    written = demo_study(Path("demo-data"), ["dino", "ijepa", "mae"], 100, 0)
    for ds in written["datasets"]:
        ds["store"] = os.path.relpath(ds["store"])
    written["storage"], written["registry"] = os.path.relpath(written["storage"]), os.path.relpath(written["registry"])
    assert written == shipped


def test_a_random_init_baseline_is_reused_only_for_the_same_encoder(tmp_path):
    """Baselines are registered as ``dataset.random-init.sN`` whatever the study: a second study sharing
    the registry and the dataset name with another backbone gets its own, while a re-run (or a study
    with the same backbone and seed) reuses the registered one."""
    from pretextlab.jobs.study import _baseline_encoder
    from pretextlab.study.cells import plan_cells
    from pretextlab.study.config import load_study
    from pretextlab.training.config import PretrainConfig

    def baseline(*overrides: str):
        study = load_study(REPO / "configs" / "study" / "demo.yaml", [f"registry={tmp_path / 'reg'}", *overrides])
        cell = next(c for c in plan_cells(study, str(tmp_path / "runs")) if c.arm == "random-init")
        return _baseline_encoder(PretrainConfig.model_validate(cell.pretrain), cell.seed, None)

    first = baseline()
    assert first.card.img_size == 48
    assert baseline().id == first.id  # the same study again: reused
    wider = baseline("backbone.img_size=64", "pretrain.data.clip.size=64")
    assert wider.id != first.id and wider.card.img_size == 64
    assert baseline().id == first.id  # the first study's baseline is still found among the versions


def test_random_init_is_read_as_each_arm_reads_and_the_verdict_says_when_it_was_not():
    """DINO's embedding is its CLS token, random init's (and I-JEPA's) the mean of the patch tokens: the
    plan evaluates the baseline under both, its extra readout becomes a row of its own, and the verdict
    warns only when an arm has no random-init row read its way (records from before)."""
    from pretextlab.study.cells import plan_cells
    from pretextlab.study.config import load_study
    from pretextlab.study.results import readout_note, results_table, with_readouts

    study = load_study(REPO / "configs" / "study" / "demo.yaml", [])
    base = [c for c in plan_cells(study, "runs") if c.arm == "random-init"]
    assert [c.readouts for c in base] == [("avg", "token")] * 2  # I-JEPA and MAE: mean; DINO: CLS
    one_way = load_study(REPO / "configs" / "study" / "demo.yaml", ["arms=[{name: mae, objective: mae}]"])
    assert {c.readouts for c in plan_cells(one_way, "runs") if c.arm == "random-init"} == {("avg",)}

    def cell(arm: str, pool: str | None, **extra) -> dict:
        encoder = {} if pool is None else {"global_pool": pool}
        return {
            "id": f"d.{arm}.s0",
            "dataset": "d",
            "arm": arm,
            "objective": "x",
            "seed": 0,
            "status": "complete",
            "evaluation": {"encoder": encoder},
            **extra,
        }

    old = [cell("random-init", "avg"), cell("dino", "token"), cell("ijepa", "avg")]
    note = readout_note(old)
    assert "dino reads the CLS token" in note and "ijepa" not in note
    assert "random init was read through the mean of the patch tokens only" in note
    assert readout_note([cell("random-init", None), cell("dino", "token")]) == ""  # no readout recorded

    both = cell(
        "random-init",
        "avg",
        readouts={"token": {"encoder": "d.random-init.s0:v2", "evaluation": {"encoder": {"global_pool": "token"}}}},
    )
    rows = with_readouts([both, cell("dino", "token")])
    assert [r["arm"] for r in rows] == ["random-init", "random-init (CLS)", "dino"]
    assert rows[1]["id"] == "d.random-init.s0+token" and rows[1]["encoder"] == "d.random-init.s0:v2"
    assert readout_note(rows) == ""
    assert list(results_table([both, cell("dino", "token")])["arm"]) == ["random-init", "random-init (CLS)", "dino"]
