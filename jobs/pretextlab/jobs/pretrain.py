"""Pretrain an encoder with Ray Train: stream views from Zarr, DDP on CPU (gloo) or GPU (NCCL),
checkpoint and resume, export the encoder to the registry.

    pretextlab pretrain CONFIG [key=value ...] [--address ray://... | auto]
    ray job submit --runtime-env jobs/runtime_env.yaml -- python -m pretextlab.jobs.pretrain CONFIG [key=value ...]

CONFIG is a YAML file of PretrainConfig fields (examples: configs/pretrain/*.yaml); key=value pairs
override dotted fields, e.g. train.steps=50 objective.mask_ratio=0.6. Re-running the same config
(same name and storage) resumes from its latest checkpoint; a finished run says so and exits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretextlab.core.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="pretraining config (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config fields (dotted paths)")
    parser.add_argument("--address", help="Ray cluster address (default: a Ray job's cluster, else a local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")


# -- preparing a run (driver side, before any worker starts) -------------------------------------
@dataclass
class Prepared:
    cfg: Any  # PretrainConfig
    plan: Any  # StreamPlan
    objective: Any
    views: Any
    run_uri: str
    data_info: dict[str, Any]
    git_commit: str | None
    storage_options: dict[str, Any] | None = None


def git_commit() -> str | None:
    """The commit of the code being run: $PRETEXTLAB_GIT_COMMIT (set in images), else git, else None."""
    if os.environ.get("PRETEXTLAB_GIT_COMMIT"):
        return os.environ["PRETEXTLAB_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _absolute(cfg: Any) -> Any:
    """Local paths in the config made absolute against the driver's cwd (workers run elsewhere)."""
    from pretextlab.storage import fs as sfs

    data = cfg.model_dump()
    for src in data["data"]["sources"]:
        src["uri"] = sfs.normalize(src["uri"])
    data["storage"] = sfs.normalize(data["storage"])
    data["registry"] = sfs.normalize(data["registry"])
    if data.get("validation"):
        data["validation"]["catalog"] = sfs.normalize(data["validation"]["catalog"])
    return type(cfg).model_validate(data)


