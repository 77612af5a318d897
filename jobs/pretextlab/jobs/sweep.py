"""Sweep objective hyperparameters with Ray Tune: each trial is a pretraining run on Ray Train (the
pretraining job's trainer: same checkpoints, resume and metrics), ASHA stops weak trials on the online
kNN metric, and the best trial's encoder goes to the registry as the chosen encoder of its modality.

    pretextlab sweep CONFIG [key=value ...] [--address ray://... | auto] [--num-cpus N]
    pretextlab sweep status RUN [--watch [SECONDS]]
    ray job submit --runtime-env jobs/runtime_env.yaml -- python -m pretextlab.jobs.sweep CONFIG [key=value ...]

CONFIG is a sweep YAML (examples and per-objective default spaces: configs/sweep/*.yaml); key=value
pairs override its dotted fields, e.g. tune.num_samples=4 pretrain.train.steps=50. RUN is the sweep
folder the sweep prints (or its CONFIG). Running the same CONFIG again resumes an interrupted sweep
(Tuner.restore): finished trials are kept, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretextlab.core.errors import UserError

#: CPUs of a trial's own actor: it only drives its Ray Train run, whose workers hold the trial's CPUs
#: (Tune refuses zero; a whole CPU per trial would starve the Train workers' Ray Data tasks)
TRIAL_CPU = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = (
        "%(prog)s CONFIG [KEY=VALUE ...] [--address ADDRESS] [--num-cpus N] [--no-dashboard]\n"
        "       %(prog)s status RUN [--watch [SECONDS]]"
    )
    parser.add_argument("config", metavar="CONFIG", help="sweep config (YAML); or the word `status`")
    parser.add_argument(
        "rest",
        nargs="*",
        metavar="KEY=VALUE",
        help="override sweep config fields (dotted paths); after `status`: RUN, the sweep folder",
    )
    parser.add_argument("--address", help="Ray cluster address (default: a Ray job's cluster, else a local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument("--no-dashboard", action="store_true", help="start the local Ray cluster without its dashboard")
    parser.add_argument(
        "--worker-logs",
        action="store_true",
        help="stream the trials' worker logs here (default: only the table; the logs stay in Ray's log folder)",
    )
    parser.add_argument(
        "--print-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often the live table is printed while trials run (default: 30)",
    )
    parser.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=10.0,
        default=None,
        metavar="SECONDS",
        help="with status: refresh every SECONDS (default 10) until the sweep ends",
    )


# -- planning (driver side, before Ray starts) ---------------------------------------------------
@dataclass
class SweepPlan:
    cfg: Any  # SweepConfig
    prep: Any  # Prepared: the base pretraining run, checked
    uri: str  # the sweep folder
    source: str  # the config file, for messages
    fingerprint: dict[str, Any]
    storage_options: dict[str, Any] | None = None


def objective_metrics(prep: Any) -> list[str]:
    """The objective's own metrics (loss terms, temperatures): one forward pass on two blank samples."""
    import numpy as np
    import torch

    from pretextlab.views.columns import from_columns

    rows = {prep.views.spec.row_key: np.full((2, *prep.plan.sample_shape), 127, dtype=np.uint8)}
    batch = from_columns(prep.views.apply_to_rows(rows, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        out = prep.objective(batch)
    return sorted(out.metrics)


def plan_sweep(cfg: Any, source: str = "sweep", storage_options: dict[str, Any] | None = None) -> SweepPlan:
    """Every check that can fail on user input, before any trial starts: the pretraining config and its
    data, the metric, the searcher."""
    from pretextlab.jobs.pretrain import prepare
    from pretextlab.storage import fs as sfs
    from pretextlab.training.sweep_config import check_metric, known_metrics

    prep = prepare(cfg.trial_base(), storage_options)
    extra: list[str] = []
    if cfg.tune.metric not in known_metrics(prep.cfg):
        extra = objective_metrics(prep)
    check_metric(cfg, extra, source)
    if cfg.tune.searcher == "optuna" and importlib.util.find_spec("optuna") is None:
        raise UserError(f"{source}: tune.searcher: optuna is not installed (pip install optuna), or use random")
    uri = sfs.join(sfs.normalize(cfg.storage_root), cfg.name)
    fingerprint = json.loads(json.dumps({**cfg.spec_fingerprint(), "pretrain": prep.cfg.model_dump(mode="json")}))
    plan = SweepPlan(cfg, prep, uri, source, fingerprint, storage_options)
    check_resumable(plan)
    return plan


def check_resumable(plan: SweepPlan) -> dict[str, Any] | None:
    """A sweep folder that already holds this sweep: refuse a finished one and one started with another
    config; returns its status (None for a new sweep)."""
    from pretextlab.jobs.sweep_report import read_status

    previous = read_status(plan.uri, plan.storage_options)
    if previous and previous.get("status") == "complete":
        best = previous.get("best") or {}
        raise UserError(
            f"{plan.uri}: this sweep already finished (best trial {best.get('trial')}, encoder "
            f"{best.get('encoder')}); choose another name= to sweep again"
        )
    if previous and previous.get("spec") != plan.fingerprint:
        raise UserError(
            f"{plan.source}: the sweep at {plan.uri} was started with another search space, tune "
            "settings or pretraining config; resume it with the same config, or choose another name="
        )
    return previous


# -- Tune pieces ---------------------------------------------------------------------------------
def param_space(cfg: Any) -> dict[str, Any]:
    """The sweep's dimensions as Tune distributions, keyed by dotted path."""
    from ray import tune

    from pretextlab.training.sweep_config import encoded_paths

    encoded = encoded_paths(cfg)
    out: dict[str, Any] = {}
    for path, dim in cfg.space().items():
        kind, a = dim.kind, dim.args
        if path in encoded:
            a = [json.dumps(v) for v in a]
        if kind == "uniform":
            out[path] = tune.uniform(a[0], a[1])
        elif kind == "loguniform":
            out[path] = tune.loguniform(a[0], a[1])
        elif kind == "randint":
            out[path] = tune.randint(a[0], a[1] + 1)
        elif kind == "grid" or (kind == "choice" and cfg.tune.searcher == "grid"):
            out[path] = tune.grid_search(list(a))
        else:
            out[path] = tune.choice(list(a))
    return out


def searcher(cfg: Any, concurrency: int):
    """Random/grid variants (Tune's BasicVariantGenerator), or Optuna's TPE. Concurrency is set here:
    Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator passed in."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if cfg.tune.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=cfg.tune.seed), max_concurrent=concurrency)
    return BasicVariantGenerator(random_state=cfg.tune.seed, max_concurrent=concurrency)


def scheduler(cfg: Any):
    from ray.tune.schedulers import ASHAScheduler

    from pretextlab.training.sweep_config import grace_period

    s = cfg.tune.scheduler
    if s.name == "fifo":
        return None
    return ASHAScheduler(
        time_attr="step",
        max_t=cfg.pretrain.train.steps,
        grace_period=grace_period(cfg),
        reduction_factor=s.reduction_factor,
        brackets=s.brackets,
    )


def scheduler_text(cfg: Any) -> str:
    from pretextlab.training.sweep_config import grace_period

    s = cfg.tune.scheduler
    if s.name == "fifo":
        return "FIFO (no early stopping)"
    return f"ASHA (first rung at step {grace_period(cfg)}, reduction factor {s.reduction_factor:g})"


def auto_concurrency(train: Any) -> int:
    """How many trials the cluster holds at once: CPUs over (workers x CPUs each + one data task), and
    GPUs over workers when trials use GPUs."""
    import ray

    res = ray.cluster_resources()
    per_trial = train.num_workers * train.cpus_per_worker + train.data_cpus
    n = int(res.get("CPU", 1) // per_trial)
    if train.use_gpu:
        n = min(n, int(res.get("GPU", 0) // train.num_workers))
    return max(1, n)


def dashboard_url() -> str | None:
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
    except Exception:  # private API: a missing URL only loses a printed line
        return None
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"


def _experiment_path(root: str, name: str, storage_options: dict[str, Any] | None) -> tuple[str, Any, str]:
    """(storage_path, storage_filesystem, experiment path) for Tune's RunConfig and Tuner.restore."""
    from pretextlab.jobs.pretrain import ray_storage

    storage_path, storage_fs = ray_storage(root, storage_options)
    return storage_path, storage_fs, f"{storage_path.rstrip('/')}/{name}"


@contextmanager
def _local_folder(uri: str, storage_options: dict[str, Any] | None):
    """A local folder with the contents of ``uri`` (downloaded when it is remote)."""
    from pretextlab.storage import fs as sfs

    if not sfs.is_remote(uri):
        yield Path(uri)
        return
    fs, path = sfs.get_fs(uri, storage_options)
    with tempfile.TemporaryDirectory(prefix="pretextlab-best-") as tmp:
        fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
        yield Path(tmp)


# -- the sweep -----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    uri: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    encoder: Any  # EncoderRef | None
    summary: str | None
    seconds: float
    resumed: bool
    finished_before: int = 0
    complete: bool = True


def export_best(plan: SweepPlan, row: dict[str, Any], last: dict[str, Any]):
    """Register the best trial's encoder (card: sweep, trial, hyperparameters, metric, data) and mark it
    chosen for its modality."""
    from pretextlab.jobs.pretrain import checkpoints, export_encoder, prepare
    from pretextlab.registry import EncoderRegistry
    from pretextlab.storage import fs as sfs
    from pretextlab.training.sweep_config import trial_config

    cfg = plan.cfg
    tcfg = trial_config(plan.prep.cfg, row["config"])  # row configs are decoded (see run_sweep)
    if cfg.export.name:
        tcfg = tcfg.model_copy(update={"name": cfg.export.name})
    prep = prepare(tcfg, plan.storage_options)
    run_uri = sfs.join(plan.uri, row["dir"], "train")
    found = checkpoints(run_uri, plan.storage_options)
    if not found:
        raise RuntimeError(f"{run_uri}: the best trial left no checkpoint")
    metric = {"name": cfg.tune.metric, "mode": cfg.tune.mode, "value": row["metric"], "step": row.get("metric_step")}
    extra = {
        "sweep": cfg.name,
        "sweep_uri": plan.uri,
        "trial": row["id"],
        "hyperparameters": row["config"],
        "metric": metric,
        "validation_catalog": prep.cfg.validation.catalog if prep.cfg.validation is not None else None,
    }
    metrics = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with _local_folder(found[-1][1], plan.storage_options) as folder:
        ref = export_encoder(dataclasses.replace(prep, run_uri=run_uri), folder, metrics, extra)
    if cfg.export.choose:
        EncoderRegistry(prep.cfg.registry, plan.storage_options).choose(
            ref,
            prep.cfg.modality,
            {"by": "sweep", "sweep": cfg.name, "sweep_uri": plan.uri, "trial": row["id"], "metric": metric},
        )
    return ref


def run_sweep(plan: SweepPlan, print_every: float = 30.0, max_concurrent: int | None = None) -> SweepResult:
    """Run (or resume) the sweep on the current Ray cluster, then summarise and export the best encoder."""
    from ray import tune

    from pretextlab.jobs.sweep_report import finalize, pick_best, read_curve, read_status, write_summary
    from pretextlab.jobs.sweep_trial import (
        SweepStatus,
        reap_orphan_placement_groups,
        run_trial,
        trial_dirname,
        trial_name,
        write_status,
    )
    from pretextlab.training.sweep_config import decode, encoded_paths

    cfg, so = plan.cfg, plan.storage_options
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # kNN comes only with validation steps' reports
    t0 = time.perf_counter()
    previous = check_resumable(plan)
    storage_path, storage_fs, exp_path = _experiment_path(cfg.storage_root, cfg.name, so)
    resumed = tune.Tuner.can_restore(exp_path, storage_filesystem=storage_fs)
    finished_before = sum(r["state"] in ("DONE", "STOPPED", "ERROR") for r in (previous or {}).get("trials", []))

    base = plan.prep.cfg
    train = base.train
    concurrency = max_concurrent or cfg.tune.max_concurrent or auto_concurrency(train)
    if resumed and previous and previous.get("max_concurrent"):
        concurrency = int(previous["max_concurrent"])  # the restored searcher keeps its limit
    header = {
        "name": cfg.name,
        "uri": plan.uri,
        "metric": cfg.tune.metric,
        "mode": cfg.tune.mode,
        "steps": train.steps,
        "space": list(cfg.space()),
        "pretrain": base.name,
        "objective": base.objective.name,
        "modality": base.modality,
        "searcher": cfg.tune.searcher,
        "scheduler": scheduler_text(cfg),
        "num_samples": cfg.tune.num_samples,
        "max_concurrent": concurrency,
        "spec": plan.fingerprint,
        "tensorboard": f"tensorboard --logdir {plan.uri}",
        "dashboard": dashboard_url(),
    }
    # this driver's settings travel to the status callback through the status file (after a restore
    # Tune runs the callback pickled at the sweep's first start, which reads them at setup)
    header["driver"] = {"print_every": print_every, "dashboard": header["dashboard"]}
    status_cb = SweepStatus(plan.uri, header, so, print_every=print_every)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=base.model_dump(mode="json"),
            sweep_uri=plan.uri,
            storage_options=so,
            encoded=encoded_paths(cfg),
        ),
        {"CPU": TRIAL_CPU},
    )
    _print_start(plan, header, concurrency, resumed, finished_before)
    if resumed:
        tuner = tune.Tuner.restore(
            exp_path, trainable, resume_unfinished=True, resume_errored=False, storage_filesystem=storage_fs
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric,
                mode=cfg.tune.mode,
                search_alg=searcher(cfg, concurrency),
                scheduler=scheduler(cfg),
                num_samples=cfg.tune.num_samples,
                time_budget_s=cfg.tune.time_budget_s,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_dirname,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                callbacks=[status_cb],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    write_status(plan.uri, {**(previous or {}), "driver": header["driver"]} if resumed else status_cb.snapshot(), so)
    tuner.fit()
    # the last stopped trials' Train workers; returns as soon as none is left (a loaded machine has
    # taken over 30 s to end a stopped trial's Train controller)
    reap_orphan_placement_groups(wait_s=120.0)
    seconds = time.perf_counter() - t0
    final = read_status(plan.uri, so) or {}  # the callback's last flush (on_experiment_end)

    metric = cfg.tune.metric
    rows = [{**r, "config": decode(r["config"], encoded_paths(cfg))} for r in final.get("trials", [])]
    curves = {r["id"]: read_curve(plan.uri, r["dir"], metric, so) for r in rows}
    rows = finalize(rows, curves, metric, train.steps)
    unfinished = [r for r in rows if r["state"] in ("PENDING", "RUNNING")]
    out_of_time = cfg.tune.time_budget_s is not None and seconds >= cfg.tune.time_budget_s
    if unfinished and not out_of_time:
        write_status(plan.uri, {**status_cb.snapshot("interrupted"), "trials": rows}, so)
        return SweepResult(plan.uri, rows, None, None, None, seconds, resumed, finished_before, complete=False)

    best = pick_best(rows, cfg.tune.mode)
    ref = None
    best_info = None
    if best is not None:
        last = (curves.get(best["id"]) or [{}])[-1]
        ref = export_best(plan, best, last)
        best_info = {
            "trial": best["id"],
            "config": best["config"],
            "metric": best["metric"],
            "step": best.get("metric_step"),
            "encoder": ref.id,
            "registry": ref.uri.rsplit("/encoders/", 1)[0],
            "chosen": cfg.export.choose,
        }
    final = {**status_cb.snapshot("complete"), "trials": rows, "best": best_info, "seconds": seconds}
    log_axes = {p for p, d in cfg.space().items() if d.kind == "loguniform" or _spans_decades(d)}
    final["summary"] = write_summary(plan.uri, final, curves, log_axes, storage_options=so)
    write_status(plan.uri, final, so)
    return SweepResult(plan.uri, rows, best_info, ref, final["summary"], seconds, resumed, finished_before)


def _spans_decades(dim: Any) -> bool:
    """Listed positive numbers two or more decades apart read better on a log axis."""
    vals = dim.args if dim.kind in ("choice", "grid") else []
    nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(nums) == len(vals) > 1 and min(nums) > 0 and max(nums) / min(nums) >= 100


def _print_start(
    plan: SweepPlan, header: dict[str, Any], concurrency: int, resumed: bool, finished_before: int
) -> None:
    cfg = plan.cfg
    dims = ", ".join(header["space"])
    what = f"resuming ({finished_before} finished trial(s) kept)" if resumed else "starting"
    print(
        f"sweep {cfg.name}: {what}; {cfg.tune.num_samples} sample(s) of {cfg.tune.searcher} search over {dims}; "
        f"{header['scheduler']} on {cfg.tune.metric} ({cfg.tune.mode}); up to {concurrency} trial(s) at once"
    )
    print(f"  folder:      {plan.uri}")
    print(f"  dashboard:   {header['dashboard'] or 'not running (start Ray with its dashboard to watch trials)'}")
    print(f"  tensorboard: {header['tensorboard']}")
    print(f"  status:      pretextlab sweep status {plan.uri} --watch", flush=True)


# -- status --------------------------------------------------------------------------------------
def _status_uri(target: str) -> str:
    from pretextlab.storage import fs as sfs
    from pretextlab.training.sweep_config import load_sweep_config

    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        cfg = load_sweep_config(target)
        return sfs.join(sfs.normalize(cfg.storage_root), cfg.name)
    return sfs.normalize(target)


def run_status(args: argparse.Namespace) -> int:
    from pretextlab.jobs.sweep_report import STATUS_FILE, read_status, render_table

    if len(args.rest) != 1:
        raise UserError("sweep status: give one RUN: the sweep folder `pretextlab sweep` printed (or its config)")
    uri = _status_uri(args.rest[0])
    while True:
        status = read_status(uri)
        if status is None:
            raise UserError(f"{uri}: no sweep here ({STATUS_FILE} is missing)")
        table = render_table(status)
        if args.watch and sys.stdout.isatty():
            print("\033[2J\033[H", end="")
        print(table, flush=True)
        if status.get("summary"):
            print(f"summary: {status['summary']}")
        if not args.watch or status.get("status") != "running":
            return 0
        time.sleep(max(0.5, args.watch))


def run(args: argparse.Namespace) -> int:
    if args.config == "status":
        return run_status(args)
    from pretextlab.cluster import init_ray
    from pretextlab.training.sweep_config import load_sweep_config

    cfg = load_sweep_config(args.config, args.rest)
    source = f"{args.config} + overrides" if args.rest else args.config
    plan = plan_sweep(cfg, source)  # fail on bad input before starting Ray
    init_ray(args.address, args.num_cpus, dashboard=not args.no_dashboard, log_to_driver=args.worker_logs)
    res = run_sweep(plan, print_every=args.print_every)
    if not res.complete:
        print(f"sweep interrupted after {res.seconds:.0f} s; run the same command again to resume it", file=sys.stderr)
        return 130
    print(
        f"sweep {cfg.name}: {len(res.trials)} trials in {res.seconds:.0f} s "
        f"({sum(r['state'] == 'STOPPED' for r in res.trials)} stopped early, "
        f"{sum(r['state'] == 'ERROR' for r in res.trials)} failed)"
    )
    if res.best is None:
        print(f"no trial reported {cfg.tune.metric}: nothing exported", file=sys.stderr)
        return 1
    from pretextlab.jobs.sweep_report import fmt_value

    conf = ", ".join(f"{k}={fmt_value(v)}" for k, v in res.best["config"].items())
    print(f"best trial {res.best['trial']}: {cfg.tune.metric} {fmt_value(res.best['metric'])} ({conf})")
    chosen = f" (chosen for {plan.prep.cfg.modality})" if cfg.export.choose else ""
    print(f"encoder: {res.encoder.id} in {plan.prep.cfg.registry}{chosen}")
    print(f"summary: {res.summary}")
    return 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.sweep"))
