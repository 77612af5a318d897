"""Pretraining on Ray Train: two CPU workers train every objective from a Zarr store (local and S3),
the encoder lands in the registry and loads in timm, a killed worker and a stopped run both resume
from the last checkpoint, and bad configs fail before any worker starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, closed_ray, run_cli
from pretextlab.jobs.ingest import IngestConfig, run_ingest
from pretextlab.storage import synthetic as syn

BACKBONE = {"arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1}
OBJECTIVES = {  # objective -> (modality, data kind, extra objective fields)
    "dino": ("histopathology", "patches", {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}),
    "simclr": ("histopathology", "patches", {"proj_hidden_dim": 32, "proj_dim": 16}),
    "vicreg": ("histopathology", "patches", {}),
    "mae": ("histopathology", "patches", {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}),
    "ijepa": ("ultrasound", "frames", {}),
    "cine_jepa": ("ultrasound", "clips", {"frames": 4}),
    "cine_mae": ("ultrasound", "clips", {"frames": 4, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}),
    # issue 17: Gram anchoring from step 1 with a refresh at step 3; SALT's teacher is made by config()
    "dinov3": (
        "histopathology",
        "patches",
        {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "gram_start_step": 1, "gram_refresh_every": 2},
    ),
    "lejepa": ("ultrasound", "frames", {"predictor_depth": 2}),
    "salt": ("ultrasound", "frames", {"predictor_depth": 2}),
    "cine_salt": ("ultrasound", "clips", {"frames": 4, "predictor_depth": 2}),
}


def teacher_folder(tmp: Path) -> Path:
    """A frozen teacher for SALT: an encoder folder (a ViT at the student's patch grid, 1 channel)."""
    from pretextlab.models import BackboneConfig, EncoderCard, create_backbone, save_encoder

    folder = tmp / "teacher"
    if not (folder / "card.json").is_file():
        bb = BackboneConfig(**BACKBONE, in_chans=1, global_pool="avg")
        card = EncoderCard(
            timm_name=bb.timm_name,
            timm_kwargs=bb.timm_kwargs(),
            embed_dim=192,
            img_size=32,
            patch_size=8,
            in_chans=1,
            global_pool="avg",
            objective="mae",
        )
        save_encoder(create_backbone(bb), card, folder)
    return folder


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory):
    """Two small slides and six labelled cine loops (two classes, six patients), ingested."""
    raw = tmp_path_factory.mktemp("ptraw")
    syn.write_slide_tiff(raw / "s0.tif", 512, 768, tile=256, levels=1, seed=1)
    syn.write_slide_tiff(raw / "s1.tif", 512, 512, tile=256, levels=1, seed=2)
    rows = ["item_id,label,patient_id"]
    for i in range(6):
        syn.write_us_dicom(raw / f"us{i}.dcm", frames=6, rows=48, cols=64, seed=i, label=i % 2)
        rows.append(f"us{i},{'lesion' if i % 2 == 0 else 'band'},P{i}")
    labels = raw.parent / "pt-labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    dest = tmp_path_factory.mktemp("ptstore")
    rep = run_ingest(
        IngestConfig(sources=[str(raw)], dest=str(dest), labels=str(labels), zarr={"chunk": 256}), progress=False
    )
    assert rep.ok, rep.render()
    return dest


def config(tmp: Path, store: Path | str, objective: str = "dino", steps: int = 4, **train) -> dict:
    modality, kind, extra = OBJECTIVES[objective]
    cfg = {
        "name": f"t-{objective.replace('_', '-')}",
        "modality": modality,
        "data": {
            "kind": kind,
            "sources": [{"uri": str(store), "modality": modality}],
            "patch": {"patch_size": 32, "min_tissue": 0.3},
            "clip": {"frames": 4, "stride": 1, "size": 32, **({"hop": 1} if kind == "clips" else {})},
        },
        "objective": {"name": objective, "backbone": BACKBONE, **extra},
        "train": {
            "steps": steps,
            "batch_size": 4,
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "data_cpus": 0.25,
            "log_every": 1,
            "checkpoint_every": 2,
            **train,
        },
        "storage": str(tmp / "runs"),
        "registry": str(tmp / "registry"),
    }
    if objective in ("salt", "cine_salt"):
        cfg["objective"]["teacher"] = str(teacher_folder(tmp))
    if objective in ("dino", "dinov3"):
        cfg["views"] = {"n_local": 2}
    elif kind == "clips":
        cfg["views"] = {"strides": [1]}
    else:
        cfg["views"] = {}
    return cfg


