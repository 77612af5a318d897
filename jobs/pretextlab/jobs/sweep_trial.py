"""One sweep trial on Ray Tune: the pretraining job's Ray Train run with the trial's hyperparameters.

Tune 2.60 cannot tune a ``TorchTrainer`` directly, so each trial is a function trainable that builds
the trainer with ``pretextlab.jobs.pretrain.build_trainer`` and fits it; ``TuneReportCallback`` passes
every metric report of rank 0 to Tune (for ASHA, the searcher and the result files). The Train run
lives inside the trial folder (``<sweep>/trial-<id>/train``: checkpoints and per-step TensorBoard), so a
trial restarted by ``Tuner.restore`` continues from its own latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from ray import tune

from pretextlab.jobs.sweep_report import STATUS_FILE, TrialRow, now_iso, render_table

TRAIN_DIR = "train"


def trial_dirname(trial: Any) -> str:
    """Tune's folder name of a trial: stable across restores (the trial id is kept)."""
    return f"trial-{trial.trial_id}"


def trial_name(trial: Any) -> str:
    return trial.trial_id


def run_trial(
    config: dict[str, Any],
    base: dict[str, Any],
    sweep_uri: str,
    storage_options: dict[str, Any] | None = None,
    encoded: list[str] | tuple[str, ...] = (),
) -> None:
    """The function trainable: pretrain ``base`` with ``config`` (dotted path -> value) applied."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pretextlab.jobs.pretrain import build_trainer, checkpoints, prepare
    from pretextlab.storage import fs as sfs
    from pretextlab.training.config import PretrainConfig
    from pretextlab.training.sweep_config import decode, trial_config

    # the Train controller inherits this (Ray Train propagates RAY_TRAIN_* variables): worker processes
    # importing torch on a busy node can take longer than Train's 60 s default, which then restarts
    # the whole worker group, again and again
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    trial_uri = sfs.join(sweep_uri, f"trial-{tune.get_context().get_trial_id()}")
    cfg = trial_config(PretrainConfig.model_validate(base), decode(config, encoded))
    prep = prepare(cfg, storage_options)
    done = checkpoints(sfs.join(trial_uri, TRAIN_DIR), storage_options)
    start_epoch = prep.cfg.train.epoch_at(done[-1][0] if done else 0, prep.plan.samples_per_epoch)
    if done:
        print(f"[sweep] trial resumes its Train run from step {done[-1][0]}", flush=True)
    trainer = build_trainer(
        prep, name=TRAIN_DIR, storage=trial_uri, callbacks=[TuneReportCallback()], start_epoch=start_epoch
    )
    trainer.fit()


class SweepStatus(tune.Callback):
    """The driver's view of the sweep: ``pretextlab-sweep.json`` in the sweep folder (what
    ``pretextlab sweep status`` reads) and the live table on stdout."""

    def __init__(
        self,
        sweep_uri: str,
        header: dict[str, Any],
        storage_options: dict[str, Any] | None = None,
        print_every: float = 15.0,
        write_every: float = 2.0,
    ):
        self.sweep_uri, self.header, self.storage_options = sweep_uri, header, storage_options
        self.print_every, self.write_every = print_every, write_every
        self.rows: dict[str, dict[str, Any]] = {}
        self._printed = self._written = self._reaped = 0.0
        self._dirty = False
        self._last_table = ""

    # -- Tune hooks --------------------------------------------------------------------------
    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        """Take this driver's settings (print period, dashboard URL) from the status file the driver wrote
        before ``fit``: after ``Tuner.restore`` Tune runs the callback pickled at the sweep's first start."""
        from pretextlab.jobs.sweep_report import read_status

        driver = (read_status(self.sweep_uri, self.storage_options) or {}).get("driver") or {}
        self.print_every = float(driver.get("print_every", self.print_every))
        if driver.get("dashboard") is not None:
            self.header["dashboard"] = driver["dashboard"]
        self.header["driver"] = driver

    def _row(self, trial: Any) -> dict[str, Any]:
        row = self.rows.get(trial.trial_id)
        if row is None:
            row = self.rows[trial.trial_id] = TrialRow(
                id=trial.trial_id,
                dir=trial_dirname(trial),
                config={k: trial.config.get(k) for k in self.header["space"]},
            ).to_dict()
        return row

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["state"] = "RUNNING"
        self._dirty = True

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.on_trial_start(iteration, trials, trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial)
        row["state"] = "RUNNING"
        self._take(row, result)
        self._dirty = True

    def _take(self, row: dict[str, Any], result: dict) -> None:
        """Step and metric from one result (a trial's last one can reach Tune only with its completion)."""
        if not isinstance(result, dict):
            return
        if "step" in result:
            row["step"] = int(result["step"])
        metric = self.header["metric"]
        if isinstance(result.get(metric), (int, float)):
            value = float(result[metric])
            row["metric"], row["metric_step"] = value, row["step"]
            better = max if self.header["mode"] == "max" else min
            row["best"] = value if row.get("best") is None else better(row["best"], value)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        if (getattr(trial, "last_result", None) or {}).get("step", -1) >= (row.get("step") or 0):
            self._take(row, trial.last_result)
        steps = self.header["steps"]
        row["state"] = "STOPPED" if (row.get("step") or 0) < steps else "DONE"
        self._dirty = True
        self._flush(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row["state"] = "ERROR"
        row["error"] = _first_error_line(trial)
        self._dirty = True
        self._flush(force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._reaped >= REAP_EVERY_S:
            reap_orphan_placement_groups()
            self._reaped = time.monotonic()
        new = [t for t in trials if t.trial_id not in self.rows]
        for trial in new:
            self._row(trial)
        self._dirty = self._dirty or bool(new)
        self._flush()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:  # Tune's final word on each trial (also those restored as finished)
            row = self._row(trial)
            if (getattr(trial, "last_result", None) or {}).get("step", -1) > (row.get("step") or 0):
                self._take(row, trial.last_result)
            if trial.status == "TERMINATED" and (
                row["state"] not in ("DONE", "STOPPED")
                or (row["state"] == "STOPPED" and (row.get("step") or 0) >= self.header["steps"])
            ):
                row["state"] = "STOPPED" if (row.get("step") or 0) < self.header["steps"] else "DONE"
            elif trial.status == "ERROR" and row["state"] != "ERROR":
                row["state"], row["error"] = "ERROR", _first_error_line(trial)
        self._dirty = True
        self._flush(force=True)

    # -- state kept across Tuner.restore ------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rows = dict(state.get("rows") or {})
        for row in self.rows.values():
            if row["state"] in ("RUNNING",):
                row["state"] = "PENDING"  # restarted by this restore

    # -- output --------------------------------------------------------------------------------
    def snapshot(self, status: str = "running") -> dict[str, Any]:
        return {**self.header, "status": status, "updated": now_iso(), "trials": list(self.rows.values())}

    def _flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._dirty and (force or now - self._written >= self.write_every):
            write_status(self.sweep_uri, self.snapshot(), self.storage_options)
            self._written, self._dirty = now, False
        if force or now - self._printed >= self.print_every:
            table = render_table(self.snapshot())
            if table != self._last_table:
                print(table, flush=True)
                self._last_table = table
            self._printed = now


REAP_EVERY_S = 5.0
log = logging.getLogger(__name__)
_reap_warned = False


def reap_orphan_placement_groups(wait_s: float = 0.0) -> int:
    """Remove this job's placement groups whose creating actor is dead; with ``wait_s``, keep at it
    until no actor-created placement group of this job is left (or the time is up).

    When ASHA stops a trial, Tune kills the trial's actor and with it the Ray Train controller, but a
    placement group lives as long as the job unless its creator removes it. Train's own cleaner watches
    the controller through the state API, which needs the dashboard and a single Ray instance per host;
    where it cannot, the stopped trial's worker CPUs stay reserved and later trials wait for them
    forever. This reads the GCS table directly (Ray 2.60 internals, guarded)."""
    global _reap_warned
    try:
        import ray
        from ray._private.state import state
        from ray.core.generated import gcs_pb2
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        job = bytes.fromhex(ray.get_runtime_context().get_job_id())
        removed, deadline = 0, time.monotonic() + wait_s
        while True:
            live = 0
            for raw in state._connect_and_get_accessor().get_placement_group_table():
                pg = gcs_pb2.PlacementGroupTableData.FromString(raw)  # type: ignore[attr-defined]  # protobuf, no stubs
                creator = pg.creator_actor_id
                if (
                    pg.state == gcs_pb2.PlacementGroupTableData.REMOVED  # type: ignore[attr-defined]  # as above
                    or pg.is_detached
                    or pg.creator_job_id != job
                    or not creator
                    or creator == b"\xff" * len(creator)
                ):
                    continue  # gone, detached, another job's, or made by a driver (Tune's trial groups)
                if pg.creator_actor_dead:
                    remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
                    removed += 1
                else:
                    live += 1
            if not live or time.monotonic() >= deadline:
                return removed
            time.sleep(0.5)
    except Exception as exc:  # internals moved: say so once, the sweep itself goes on
        if not _reap_warned:
            log.warning("could not check for placement groups left by stopped trials: %s", exc)
            _reap_warned = True
        return 0


def _first_error_line(trial: Any) -> str:
    """The last line of the trial's error file (the exception), as Tune saved it."""
    try:
        path = trial.error_file
        if path:
            from pretextlab.storage import fs as sfs

            text = sfs.read_bytes(path).decode(errors="replace") if not path.startswith("/") else open(path).read()
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            return lines[-1][:300] if lines else "error"
    except (OSError, AttributeError, ValueError):
        pass
    return "error (see the trial's error.txt)"


def write_status(sweep_uri: str, status: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    from pretextlab.storage import fs as sfs

    sfs.atomic_write_bytes(
        sfs.join(sweep_uri, STATUS_FILE), json.dumps(status, indent=1, default=str).encode(), storage_options
    )
