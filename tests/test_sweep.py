"""Sweeps on Ray Tune: a 4-trial ASHA sweep stops weak trials and exports the best encoder as the chosen
one; a killed sweep driver resumes without re-running finished trials; TensorBoard files per trial hold
the reported scalars; bad sweep configs fail before any trial starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, closed_ray, kill_session, run_cli
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage import synthetic as syn

LRS = [2e-3, 1e-6, 3e-6, 1e-5]


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory):
    """Six labelled ultrasound cine loops (two classes, six patients), ingested."""
    raw = tmp_path_factory.mktemp("swraw")
    rows = ["item_id,label,patient_id"]
    for i in range(6):
        syn.write_us_dicom(raw / f"us{i}.dcm", frames=6, rows=48, cols=64, seed=i, label=i % 2)
        rows.append(f"us{i},{'lesion' if i % 2 == 0 else 'band'},P{i}")
    labels = raw.parent / "sw-labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    dest = tmp_path_factory.mktemp("swstore")
    rep = run_ingest(
        IngestConfig(sources=[str(raw)], dest=str(dest), labels=str(labels), zarr={"chunk": 256}), progress=False
    )
    assert rep.ok, rep.render()
    return dest


def sweep_config(tmp: Path, store: Path, name: str = "t-sweep", steps: int = 8, **tune) -> dict:
    """A tiny I-JEPA sweep over the learning rate: 32 px frames, a 1-block ViT, one 0.5-CPU Train worker
    per trial (multi-worker DDP is tested in test_pretrain.py)."""
    return {
        "name": name,
        "pretrain": {
            "name": "t-ijepa",
            "modality": "ultrasound",
            "data": {
                "kind": "frames",
                "sources": [{"uri": str(store), "modality": "ultrasound"}],
                "clip": {"size": 32},
            },
            "objective": {
                "name": "ijepa",
                "backbone": {"arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1},
            },
            "train": {
                "steps": steps,
                "batch_size": 4,
                "num_workers": 1,
                "cpus_per_worker": 0.5,
                "data_cpus": 0.25,
                "log_every": 1,
                "checkpoint_every": 4,
                "schedule": {"lr": 1e-3, "warmup_steps": 0},
            },
            "validation": {"catalog": str(store), "every": 2, "k": 3, "linear": True},
            "storage": str(tmp / "runs"),
            "registry": str(tmp / "registry"),
        },
        "search": {"train.schedule.lr": {"grid": LRS}},
        "tune": {"num_samples": 1, "max_concurrent": 2, **tune},
    }


def write(tmp: Path, cfg: dict, name: str = "sweep.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def asha_sweep(store, tmp_path_factory):
    """ASHA on the training loss (online kNN saturates at 1.0 on this synthetic set, and ties never
    stop a trial): after one update at lr 2e-3 the loss has dropped well below the near-frozen
    lr 1e-6..1e-5 trials, so the rung at step 2 stops the slow ones whatever order they report in."""
    from pretextlab.jobs.sweep import plan_sweep, run_sweep
    from pretextlab.training.sweep_config import load_sweep_config

    tmp = tmp_path_factory.mktemp("asha")
    # one trial at a time: on 2 cores two at once are slower than one after another (benchmarks/sweep.py)
    cfg = sweep_config(
        tmp, store, metric="loss", mode="min", scheduler={"name": "asha", "grace_period": 2}, max_concurrent=1
    )
    path = write(tmp, cfg)
    plan = plan_sweep(load_sweep_config(path), str(path))
    res = run_sweep(plan, print_every=1e9)
    return tmp, cfg, res


def _result_lines(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


@pytest.mark.timeout(1200)  # the module's sweep runs in this test's fixture; trials start slowly on a busy box
def test_asha_sweep_stops_early_and_chooses_best(asha_sweep):
    from PIL import Image

    from pretextlab.registry import EncoderRegistry
    from pretextlab.training.sweep_config import LINEAR_METRICS, TRAIN_METRICS, VALIDATION_METRICS

    tmp, cfg, res = asha_sweep
    assert res.complete and len(res.trials) == 4
    states = {r["id"]: r["state"] for r in res.trials}
    stopped = [r for r in res.trials if r["state"] == "STOPPED"]
    assert stopped, f"ASHA stopped no trial: {states}"
    assert all(r["step"] < 8 for r in stopped)
    best = next(r for r in res.trials if r["id"] == res.best["trial"])
    assert best["state"] == "DONE" and best["step"] == 8
    assert res.best["config"]["train.schedule.lr"] == pytest.approx(2e-3)

    sweep_dir = tmp / "runs" / "t-sweep"
    # every metric the sweep config promises (tune.metric is checked against them) really is reported
    reported = set().union(*(_result_lines(sweep_dir / best["dir"])))
    assert set(TRAIN_METRICS) | set(VALIDATION_METRICS) | set(LINEAR_METRICS) <= reported
    linear = [r["linear_acc"] for r in _result_lines(sweep_dir / best["dir"]) if "linear_acc" in r]
    assert len(linear) == 4  # steps 2, 4, 6, 8: the probe ran at every validation step

    # the best trial's encoder is registered and chosen for ultrasound, its card tells where it came from
    reg = EncoderRegistry(str(tmp / "registry"))
    chosen = reg.chosen("ultrasound")
    assert chosen is not None and chosen.id == res.encoder.id
    card = chosen.card.model_dump()
    assert card["run"]["sweep"] == "t-sweep" and card["run"]["trial"] == best["id"]
    assert card["run"]["hyperparameters"] == {"train.schedule.lr": pytest.approx(2e-3)}
    assert card["run"]["metric"]["name"] == "loss" and card["run"]["metric"]["value"] == pytest.approx(best["metric"])
    assert card["run"]["uri"] == str(sweep_dir / best["dir"] / "train")
    assert card["pretrain_config"]["train"]["schedule"]["lr"] == pytest.approx(2e-3)
    assert card["data"]["sources"][0]["catalog_sha256"].startswith("sha256:")
    model, _, ref = reg.load("chosen:ultrasound")
    assert ref.id == res.encoder.id

    # summary: Markdown with every trial, one PNG per hyperparameter and learning curves
    md = (sweep_dir / "summary" / "summary.md").read_text()
    assert all(r["id"] in md for r in res.trials) and "stopped @" in md and res.encoder.id in md
    for png in ("metric_vs_train.schedule.lr.png", "learning_curves.png"):
        with Image.open(sweep_dir / "summary" / png) as im:
            assert im.format == "PNG" and im.size[0] > 200

    # the stopped trials' Train workers gave their CPUs back (their placement groups were reaped)
    import ray

    deadline = time.time() + 90  # Ray's own teardown of a killed trial is slow on a loaded 2-core box
    while ray.available_resources().get("CPU", 0) < 3.99 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) >= 3.99, ray.available_resources()

    # the status command prints the table from the sweep folder
    out = run_cli("sweep", "status", str(sweep_dir), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "4 trial(s)" in out.stdout and "stopped @" in out.stdout and best["id"] in out.stdout
    assert "complete" in out.stdout


def test_tensorboard_files_per_trial_hold_the_scalars(asha_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, cfg, res = asha_sweep
    sweep_dir = tmp / "runs" / "t-sweep"
    for row in res.trials:
        trial_dir = sweep_dir / row["dir"]
        results = {int(r["step"]): r for r in _result_lines(trial_dir)}
        # Tune's event file in the trial folder: every report, tagged ray/tune/<metric>
        assert list(trial_dir.glob("events.out.tfevents.*")), row["dir"]
        tune_acc = EventAccumulator(str(trial_dir))
        tune_acc.Reload()
        losses = [e.value for e in tune_acc.Scalars("ray/tune/loss")]
        assert losses == pytest.approx([results[s]["loss"] for s in sorted(results)], rel=1e-5)
        # the Train run's own event file: per-step scalars, kNN at validation steps (checked on the trials
        # that ran out: a stopped trial's workers are killed, with whatever their writer had not flushed)
        if row["state"] != "DONE":
            continue
        train_acc = EventAccumulator(str(trial_dir / "train" / "tensorboard"))
        train_acc.Reload()
        train_losses = {e.step: e.value for e in train_acc.Scalars("loss")}
        assert sorted(train_losses) == sorted(results) == list(range(1, 9))
        assert [train_losses[s] for s in range(1, 9)] == pytest.approx(
            [results[s]["loss"] for s in range(1, 9)], rel=1e-5
        )
        assert [e.step for e in train_acc.Scalars("knn_acc")] == [2, 4, 6, 8]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_driver_resumes_without_rerunning_finished_trials(store, tmp_path):
    cfg = sweep_config(
        tmp_path, store, name="t-resume", steps=6, metric="knn_acc", scheduler={"name": "fifo"}, max_concurrent=1
    )
    cfg["search"] = {"train.schedule.lr": {"grid": LRS[:2]}}  # one finishes, one is killed mid-run
    cfg["pretrain"]["train"]["checkpoint_every"] = 2  # an unfinished trial can hold a checkpoint at step 2
    path = write(tmp_path, cfg)
    sweep_dir = tmp_path / "runs" / "t-resume"
    cmd = [str(Path(sys.executable).with_name("pretextlab")), "sweep", str(path), "--num-cpus", "4", "--no-dashboard"]
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 400
    finished: list[str] = []
    partial: list[str] = []
    while time.time() < deadline and proc.poll() is None:
        finished = _tune_terminated(sweep_dir)
        partial = [
            d.name.removeprefix("trial-")
            for d in sweep_dir.glob("trial-*")
            if d.name.removeprefix("trial-") not in finished and _train_checkpoints(d)
        ]
        if finished and partial:
            break
        time.sleep(0.3)
    assert finished and partial, (tmp_path / "first.log").read_text()[-3000:]
    kill_session(proc.pid)  # the driver, its local Ray cluster and every worker (own process groups) die
    proc.wait(60)
    log.close()
    ids_before = set(_tune_trial_ids(sweep_dir))
    (unfinished,) = partial
    # Train's snapshot file lags Tune's own record of the trial's latest checkpoint (what Tuner.restore
    # uses), so the restore point lies between the snapshot's newest and the newest folder on disk
    registered = max(_train_checkpoints(sweep_dir / f"trial-{unfinished}"))
    on_disk = _checkpoint_folders(sweep_dir / f"trial-{unfinished}")
    assert registered < 6, "the unfinished trial finished before the kill (a race): nothing to resume"
    tb_before = set((sweep_dir / f"trial-{unfinished}" / "train" / "tensorboard").glob("events.out.tfevents.*"))
    kept = {t: (sweep_dir / f"trial-{t}" / "result.json").read_bytes() for t in finished}
    ckpts = {t: sorted(p.name for p in (sweep_dir / f"trial-{t}" / "train").glob("checkpoint-*")) for t in finished}

    again = run_cli("sweep", str(path), "--num-cpus", "4", "--no-dashboard", env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming" in again.stdout
    # the dashboards: the exact TensorBoard command and the status command for this sweep folder
    assert f"tensorboard: tensorboard --logdir {sweep_dir}" in again.stdout
    assert f"status:      pretextlab sweep status {sweep_dir} --watch" in again.stdout
    status = json.loads((sweep_dir / "pretextlab-sweep.json").read_text())
    assert status["status"] == "complete" and len(status["trials"]) == 2
    assert all(r["state"] == "DONE" and r["step"] == 6 for r in status["trials"])
    assert len(finished) < 2, "the driver was killed after every trial had finished: nothing was resumed"
    # Tuner.restore kept the trials: the same ids, exactly the trial folders Tune had created (+ the rest of
    # the grid), and the unfinished trial's workers restored its checkpoint (their own TensorBoard says so)
    ids_after = {r["id"] for r in status["trials"]}
    assert ids_before <= ids_after and len(ids_after) == 2
    assert {d.name for d in sweep_dir.glob("trial-*")} == {f"trial-{t}" for t in ids_after}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (own,) = (
        set((sweep_dir / f"trial-{unfinished}" / "train" / "tensorboard").glob("events.out.tfevents.*")) - tb_before
    )
    acc = EventAccumulator(str(own))
    acc.Reload()
    (resume_step,) = {int(e.value) for e in acc.Scalars("restored_from")}
    assert registered <= resume_step < 6 and resume_step in on_disk, (registered, resume_step, on_disk)
    assert min(e.step for e in acc.Scalars("loss")) == resume_step + 1  # no step repeated, none skipped
    for t in finished:  # not re-run: Tune's results and the Train run's checkpoints are as they were
        assert (sweep_dir / f"trial-{t}" / "result.json").read_bytes() == kept[t]
        assert sorted(p.name for p in (sweep_dir / f"trial-{t}" / "train").glob("checkpoint-*")) == ckpts[t]
    assert status["best"]["encoder"] and (tmp_path / "registry" / "chosen" / "ultrasound.json").is_file()
    third = run_cli("sweep", str(path), "--num-cpus", "4", timeout=120)
    assert third.returncode == 2 and "already finished" in third.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sweep_on_s3(store, tmp_path, s3_server):
    """Data, trials, Train checkpoints, TensorBoard, status, summary and registry all on object storage."""
    from pretextlab.jobs.sweep import plan_sweep, run_sweep
    from pretextlab.registry import EncoderRegistry
    from pretextlab.training.sweep_config import load_sweep_config

    bucket = s3_server.new_bucket()
    s3_server.upload(Path(store), bucket, "store")
    uri = f"s3://{bucket}"
    cfg = sweep_config(tmp_path, store, name="t-s3", steps=2, scheduler={"name": "fifo"})
    cfg["pretrain"].update(storage=f"{uri}/runs", registry=f"{uri}/registry")
    cfg["pretrain"]["data"]["sources"][0]["uri"] = cfg["pretrain"]["validation"]["catalog"] = f"{uri}/store"
    cfg["search"] = {"train.schedule.lr": {"grid": [1e-3, 1e-4]}}
    path = write(tmp_path, cfg)
    res = run_sweep(plan_sweep(load_sweep_config(path), str(path)), print_every=1e9)
    assert res.complete and [r["state"] for r in res.trials] == ["DONE", "DONE"]
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="runs/t-s3/")["Contents"]}
    assert {
        "runs/t-s3/pretextlab-sweep.json",
        "runs/t-s3/summary/summary.md",
        "runs/t-s3/summary/learning_curves.png",
    } <= keys
    for r in res.trials:
        trial = f"runs/t-s3/{r['dir']}"
        assert {f"{trial}/result.json", f"{trial}/train/checkpoint-00000002/state.json"} <= keys
        assert any(k.startswith(f"{trial}/events.out.tfevents") for k in keys)
        assert any(k.startswith(f"{trial}/train/tensorboard/events.out.tfevents") for k in keys)
    chosen = EncoderRegistry(f"{uri}/registry", cache_dir=tmp_path / "cache").chosen("ultrasound")
    assert chosen is not None and chosen.id == res.encoder.id and chosen.uri.startswith(f"{uri}/registry/")
    out = run_cli("sweep", "status", f"{uri}/runs/t-s3", timeout=120)
    assert out.returncode == 0 and "2 trial(s) (2 done)" in out.stdout, out.stdout + out.stderr


def _tune_trial_ids(sweep_dir: Path) -> list[str]:
    """Every trial id in Tune's saved experiment state."""
    out = []
    for f in sweep_dir.glob("experiment_state-*.json"):
        data = json.loads(f.read_text())
        out += [json.loads(trial_json)["trial_id"] for trial_json, _meta in data.get("trial_data", [])]
    return out


