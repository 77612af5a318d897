"""Compare pretext objectives per dataset and answer with evidence: a study of datasets x arms x seeds.

    pretextlab study STUDY.yaml [key=value ...] [--choose] [--address ADDRESS] [--num-cpus N]
    pretextlab study STUDY.yaml [key=value ...] --report     re-render the report of the finished cells
    ray job submit --runtime-env jobs/runtime_env.yaml -- python -m pretextlab.jobs.study STUDY.yaml

Every cell pretrains the study's backbone with one objective for the same number of steps on Ray Train
(the pretraining job's trainer; a random-init baseline is always added), registers the encoder, and
evaluates it frozen (kNN, linear probe, few-shot, bootstrap CIs over patients/items, RankMe, collapse).
Cells run as many at once as the cluster holds: the study's own process runs one after another (as a
hand-written script of the same jobs would), each further slot is a Ray actor. The study folder gets report.md,
a self-contained report.html, results.parquet and results.json: per dataset the arms with CIs, paired
Holm-corrected comparisons and a one-sentence verdict. Re-running the same command skips finished
cells and resumes interrupted ones; a changed study under the same name is refused; a failed cell is
reported with its reason while the others complete (exit 1). --choose marks each modality's winner
as chosen:<modality> in the registry (never on a tie). A clinician review created from the study
(``pretextlab review create`` with ``study:``) adds a "Clinician review" section once ``pretextlab review
report`` has written its analysis into the study folder (reviews/); --report re-renders the report from
the finished cells and those sections without Ray and without training anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from pretextlab.core.errors import UserError

STUDY_FILE = "study.json"  # the folder layout: pretextlab.study.folder (not imported here: it pulls torch)
CELLS_DIR = "cells"
CELL_RUNNER_CPU = 0.01  # a CellRunner actor: it waits on Ray Train, then evaluates on the freed CPUs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="STUDY", help="study config (YAML): datasets, arms, seeds, steps")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override study fields (dotted paths)")
    parser.add_argument(
        "--choose", action="store_true", help="mark each modality's winning encoder chosen:<modality> (not on a tie)"
    )
    parser.add_argument("--address", help="Ray cluster address (default: a Ray job's cluster, else a local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument(
        "--report",
        action="store_true",
        help="only re-render report.md/.html and results.* from the finished cells and the clinician reviews "
        "linked to the study (no Ray, nothing trained)",
    )


# -- planning: every check that can fail on user input, before Ray starts ------------------------------
@dataclass
class StudyPlan:
    cfg: Any  # StudyConfig
    uri: str
    cells: list[Any]  # study.Cell
    fingerprint: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    storage_options: dict[str, Any] | None = None


def _labels(store: str, column: str, storage_options: dict[str, Any] | None) -> set[str]:
    from pretextlab.evaluate.roi import ROI_COLUMN
    from pretextlab.storage.catalog import read_catalog

    cat = read_catalog(store, storage_options)
    if column not in cat.columns or cat[column].isna().all():
        raise UserError(
            f"{store}: the catalog has no {column!r} labels; a study needs labelled stores "
            f"(pretextlab catalog {store} --labels labels.csv)"
        )
    if ROI_COLUMN in cat.columns:  # every ROI mask a row names must be an item of the store
        named = cat[ROI_COLUMN].dropna().astype(str)
        missing = sorted(set(named) - set(cat["item_id"].astype(str)))
        if missing:
            raise UserError(
                f"{store}: column {ROI_COLUMN!r} names {len(missing)} mask item(s) the catalog does not hold "
                f"({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); ingest the masks or fix the column"
            )
    return set(cat[column].dropna().astype(str))


def plan_study(cfg: Any, source: str = "study", storage_options: dict[str, Any] | None = None) -> StudyPlan:
    """Check the study and each cell's pretraining config and data; refuse a changed study."""
    from pretextlab.core.config import ConfigError
    from pretextlab.jobs.pretrain import git_commit, prepare
    from pretextlab.storage import fs as sfs
    from pretextlab.study import plan_cells
    from pretextlab.training.config import PretrainConfig

    uri = sfs.join(sfs.normalize(cfg.storage), cfg.name)
    runs = sfs.join(uri, "runs")
    try:
        cells = plan_cells(cfg, runs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    data: dict[str, Any] = {}
    for ds in cfg.datasets:
        train_labels = _labels(ds.store, ds.label_column, storage_options)
        if len(train_labels) < 2:
            raise UserError(f"{source}: dataset {ds.name}: {ds.store} has one class ({', '.join(train_labels)})")
        if ds.test_store:
            test_labels = _labels(ds.test_store, ds.label_column, storage_options)
            if not train_labels & test_labels:
                raise UserError(
                    f"{source}: dataset {ds.name}: {ds.store} and {ds.test_store} share no label "
                    f"({', '.join(sorted(train_labels))} vs {', '.join(sorted(test_labels))})"
                )
    for cell in cells:
        pcfg = PretrainConfig.model_validate(cell.pretrain)
        prep = prepare(pcfg, storage_options)  # objective, views, stream plan: one-line errors
        data.setdefault(cell.dataset, prep.data_info)
    fingerprint = json.loads(json.dumps({"config": cfg.model_dump(mode="json"), "cells": [c.id for c in cells]}))
    previous = read_study(uri, storage_options)
    if previous and previous.get("fingerprint") != fingerprint:
        raise UserError(
            f"{uri}: a different study ran under the name {cfg.name!r}; choose another name= (or "
            "delete the folder to start over)"
        )
    return StudyPlan(
        cfg, uri, cells, fingerprint, {"datasets": data, "git_commit": git_commit()}, storage_options=storage_options
    )


def read_study(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    from pretextlab.storage import fs as sfs

    try:
        return json.loads(sfs.read_bytes(sfs.join(uri, STUDY_FILE), storage_options))
    except (FileNotFoundError, OSError, ValueError):
        return None


def _write_json(url: str, obj: Any, storage_options: dict[str, Any] | None) -> None:
    from pretextlab.storage import fs as sfs

    sfs.atomic_write_bytes(url, json.dumps(obj, indent=1, default=str).encode(), storage_options)


def read_cell(uri: str, cell_id: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    from pretextlab.storage import fs as sfs

    try:
        return json.loads(sfs.read_bytes(sfs.join(uri, CELLS_DIR, f"{cell_id}.json"), storage_options))
    except (FileNotFoundError, OSError, ValueError):
        return None


def cell_cpus(train: Any) -> float:
    """The CPUs one cell's pretraining holds (Train workers + Ray Data), by which cells are packed."""
    return float(train.num_workers * train.cpus_per_worker + train.data_cpus)


# -- one cell --------------------------------------------------------------------------------------------
#: what makes two random-init baselines the same encoder: the backbone, its input and preprocessing,
#: the weights it starts from, and the seed (the weights are a function of these)
BASELINE_IDENTITY = (
    "timm_name",
    "timm_kwargs",
    "embed_dim",
    "img_size",
    "patch_size",
    "in_chans",
    "global_pool",
    "mean",
    "std",
    "modality",
    "resolution",
    "init",
    "init_sha256",
)


def _baseline_identity(card: Any) -> dict[str, Any]:
    data = card.model_dump(mode="json")
    return {**{k: data.get(k) for k in BASELINE_IDENTITY}, "seed": (data.get("run") or {}).get("seed")}


def _baseline_encoder(cfg: Any, seed: int, storage_options: dict[str, Any] | None) -> Any:
    """The random-init backbone of a dataset and seed, registered like any trained arm.

    A registered version is reused only when it is the same encoder (:data:`BASELINE_IDENTITY` and the
    seed): registry names are ``dataset.random-init.sN`` whatever the study, so another study sharing
    the registry and a dataset name with a different backbone (size, depth, channels, working
    resolution) must get its own baseline, not the other study's."""
    import torch

    from pretextlab.registry import EncoderRegistry
    from pretextlab.training.setup import encoder_card, make_objective, make_views

    reg = EncoderRegistry(cfg.registry, storage_options)
    torch.manual_seed(seed)
    objective = make_objective(cfg)
    card = encoder_card(
        cfg,
        objective,
        make_views(cfg, objective),
        metrics={},
        run={"baseline": "random initialisation, no pretraining", "seed": seed},
    )
    card = card.model_copy(update={"objective": "random-init", "objective_config": {}})
    want = _baseline_identity(card)
    for ref in reversed(reg.versions(cfg.name)):
        if _baseline_identity(ref.card) == want:
            return ref
    return reg.register(objective.encoder(), card, cfg.name)


def _trained_encoder(cfg: Any, storage_options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """Pretrain the cell (resuming its run if it has checkpoints), or find the encoder of a finished run."""
    from pretextlab.jobs.pretrain import read_run_record, run_pretrain
    from pretextlab.registry import EncoderRegistry
    from pretextlab.storage import fs as sfs

    record = read_run_record(sfs.join(cfg.storage, cfg.name), storage_options)
    if record and record.get("status") == "complete":
        return EncoderRegistry(cfg.registry, storage_options).resolve(record["encoder"]), record.get("metrics", {})
    res = run_pretrain(cfg, storage_options)
    return res.encoder, {k: v for k, v in res.metrics.items() if isinstance(v, (int, float))}


def run_cell(
    cell: dict[str, Any],
    study_uri: str,
    evaluate: dict[str, Any],
    test_store: str | None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain (or build the baseline), register, evaluate; the cell record is written last, atomically."""
    from pretextlab.core.config import deep_merge
    from pretextlab.evaluate import EvaluateConfig, evaluate_encoder
    from pretextlab.registry import EncoderRegistry
    from pretextlab.storage import fs as sfs
    from pretextlab.training.config import PretrainConfig

    done = read_cell(study_uri, cell["id"], storage_options)
    if done and done.get("status") == "complete":
        return done
    t0 = time.perf_counter()
    record: dict[str, Any] = {
        **{k: cell[k] for k in ("id", "dataset", "arm", "objective", "seed")},
        "status": "running",
    }
    try:
        cfg = PretrainConfig.model_validate(cell["pretrain"])
        train: dict[str, Any] = {}
        if cell["arm"] == "random-init":
            ref = _baseline_encoder(cfg, cell["seed"], storage_options)
        else:
            ref, train = _trained_encoder(cfg, storage_options)
        ev_cfg = EvaluateConfig.model_validate(
            {**evaluate, "modality": cfg.modality, "keep_predictions": True, "seed": 0}
        )
        store = cfg.data.sources[0].uri

        def evaluated(ref: Any) -> dict[str, Any]:
            folder = EncoderRegistry(cfg.registry, storage_options).local_folder(ref)
            if test_store is None:
                return evaluate_encoder(folder, store, ev_cfg)
            return evaluate_encoder(folder, store, ev_cfg, test_dest=test_store)

        result = evaluated(ref)
        readouts: dict[str, Any] = {}
        for pool in (cell.get("readouts") or [])[1:]:  # the baseline read as other arms read theirs
            other = PretrainConfig.model_validate(
                deep_merge(cell["pretrain"], {"objective": {"backbone": {"global_pool": pool}}})
            )
            pooled = _baseline_encoder(other, cell["seed"], storage_options)
            readouts[pool] = {"encoder": pooled.id, "evaluation": evaluated(pooled)}
        if readouts:
            record["readouts"] = readouts
        # cost: the larger of the rank-0 Train worker's peak RSS and this (evaluating) process's, in MiB
        evaluating = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record.update(
            status="complete",
            encoder=ref.id,
            train=train,
            evaluation=result,
            wall_s=round(time.perf_counter() - t0, 1),
            peak_rss_mib=round(max(float(train.get("peak_rss_mib") or 0.0), evaluating), 1),
        )
    except Exception as exc:  # reported in the study, the other cells go on
        cause = getattr(exc, "__cause__", None) or exc
        line = " ".join(str(cause).split())[:500] or type(cause).__name__
        record.update(
            status="failed",
            error=f"{type(cause).__name__}: {line}",
            traceback=traceback.format_exc()[-4000:],
            wall_s=round(time.perf_counter() - t0, 1),
        )
    _write_json(sfs.join(study_uri, CELLS_DIR, f"{cell['id']}.json"), record, storage_options)
    return record


class CellRunner:
    """A process that runs cells one after another (one per concurrent slot beyond the study's own).

    It holds ``CELL_RUNNER_CPU`` (the Train workers and Ray Data tasks its cells start hold the CPUs
    the cell is counted for); it evaluates once its cell's training has released them, so it uses as
    many torch threads as the cell was counted for."""

    def __init__(self, threads: int) -> None:
        import torch

        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
        torch.set_num_threads(threads)

    def run(self, cell: dict[str, Any], *args: Any) -> str:
        return str(run_cell(cell, *args)["status"])


# -- the study ------------------------------------------------------------------------------------------
@dataclass
class StudyResult:
    uri: str
    records: list[dict[str, Any]]
    verdicts: dict[str, Any]
    files: dict[str, str]
    seconds: float

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") != "complete"]


def _concurrency(plan: StudyPlan) -> int:
    import ray

    from pretextlab.training.config import PretrainConfig

    if plan.cfg.max_concurrent:
        return plan.cfg.max_concurrent
    t = PretrainConfig.model_validate(plan.cells[-1].pretrain).train
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cell_cpus(t)))


def _cell_dict(c: Any) -> dict[str, Any]:
    return {k: getattr(c, k) for k in ("id", "dataset", "arm", "objective", "seed", "pretrain", "readouts")}


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "__cause__", None) or exc
    return f"{type(cause).__name__}: {' '.join(str(cause).split())[:500] or type(cause).__name__}"


def run_cells(plan: StudyPlan) -> list[dict[str, Any]]:
    """Run the unfinished cells, ``_concurrency(plan)`` at once; returns every cell's record.

    The study's own process runs cells one after another, as a user's script of the cells' jobs would
    (it already holds torch and the models: no process start, no imports); each further concurrent
    slot is a :class:`CellRunner` actor. Slots take the next unfinished cell in plan order. The cells'
    pretraining runs on Ray Train either way (its own worker processes); a cell that fails is recorded
    with its reason (``run_cell``), and a runner that dies takes only its cell down (a new one replaces it).
    """
    import threading

    import ray
    from ray.exceptions import RayActorError

    so = plan.storage_options
    todo = [_cell_dict(c) for c in plan.cells if (read_cell(plan.uri, c.id, so) or {}).get("status") != "complete"]
    lost: dict[str, str] = {}  # cells whose runner died before writing a record: why
    if todo:
        tests = {d.name: d.test_store for d in plan.cfg.datasets}
        slots = min(_concurrency(plan), len(todo))
        lock = threading.Lock()

        def next_cell() -> dict[str, Any] | None:
            with lock:
                return todo.pop(0) if todo else None

        def args(cell: dict[str, Any]) -> tuple[Any, ...]:
            return (cell, plan.uri, plan.cfg.evaluate, tests.get(cell["dataset"]), so)

        from pretextlab.training.config import PretrainConfig

        threads = max(1, int(cell_cpus(PretrainConfig.model_validate(todo[-1]["pretrain"]).train)))
        runner: Any = ray.remote(num_cpus=CELL_RUNNER_CPU)(CellRunner)  # an ActorClass (mypy sees the class)

        def actor_slot() -> None:
            actor = runner.remote(threads)
            while (cell := next_cell()) is not None:
                try:
                    ray.get(actor.run.remote(*args(cell)))
                except Exception as exc:  # the runner died (or the record could not be written)
                    lost[cell["id"]] = _one_line(exc)
                    if isinstance(exc, RayActorError):
                        actor = runner.remote(threads)
            ray.kill(actor)

        workers = [threading.Thread(target=actor_slot, daemon=True) for _ in range(slots - 1)]
        for w in workers:
            w.start()
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
        import torch

        before = torch.get_num_threads()
        if slots > 1:  # beside other cells: the threads this cell is counted for
            torch.set_num_threads(threads)
        try:
            while (cell := next_cell()) is not None:
                try:
                    run_cell(*args(cell))
                except Exception as exc:  # its record could not be written: reported, the others go on
                    lost[cell["id"]] = _one_line(exc)
        finally:
            torch.set_num_threads(before)
        for w in workers:
            w.join()
    records = []
    for c in plan.cells:
        rec = read_cell(plan.uri, c.id, so)
        records.append(
            rec
            or {
                "id": c.id,
                "dataset": c.dataset,
                "arm": c.arm,
                "objective": c.objective,
                "seed": c.seed,
                "status": "failed",
                "error": lost.get(c.id, "the cell did not finish (no record)"),
            }
        )
    return records


def read_curves(plan: StudyPlan) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Loss and RankMe over steps of every trained cell, from its run's TensorBoard files (local runs)."""
    from pretextlab.storage import fs as sfs

    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if sfs.is_remote(plan.uri):
        return out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for c in plan.cells:
        tb = sfs.join(plan.uri, "runs", c.id, "tensorboard")
        if c.baseline or not os.path.isdir(tb):
            continue
        acc = EventAccumulator(tb)
        acc.Reload()
        tags = set(acc.Tags().get("scalars", []))
        out[c.id] = {
            tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in ("loss", "train_rankme") if tag in tags
        }
    return out


def feature_map_grids(plan: StudyPlan, records: list[dict[str, Any]], n_images: int = 4) -> dict[str, str]:
    """Per dataset, a fixed seeded panel of test images x every finished arm of the first seed."""
    import numpy as np

    from pretextlab.evaluate.dataset import load_eval_set
    from pretextlab.evaluate.splits import make_split
    from pretextlab.modalities import get_modality
    from pretextlab.models.encoder_io import load_encoder
    from pretextlab.registry import EncoderRegistry
    from pretextlab.study.maps import arm_maps, grid_figure
    from pretextlab.study.report import png_base64

    reg = EncoderRegistry(plan.cfg.registry, plan.storage_options)
    seed = plan.cfg.seeds[0]
    grids = {}
    for ds in plan.cfg.datasets:
        done = [r for r in records if r["dataset"] == ds.name and r["seed"] == seed and r.get("status") == "complete"]
        if not done:
            continue
        encoders = {r["arm"]: load_encoder(reg.local_folder(reg.resolve(r["encoder"]))) for r in done}
        card = next(iter(encoders.values()))[1]
        data = load_eval_set(
            ds.store, ds.label_column, 1, card.img_size, seed=0, size=card.img_size, modality=ds.modality
        )
        split = make_split(data.labels, data.groups, data.splits, seed=0)
        pick = np.random.default_rng(0).permutation(split.test)[:n_images]
        images = data.images[np.sort(pick)]
        maps = {arm: arm_maps(model, c, images) for arm, (model, c) in encoders.items()}
        grids[ds.name] = png_base64(grid_figure(images, maps, get_modality(ds.modality).display.grayscale))
    return grids


def write_report(plan: StudyPlan, records: list[dict[str, Any]], seconds: float) -> StudyResult:
    from pretextlab.storage import fs as sfs
    from pretextlab.storage.catalog import write_table
    from pretextlab.study.folder import read_reviews
    from pretextlab.study.report import html_report, markdown, results_json
    from pretextlab.study.results import results_table, summarise

    so = plan.storage_options
    reviews = read_reviews(plan.uri, so)  # clinician reviews linked to the study (pretextlab review report)
    table = results_table(records)
    verdicts = summarise(records, n_boot=int(plan.cfg.evaluate.get("n_bootstrap", 2000)))
    n_ok = sum(r.get("status") == "complete" for r in records)
    meta = {
        "name": plan.cfg.name,
        "uri": plan.uri,
        "command": plan.command,
        "config": plan.cfg.model_dump(mode="json"),
        "git_commit": plan.data.get("git_commit"),
        "seconds": round(seconds, 1),
        "data": {
            f"{d}: {s['uri']}": s.get("catalog_sha256")
            for d, info in plan.data.get("datasets", {}).items()
            for s in info.get("sources", [])
        },
        "summary": f"{n_ok} of {len(records)} cells finished; {len(plan.cfg.datasets)} dataset(s), "
        f"{len(plan.cfg.arms)} arm(s) + random init, seeds {plan.cfg.seeds}, {plan.cfg.steps} steps each",
    }
    files = {name: sfs.join(plan.uri, name) for name in ("report.md", "report.html", "results.json", "results.parquet")}
    sfs.atomic_write_bytes(files["report.md"], markdown(meta, table, verdicts, reviews).encode(), so)
    html = html_report(meta, table, verdicts, read_curves(plan), feature_map_grids(plan, records), reviews=reviews)
    sfs.atomic_write_bytes(files["report.html"], html.encode(), so)
    sfs.atomic_write_bytes(files["results.json"], results_json(meta, table, verdicts, reviews).encode(), so)
    write_table(files["results.parquet"], table.drop(columns=["error"]).assign(error=table["error"].astype(str)), so)
    return StudyResult(plan.uri, records, verdicts, files, seconds)


def choose_winners(plan: StudyPlan, result: StudyResult) -> list[str]:
    """Mark each modality's winner chosen:<modality>; a modality whose datasets disagree, or tie, gets none."""
    from pretextlab.registry import EncoderRegistry
    from pretextlab.study.results import is_baseline

    lines = []
    by_modality: dict[str, set[str | None]] = {}
    for ds in plan.cfg.datasets:
        by_modality.setdefault(ds.modality, set()).add(result.verdicts[ds.name].winner)
    reg = EncoderRegistry(plan.cfg.registry, plan.storage_options)
    for modality, winners in by_modality.items():
        if len(winners) != 1 or None in winners or any(is_baseline(w) for w in winners):
            lines.append(f"chosen:{modality}: not marked (no single winner across its datasets)")
            continue
        (arm,) = winners
        rec = next(
            r
            for r in result.records
            if r["arm"] == arm
            and r.get("status") == "complete"
            and plan.cfg.datasets[[d.modality for d in plan.cfg.datasets].index(modality)].name == r["dataset"]
        )
        reg.choose(
            reg.resolve(rec["encoder"]), modality, {"by": "study", "study": plan.cfg.name, "uri": plan.uri, "arm": arm}
        )
        lines.append(f"chosen:{modality} -> {rec['encoder']} ({arm})")
    return lines


def run_study(plan: StudyPlan) -> StudyResult:
    t0 = time.perf_counter()
    _write_json(
        f"{plan.uri}/{STUDY_FILE}",
        {"name": plan.cfg.name, "fingerprint": plan.fingerprint, "status": "running", "command": plan.command},
        plan.storage_options,
    )
    records = run_cells(plan)
    result = write_report(plan, records, time.perf_counter() - t0)
    _write_json(
        f"{plan.uri}/{STUDY_FILE}",
        {
            "name": plan.cfg.name,
            "fingerprint": plan.fingerprint,
            "status": "complete" if not result.failed else "incomplete",
            "command": plan.command,
            "report": result.files["report.html"],
        },
        plan.storage_options,
    )
    return result


def rerender_report(plan: StudyPlan) -> StudyResult:
    """The report again from the cells' records (every cell must have one) and the linked reviews: no Ray."""
    from pretextlab.storage import fs as sfs
    from pretextlab.study.folder import read_json

    records = [read_cell(plan.uri, c.id, plan.storage_options) for c in plan.cells]
    missing = [c.id for c, r in zip(plan.cells, records, strict=True) if r is None]
    if missing:
        raise UserError(
            f"{plan.uri}: {len(missing)} cell(s) have not run ({', '.join(missing[:3])}"
            f"{'...' if len(missing) > 3 else ''}); run the study first (without --report)"
        )
    previous = read_json(sfs.join(plan.uri, "results.json"), plan.storage_options) or {}
    seconds = float((previous.get("study") or {}).get("seconds") or 0.0)
    previous_command = (previous.get("study") or {}).get("command")
    plan.command = previous_command or plan.command
    return write_report(plan, [r for r in records if r is not None], seconds)


def render_verdicts(result: StudyResult) -> str:
    lines = [v.sentence for v in result.verdicts.values()]
    for r in result.failed:
        lines.append(f"failed cell {r['id']}: {r.get('error')}")
    lines.append(f"report: {result.files['report.html']}  (also report.md, results.parquet, results.json)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pretextlab.cluster import init_ray
    from pretextlab.study import load_study

    cfg = load_study(args.config, args.overrides)
    plan = plan_study(cfg, args.config)
    plan.command = " ".join(shlex.quote(a) for a in ["pretextlab", "study", args.config, *args.overrides])
    if args.report:
        result = rerender_report(plan)
        print(render_verdicts(result))
        return 1 if result.failed else 0
    init_ray(args.address, num_cpus=args.num_cpus)
    previous = read_study(plan.uri, plan.storage_options)
    done = sum((read_cell(plan.uri, c.id, plan.storage_options) or {}).get("status") == "complete" for c in plan.cells)
    print(
        f"study {cfg.name}: {len(plan.cells)} cells ({done} already finished) -> {plan.uri}"
        + (" (resuming)" if previous else ""),
        flush=True,
    )
    result = run_study(plan)
    print(render_verdicts(result))
    if args.choose:
        print("\n".join(choose_winners(plan, result)))
    return 1 if result.failed else 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.study"))