def _run(cfg: dict):
    from pretextlab.jobs.pretrain import run_pretrain
    from pretextlab.training.config import PretrainConfig

    return run_pretrain(PretrainConfig.model_validate(cfg))


def _check_encoder(res, objective: str) -> None:
    card = json.loads(Path(res.encoder.uri, "card.json").read_text())
    assert card["objective"] == objective and card["name"] == res.encoder.name
    assert card["data"]["sources"][0]["catalog_sha256"].startswith("sha256:")
    assert card["pretrain_config"]["objective"]["name"] == objective
    assert card["git_commit"] and np.isfinite(card["metrics"]["loss"])
    if objective in ("salt", "cine_salt"):  # the card names its frozen teacher and the teacher's sha256
        teacher = json.loads(Path(card["teacher"], "card.json").read_text())
        assert card["teacher_sha256"] == teacher["weights_sha256"]
    # loads in timm alone, from the card, and embeds
    model = timm.create_model(card["timm_name"], pretrained=False, **card["timm_kwargs"])
    model.load_state_dict(load_file(str(Path(res.encoder.uri, "model.safetensors"))))
    out = model.eval()(torch.zeros(2, card["in_chans"], card["img_size"], card["img_size"]))
    assert out.shape == (2, card["embed_dim"])


@pytest.mark.slow
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_two_workers_train_each_objective(store, tmp_path, objective):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = _run(config(tmp_path, store, objective))
    assert res.resumed_from is None
    assert np.isfinite(res.metrics["loss"]) and res.metrics["images_per_s"] > 0
    # rank 0's diagnostics are reported; their meaning (a collapsed embedding flagged, a healthy one not)
    # is tested on constructed embeddings in tests/test_collapse.py: a 1-block ViT after 4 steps sits
    # at the flag's threshold (seen both ways for I-JEPA and MAE), so the flag itself is not asserted here
    assert {"collapsed", "train_rankme", "train_embedding_std"} <= set(res.metrics)
    _check_encoder(res, objective)
    run_dir = tmp_path / "runs" / res.encoder.name
    acc = EventAccumulator(str(run_dir / "tensorboard"))  # the steps the workers logged, not the config's
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    # two workers: every rank wrote its RNG state into each checkpoint
    for ckpt in _registered_checkpoints(run_dir):
        assert sorted(p.name for p in (run_dir / ckpt).glob("rng-*.json")) == ["rng-0.json", "rng-1.json"]


def test_online_knn_tensorboard_and_evaluate(store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretextlab.evaluate import EvaluateConfig, evaluate_encoder

    cfg = config(tmp_path, store, "ijepa", steps=4)
    cfg["validation"] = {"catalog": str(store), "every": 2, "k": 3, "linear": True}
    res = _run(cfg)
    acc = EventAccumulator(str(tmp_path / "runs" / cfg["name"] / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "images_per_s", "knn_acc", "train_rankme"} <= tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("knn_acc")] == [2, 4]
    assert [e.step for e in acc.Scalars("linear_acc")] == [2, 4]
    # the run's final metrics are the workers' step-4 validation (kNN, linear probe, RankMe)
    assert acc.Scalars("knn_acc")[-1].value == pytest.approx(res.metrics["knn_acc"])
    assert acc.Scalars("linear_acc")[-1].value == pytest.approx(res.metrics["linear_acc"])
    assert acc.Scalars("rankme")[-1].value == pytest.approx(res.metrics["rankme"])  # the validation features'
    result = evaluate_encoder(
        res.encoder.uri, str(store), EvaluateConfig(modality="ultrasound", n_bootstrap=50, shots=[1], fewshot_repeats=1)
    )
    assert result["dataset"]["n_items"] == 6 and result["dataset"]["class_names"] == ["band", "lesion"]
    assert (
        result["encoder"]["weights_sha256"]
        == json.loads(Path(res.encoder.uri, "card.json").read_text())["weights_sha256"]
    )


def test_s3_data_runs_and_registry(store, tmp_path, s3_server):
    from pretextlab.registry import EncoderRegistry

    bucket = s3_server.new_bucket()
    s3_server.upload(Path(store), bucket, "store")
    cfg = config(tmp_path, f"s3://{bucket}/store", "dino", steps=2)
    cfg.update(storage=f"s3://{bucket}/runs", registry=f"s3://{bucket}/registry")
    res = _run(cfg)
    assert res.steps == 2
    assert res.encoder.uri.startswith(f"s3://{bucket}/registry/encoders/t-dino/")
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="runs/")["Contents"]}
    assert any(k.startswith("runs/t-dino/checkpoint-00000002/") and k.endswith("state.json") for k in keys)
    assert any("/tensorboard/events.out.tfevents" in k for k in keys)
    model, card, _ = EncoderRegistry(f"s3://{bucket}/registry", cache_dir=tmp_path / "cache").load("t-dino")
    assert card.objective == "dino" and card.data["sources"][0]["uri"] == f"s3://{bucket}/store"