def _train_checkpoints(trial_dir: Path) -> list[int]:
    """Steps of the checkpoints Ray Train registered for a trial's Train run."""
    try:
        snap = json.loads((trial_dir / "train" / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [int(c["checkpoint_dir_name"].split("-")[1]) for c in snap.get("checkpoint_results", [])]


def _checkpoint_folders(trial_dir: Path) -> set[int]:
    """Steps of the checkpoint folders persisted (fully or not) under a trial's Train run."""
    return {int(p.name.split("-")[1]) for p in (trial_dir / "train").glob("checkpoint-*") if p.is_dir()}


def _tune_terminated(sweep_dir: Path) -> list[str]:
    """Trial ids Tune's saved experiment state (what Tuner.restore reads) records as finished."""
    out = []
    for f in sweep_dir.glob("experiment_state-*.json"):
        try:
            data = json.loads(f.read_text())
        except (ValueError, OSError):
            return []  # being rewritten
        for trial_json, _meta in data.get("trial_data", []):
            trial = json.loads(trial_json)
            if trial.get("status") == "TERMINATED":
                out.append(trial["trial_id"])
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"search": {"objective.teacher_temp": {"uniform": [0.04, 0.07]}}},
            "search.objective.teacher_temp: unknown hyperparameter: objective ijepa has no field 'teacher_temp'",
        ),
        ({"search": {}}, "search: the search space is empty"),
        (
            {"tune": {"metric": "linear_acc"}, "pretrain": {"validation": {"linear": False}}},
            "tune.metric: the trials never report 'linear_acc' (the online linear probe is off: set "
            "pretrain.validation.linear=true); they report: ",
        ),
        ({"tune": {"metric": "dice"}}, "tune.metric: the trials never report 'dice'; they report: "),
        (
            {"pretrain": {"validation": None}},
            "tune.metric: the trials never report 'knn_acc' (it comes from online validation",
        ),
    ],
)
def test_bad_sweep_fails_before_any_trial(store, tmp_path, change, message):
    from pretextlab.core.config import deep_merge

    cfg = sweep_config(tmp_path, store)
    cfg = {
        **deep_merge(cfg, {k: v for k, v in change.items() if k != "search"}),
        **({"search": change["search"]} if "search" in change else {}),
    }
    # Ray is addressed at a closed port: any attempt to start or reach it before the check would fail
    # differently (a connection error after retries), so exit 2 with the message proves the order
    res = run_cli("sweep", str(write(tmp_path, cfg)), timeout=120, env=closed_ray())
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert "loss_latent" in res.stderr or "report: " not in message  # the objective's own metrics are listed
    assert not (tmp_path / "runs").exists()


def test_shipped_sweep_configs_validate():
    from pretextlab.training.sweep_config import load_sweep_config

    files = sorted((REPO / "configs" / "sweep").glob("*.yaml"))
    assert {f.stem for f in files} >= {"dino", "ijepa", "mae", "simclr", "vicreg"}
    for f in files:
        cfg = load_sweep_config(f)
        assert cfg.space() and cfg.tune.metric == "knn_acc" and cfg.pretrain.validation is not None, f


def test_wheel_carries_the_default_search_spaces(tmp_path):
    """An installed wheel (the container image) finds the default spaces without the source tree."""
    import zipfile

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("pretextlab-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    shipped = {f"pretextlab/configs/sweep/{f.name}" for f in (REPO / "configs" / "sweep").glob("*.yaml")}
    assert shipped and shipped <= names
    probe = (
        "from pretextlab.training import sweep_config as s; "
        "print(s.DEFAULTS_DIR); print(sorted(s.default_space('dino')['search']))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.pop("PRETEXTLAB_SWEEP_DEFAULTS", None)
    res = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    where, space = res.stdout.splitlines()
    assert Path(where) == tmp_path / "site" / "pretextlab" / "configs" / "sweep"
    assert "objective.teacher_temp" in space
