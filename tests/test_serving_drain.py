"""The drain's parts without Ray: the coordinator's bookkeeping (live vs dead replicas) and the gate's
answers. The whole drain under load, through `pretextlab serve` and SIGTERM, is
tests/test_serving.py::test_sigterm_drains_in_flight_requests_and_exits_zero."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pretextlab.serving import drain as drain_mod
from pretextlab.serving.drain import DrainCoordinator, DrainGate


def test_coordinator_waits_for_live_replicas_only(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(drain_mod.time, "monotonic", lambda: now[0])
    c = DrainCoordinator()
    assert c.heartbeat("a") is False and c.heartbeat("b") is False
    c.heartbeat("dead")
    now[0] += drain_mod.STALE_S + 0.1  # "dead" stops beating (killed, replaced); a and b go on
    c.heartbeat("a")
    c.heartbeat("b")
    c.drain()
    assert c.heartbeat("a") is True  # a replica learns the drain from its next heartbeat
    assert c.pending() == ["a", "b"]  # the dead replica is not waited for
    c.drained("a")
    assert c.pending() == ["b"]
    now[0] += 1.0
    c.heartbeat("b")  # still finishing its requests: beats on, stays pending
    assert c.pending() == ["b"]
    c.drained("b")
    assert c.pending() == [] and c.counts() == (3, 2)


def _app(gate: DrainGate) -> FastAPI:
    app = FastAPI()
    app.middleware("http")(gate)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/work")
    async def work() -> dict:
        return {"in_flight": gate.in_flight}

    return app


def test_gate_counts_in_flight_and_refuses_new_work_once_draining():
    gate = DrainGate()
    app = _app(gate)
    with TestClient(app) as client:
        r = client.get("/work")
        assert r.status_code == 200 and r.json() == {"in_flight": 1}  # the request itself, counted
        assert gate.in_flight == 0
        gate.draining = True
        r = client.get("/work")
        assert r.status_code == 503
        assert r.json()["error"] == "shutting_down" and "retry" in r.json()["detail"]
        assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
        assert client.get("/healthz").status_code == 200  # liveness holds while draining
        assert gate.in_flight == 0


@pytest.mark.parametrize("coordinator", [None, "pretextlab-drain:nowhere"])
def test_gate_without_a_coordinator_only_counts(coordinator):
    """`serve deploy` / RayService: no coordinator actor; the gate serves and never drains by itself."""
    import ray

    ray_before = ray.is_initialized()  # another test of this process may have started Ray
    gate = DrainGate()
    gate.watch(coordinator)  # outside an event loop: starts nothing here
    assert gate._task is None
    app = _app(gate)
    with TestClient(app) as client:
        assert [client.get("/work").status_code for _ in range(3)] == [200, 200, 200]
    assert gate.draining is False
    assert ray.is_initialized() == ray_before  # the gate never starts Ray by looking for its coordinator
