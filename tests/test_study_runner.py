"""The study runner's concurrent slots (`pretextlab.jobs.study.run_cells`): the study's own process runs
cells, each further slot is a CellRunner actor. An actor that dies (here SIGKILLed while it holds a
cell) fails only that cell, with the reason; the other cells complete; re-running the study runs only
the lost cell and leaves the finished ones as they were."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from test_study import ARMS, BACKBONE, EVALUATE, SHARED, _us_store


def _kill_first_cell_runner(done: threading.Event, timeout_s: float = 300) -> int | None:
    """SIGKILL the first CellRunner actor process of this test's Ray cluster while it runs a cell (Ray
    titles an actor's process ``ray::CellRunner.run`` during that method); returns its pid, or None if
    none ran a cell before ``done``. A process killed earlier, in ``ray::CellRunner.__init__``, is one
    Ray restarts (actor creation is retried), so its cell would complete and nothing would be tested."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and not done.is_set():
        for p in psutil.Process().children(recursive=True):
            try:
                if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::CellRunner.run"):
                    p.kill()
                    return p.pid
            except psutil.Error:
                continue
        time.sleep(0.1)
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_dead_cell_runner_fails_only_its_cell_and_a_rerun_finishes_it(ray_session, tmp_path):
    from pretextlab.jobs import study as js
    from pretextlab.study import StudyConfig

    store = _us_store(tmp_path / "raw", tmp_path / "store", 8, 0)
    cfg = StudyConfig.model_validate(
        {
            "name": "runners",
            "datasets": [{"name": "us", "store": str(store), "modality": "ultrasound"}],
            "arms": [ARMS[1], ARMS[2]],  # ijepa, mae (+ random init): 3 cells on 2 slots
            "seeds": [0],
            "steps": 2,
            "backbone": BACKBONE,
            "pretrain": SHARED,
            "evaluate": EVALUATE,
            "storage": str(tmp_path / "studies"),
            "registry": str(tmp_path / "registry"),
            "max_concurrent": 2,
        }
    )
    plan = js.plan_study(cfg)
    out: dict[str, list] = {}
    done = threading.Event()

    def study() -> None:
        try:
            out["records"] = js.run_cells(plan)
        finally:
            done.set()

    runner = threading.Thread(target=study)
    runner.start()
    killed = _kill_first_cell_runner(done)
    runner.join(600)
    assert killed is not None, "no CellRunner actor started: the second slot did not run"
    assert not runner.is_alive()

    records = {r["id"]: r for r in out["records"]}
    assert set(records) == {"us.random-init.s0", "us.ijepa.s0", "us.mae.s0"}
    failed = [r for r in records.values() if r["status"] != "complete"]
    assert len(failed) == 1, records  # only the killed actor's cell
    lost = failed[0]
    assert lost["error"].startswith(("ActorDiedError", "RayActorError")) and "\n" not in lost["error"], lost["error"]
    cells = Path(plan.uri) / "cells"
    assert not (cells / f"{lost['id']}.json").exists()  # no record: a re-run takes it up
    finished = {p.name: p.read_bytes() for p in cells.glob("*.json")}
    assert len(finished) == 2

    again = {r["id"]: r for r in js.run_cells(plan)}
    assert all(r["status"] == "complete" for r in again.values()), again
    for name, raw in finished.items():  # the finished cells were not run again
        assert (cells / name).read_bytes() == raw