def data_info(cfg: Any, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Which data trained the encoder: each source store and the sha256 of its catalog file."""
    import hashlib

    from pretextlab.storage import fs as sfs

    sources = []
    for src in cfg.data.sources:
        try:
            raw = sfs.read_bytes(sfs.join(src.uri, "catalog.parquet"), storage_options)
            digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        except (FileNotFoundError, OSError):
            digest = None
        sources.append({"uri": src.uri, "weight": src.weight, "catalog_sha256": digest})
    return {"kind": cfg.data.kind, "sources": sources}


def prepare(cfg: Any, storage_options: dict[str, Any] | None = None) -> Prepared:
    """Every check that can fail on user input, before Ray starts a worker."""
    from pretextlab.storage import fs as sfs
    from pretextlab.storage import read_catalog
    from pretextlab.storage.stream import plan_stream
    from pretextlab.training.setup import check

    cfg = _absolute(cfg)
    objective, views = check(cfg)
    plan = plan_stream(cfg.data, storage_options)
    need = cfg.train.batch_size * cfg.train.num_workers
    if plan.samples_per_epoch < need:
        raise UserError(
            f"data: {plan.samples_per_epoch} samples per epoch, fewer than one step needs "
            f"(train.batch_size {cfg.train.batch_size} x train.num_workers {cfg.train.num_workers})"
        )
    if cfg.validation is not None:
        v = cfg.validation
        cat = read_catalog(v.catalog, storage_options)
        if v.label_column not in cat.columns or cat[v.label_column].isna().all():
            raise UserError(
                f"validation.label_column: the catalog at {v.catalog} has no {v.label_column!r} "
                f"labels (attach them with `pretextlab catalog {v.catalog} --labels labels.csv`)"
            )
    run_uri = sfs.join(cfg.storage, cfg.name)
    return Prepared(
        cfg, plan, objective, views, run_uri, data_info(cfg, storage_options), git_commit(), storage_options
    )


# -- run storage ---------------------------------------------------------------------------------
def ray_storage(url: str, storage_options: dict[str, Any] | None = None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: local folders as they are; object stores
    through our fsspec filesystem (so endpoint and credentials follow the AWS environment)."""
    from pretextlab.storage import fs as sfs

    if not sfs.is_remote(url):
        Path(url).mkdir(parents=True, exist_ok=True)
        return url, None
    import pyarrow.fs as pafs

    fs, path = sfs.get_fs(url, storage_options)
    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def checkpoints(run_uri: str, storage_options: dict[str, Any] | None = None) -> list[tuple[int, str]]:
    """(step, uri) of the complete checkpoints of a run (those with state.json), oldest first."""
    from pretextlab.storage import fs as sfs

    fs, path = sfs.get_fs(run_uri, storage_options)
    try:
        fs.invalidate_cache(path)
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.startswith("checkpoint-") and fs.exists(f"{path}/{name}/state.json"):
            out.append((int(json.loads(fs.cat_file(f"{path}/{name}/state.json"))["step"]), sfs.join(run_uri, name)))
    return sorted(out)


def read_run_record(run_uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    from pretextlab.storage import fs as sfs

    try:
        return json.loads(sfs.read_bytes(sfs.join(run_uri, "pretextlab-run.json"), storage_options))
    except (FileNotFoundError, OSError):
        return None


def write_run_record(run_uri: str, record: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    from pretextlab.storage import fs as sfs

    sfs.atomic_write_bytes(
        sfs.join(run_uri, "pretextlab-run.json"), json.dumps(record, indent=1).encode(), storage_options
    )


# -- the Ray Train run ---------------------------------------------------------------------------
def build_dataset(prep: Prepared, start_epoch: int = 0):
    """The stream of ready views for the whole run (enough epochs for every step, plus one)."""
    from pretextlab.storage.datasource import map_views, read_stream

    t = prep.cfg.train
    need = t.steps * t.batch_size * t.num_workers
    epochs = range(start_epoch, start_epoch + math.ceil(need / prep.plan.samples_per_epoch) + 1)
    ds = read_stream(prep.plan, list(epochs), prep.storage_options, num_cpus=t.data_cpus)
    return map_views(ds, prep.views, seed=t.seed, batch_size=t.batch_size, num_cpus=t.data_cpus)


def build_trainer(
    prep: Prepared,
    name: str | None = None,
    storage: str | None = None,
    callbacks: list | None = None,
    start_epoch: int = 0,
    dataset: Any = None,
):
    """The TorchTrainer of a prepared run (also used by sweeps, one per trial). ``dataset`` replaces the
    Zarr stream (benchmarks train from a materialised one to price the data path)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pretextlab.jobs.train_loop import train_loop_per_worker
    from pretextlab.storage import fs as sfs

    cfg, t = prep.cfg, prep.cfg.train
    # Train's controller polls its workers every 2 s by default, and each phase of a run (group started,
    # training, finished) waits for a poll: a short run spent seconds idle. Train hands RAY_TRAIN_*
    # variables to its controller; a value set by the user wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    storage_path, storage_fs = ray_storage(storage or cfg.storage, prep.storage_options)
    run_name = name or cfg.name
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    loop_config = {
        "cfg": cfg.model_dump(mode="json"),
        "samples_per_epoch": prep.plan.samples_per_epoch,
        "run_uri": sfs.join(storage or cfg.storage, run_name),
        "storage_options": prep.storage_options,
        "threads": max(1, int(t.cpus_per_worker)),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        # mypy resolves ray.train.RunConfig to ray.air's (the first of ray.train's conditional imports); the
        # one used at run time is Train v2's, which takes logging_config
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=callbacks,
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        # Train applies its default ingest options to the shard, not the stream's 128 MiB object-store cap:
        # under training that cap throttled the view tasks (images/s 0.79x the in-memory anchor with it,
        # 0.99x without; benchmarks/pipeline.py part c). Memory stays bounded by Ray Data's own limit.
        datasets={"train": dataset if dataset is not None else build_dataset(prep, start_epoch)},
    )


def export_encoder(
    prep: Prepared, checkpoint_dir: str | Path, metrics: dict[str, Any], extra: dict[str, Any] | None = None
):
    """Rebuild the objective from a checkpoint, take its encoder and register it with a full card."""
    from pretextlab.registry import EncoderRegistry
    from pretextlab.training.checkpoint import load_training_state
    from pretextlab.training.setup import encoder_card, make_objective

    objective = make_objective(prep.cfg)
    state = load_training_state(checkpoint_dir, objective, None)
    clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    card = encoder_card(
        prep.cfg,
        objective,
        prep.views,
        data=prep.data_info,
        metrics=clean,
        git_commit=prep.git_commit,
        run={"uri": prep.run_uri, "step": state["step"], **(extra or {})},
    )
    encoder = objective.encoder()
    return EncoderRegistry(prep.cfg.registry, prep.storage_options).register(encoder, card, prep.cfg.name)


@dataclass
class PretrainResult:
    run_uri: str
    steps: int
    metrics: dict[str, Any]
    encoder: Any  # EncoderRef
    seconds: float
    resumed_from: int | None = None
    notes: list[str] = field(default_factory=list)


def run_pretrain(cfg: Any, storage_options: dict[str, Any] | None = None) -> PretrainResult:
    """Prepare, train on the current Ray cluster, export; resumes a run that has checkpoints."""
    prep = prepare(cfg, storage_options)
    record = read_run_record(prep.run_uri, storage_options)
    if record and record.get("status") == "complete":
        raise UserError(
            f"{prep.run_uri}: this run already finished (encoder {record['encoder']}); "
            "choose another name= to train again"
        )
    existing = checkpoints(prep.run_uri, storage_options)
    resumed = existing[-1][0] if existing else None
    start_epoch = prep.cfg.train.epoch_at(resumed or 0, prep.plan.samples_per_epoch)
    write_run_record(
        prep.run_uri,
        {
            "status": "running",
            "config": prep.cfg.model_dump(mode="json"),
            "git_commit": prep.git_commit,
            "data": prep.data_info,
        },
        storage_options,
    )
    t0 = time.perf_counter()
    trainer = build_trainer(prep, start_epoch=start_epoch)
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface the root cause in one line
        from pretextlab.core.config import ConfigError

        cause = getattr(exc, "__cause__", None) or exc
        if isinstance(cause, (UserError, ConfigError)):
            raise UserError(str(cause)) from None
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"{prep.run_uri}: training finished without a checkpoint")
    metrics = dict(result.metrics or {})
    with result.checkpoint.as_directory() as folder:
        ref = export_encoder(prep, folder, metrics)
    seconds = time.perf_counter() - t0
    write_run_record(
        prep.run_uri,
        {
            "status": "complete",
            "encoder": ref.id,
            "registry": prep.cfg.registry,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "seconds": seconds,
            "config": prep.cfg.model_dump(mode="json"),
            "git_commit": prep.git_commit,
            "data": prep.data_info,
        },
        storage_options,
    )
    return PretrainResult(prep.run_uri, int(metrics.get("step", prep.cfg.train.steps)), metrics, ref, seconds, resumed)


def load_pretrain_config(path: str, overrides: list[str]):
    from pretextlab.core.config import load_config
    from pretextlab.training.config import PretrainConfig

    return load_config(PretrainConfig, path, overrides)


def run(args: argparse.Namespace) -> int:
    from pretextlab.cluster import init_ray
    from pretextlab.evaluate.diagnostics import uniform_output_warning

    cfg = load_pretrain_config(args.config, args.overrides)
    prepare(cfg)  # fail on bad input before starting Ray
    init_ray(args.address, args.num_cpus)
    res = run_pretrain(cfg)
    m = res.metrics
    shown = ", ".join(f"{k} {m[k]:.4g}" for k in ("loss", "images_per_s", "train_rankme", "knn_acc") if k in m)
    resumed = f" (resumed from step {res.resumed_from})" if res.resumed_from else ""
    print(f"pretrained {res.encoder.name} for {res.steps} steps in {res.seconds:.0f} s{resumed}: {shown}")
    print(f"encoder: {res.encoder.id} in {cfg.registry} ({res.encoder.uri})")
    print(f"run:     {res.run_uri}  (tensorboard --logdir {res.run_uri}/tensorboard)")
    card = res.encoder.card  # the objective's full config, defaults included (out_dim)
    warning = uniform_output_warning(card.objective, card.objective_config, m)
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.pretrain"))