def _registered_checkpoints(run_dir: Path) -> list[str]:
    """Checkpoints Ray Train has registered (uploaded by every rank and recorded), not just uploaded."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [c["checkpoint_dir_name"] for c in snap.get("checkpoint_results", [])]


def test_killed_worker_resumes_with_same_total_steps(store, tmp_path):
    """SIGKILL a training worker after the first checkpoint: the group restarts from it and ends at
    the configured step count (FailureConfig)."""
    import threading

    from ray._private.state import state  # the GCS actor table: no dashboard needed

    cfg = config(tmp_path, store, "vicreg", steps=12, checkpoint_every=4)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("res", _run(cfg)), daemon=True)
    thread.start()
    run_dir = tmp_path / "runs" / cfg["name"]
    deadline = time.time() + 600
    while time.time() < deadline and not _registered_checkpoints(run_dir):
        time.sleep(0.2)
    assert _registered_checkpoints(run_dir), "no checkpoint was registered"
    workers = [
        a for a in state.actor_table(None).values() if a["State"] == "ALIVE" and "TrainWorker" in a["ActorClassName"]
    ]
    assert workers, "no live Ray Train worker found"
    os.kill(workers[-1]["Pid"], signal.SIGKILL)
    thread.join(900)
    res = out["res"]
    assert res.metrics["step"] == 12  # reported by the workers at their last step
    assert res.metrics.get("restored_from", 0) >= 4  # the group restarted from a checkpoint
    assert json.loads((run_dir / "pretextlab-run.json").read_text())["status"] == "complete"


def test_stop_and_restart_continues_schedules(store, tmp_path):
    """SIGTERM (what systemd, docker stop and Kubernetes send; handled like Ctrl-C) to a CLI run after its
    first checkpoint: exit 130, no traceback. Run it again: the workers restore that checkpoint (their own
    TensorBoard records say so and log no step at or below it), and step, LR and EMA momentum continue
    along their schedules instead of restarting."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretextlab.objectives.schedules import ScheduleConfig, Schedules

    steps = 24  # long enough that the stop lands mid-run on a loaded machine (seen: a 10-step run finished first)
    cfg = config(tmp_path, store, "dino", steps=steps, checkpoint_every=3)
    cfg["train"]["schedule"] = {"lr": 1e-3, "warmup_steps": 4, "momentum": 0.9}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [str(Path(sys.executable).with_name("pretextlab")), "pretrain", str(path), "--num-cpus", "4"]
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    run_dir = tmp_path / "runs" / cfg["name"]
    deadline = time.time() + 600
    # the first checkpoint folder on disk (Train's snapshot file, read below, is written later)
    while time.time() < deadline and not list(run_dir.glob("checkpoint-*")) and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the main process only, as an orchestrator does
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == 130, out[-3000:]
    # the CLI's own ending: one line, no traceback of its own (Ray may forward its workers' shutdown logs)
    assert "pretextlab: interrupted" in out and 'bin/pretextlab", line' not in out
    first = int(sorted(_registered_checkpoints(run_dir))[-1].split("-")[1])
    assert 3 <= first < steps, f"the run ended at step {first} before the stop landed: nothing to resume"
    before = set((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    again = run_cli("pretrain", str(path), "--num-cpus", "4", env=env, timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from step" in again.stdout
    # the test session's cluster is up beside this run's own: Ray Train's placement-group cleaner must
    # still find this run's cluster (issue 13: two runs on one machine), not fail on two candidates
    assert "multiple active Ray instances" not in again.stdout + again.stderr
    (second,) = set((run_dir / "tensorboard").glob("events.out.tfevents.*")) - before  # the re-run's own file
    own = EventAccumulator(str(second))
    own.Reload()
    assert {e.value for e in own.Scalars("restored_from")} == {first}  # read by the workers, not the driver
    assert min(e.step for e in own.Scalars("loss")) > first  # no step redone
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    sched = Schedules(ScheduleConfig(lr=1e-3, warmup_steps=4, momentum=0.9), total_steps=steps)
    lrs = {e.step: e.value for e in acc.Scalars("lr")}
    moms = {e.step: e.value for e in acc.Scalars("momentum")}
    assert max(lrs) == steps
    for step in range(first + 1, steps + 1):  # logged after step s ran with the schedule's value at s - 1
        assert lrs[step] == pytest.approx(sched.lr(step - 1), rel=1e-6)
        assert moms[step] == pytest.approx(sched.momentum(step - 1), rel=1e-6)
    # the end-of-run warning for DINO at ln(out_dim) appears exactly when the registered card's loss is there
    from pretextlab.evaluate.diagnostics import uniform_output_warning
    from pretextlab.registry import EncoderRegistry

    _, card, _ = EncoderRegistry(cfg["registry"]).load(cfg["name"])
    expected = uniform_output_warning(card.objective, card.objective_config, card.metrics)
    assert (expected in again.stderr) if expected else ("uniform-output value" not in again.stderr)
    again2 = run_cli("pretrain", str(path), "--num-cpus", "4", env=env, timeout=200)
    assert again2.returncode == 2 and "already finished" in again2.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        ({"objective": {"name": "byol2"}}, "unknown objective 'byol2'"),
        ({"data": {"patch": {"patch_size": 4096}}}, "patch"),
        ({"data": {"kind": "clips"}}, "data.kind"),
        ({"validation": {"catalog": "STORE", "label_column": "grade"}}, "validation.label_column"),
        ({"train": {"steps": "many"}}, "train.steps"),
    ],
)
def test_bad_config_fails_before_workers(store, tmp_path, change, message):
    from pretextlab.core.config import deep_merge

    cfg = config(tmp_path, store, "dino")
    text = json.dumps(change).replace("STORE", str(store))
    cfg = deep_merge(cfg, json.loads(text))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # Ray is addressed at a closed port: any attempt to start or reach it before the check would fail
    # differently (a connection error after retries), so exit 2 with the message proves the order
    res = run_cli("pretrain", str(path), timeout=120, env=closed_ray())
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()


def test_no_items_of_the_needed_kind(tmp_path, ray_session):
    raw = tmp_path / "raw"
    syn.write_us_dicom(raw / "only.dcm", frames=4, rows=48, cols=64)
    dest = tmp_path / "cine-only"
    assert run_ingest(IngestConfig(sources=[str(raw)], dest=str(dest)), progress=False).ok
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, dest, "dino")))
    # Ray is addressed at a closed port: any attempt to start or reach it before the check would fail
    # differently (a connection error after retries), so exit 2 with the message proves the order
    res = run_cli("pretrain", str(path), timeout=120, env=closed_ray())
    assert res.returncode == 2 and str(dest) in res.stderr and "Traceback" not in res.stderr


def _stand_in_registry(cfg, tmp: Path):
    """``cfg`` pointed at a registry holding a random encoder for every address it starts from (a SALT
    teacher, an init), built from the example config of that name: the chain of examples must fit."""
    from pretextlab.core.config import load_config
    from pretextlab.models import BackboneConfig, EncoderCard, create_backbone
    from pretextlab.registry import EncoderRegistry
    from pretextlab.training.config import PretrainConfig
    from pretextlab.training.setup import objective_kwargs

    extra = cfg.objective.kwargs()
    addresses = [extra.get("teacher"), (extra.get("init") or "").removeprefix("registry:") or None]
    for address in filter(None, addresses):
        name = address.split(":")[0]
        source = load_config(PretrainConfig, str(REPO / "configs" / "pretrain" / f"{name}.yaml"), [])
        bb = BackboneConfig.model_validate(objective_kwargs(source)["backbone"])
        card = EncoderCard(
            timm_name=bb.timm_name,
            timm_kwargs=bb.timm_kwargs(),
            embed_dim=192,
            img_size=bb.img_size,
            patch_size=bb.patch_size,
            in_chans=bb.in_chans,
            global_pool=bb.global_pool,
            objective=source.objective.name,
        )
        EncoderRegistry(str(tmp / "registry")).register(create_backbone(bb), card, name)
    return cfg.model_copy(update={"registry": str(tmp / "registry")})


def test_example_configs_validate(tmp_path):
    from pretextlab.core.config import load_config
    from pretextlab.training.config import PretrainConfig
    from pretextlab.training.setup import check

    files = sorted((REPO / "configs" / "pretrain").glob("*.yaml"))
    assert len(files) >= 8
    seen = set()
    for f in files:
        cfg = _stand_in_registry(load_config(PretrainConfig, str(f), []), tmp_path / f.stem)
        objective, views = check(cfg)
        seen.add((cfg.modality, cfg.objective.name))
        assert views.config.size == objective.cfg.backbone.img_size, f
    assert {("histopathology", "dino"), ("ultrasound", "ijepa"), ("histopathology", "mae")} <= seen
