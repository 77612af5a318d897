"""Graceful drain for ``pretextlab serve``: on SIGTERM or Ctrl-C, stop taking work, finish what is in
flight, then shut Serve down.

Why: ``serve.shutdown()`` kills the HTTP proxies in the same control-loop tick that starts stopping the
replicas, so a request in flight when the service stops is cut (a connection reset), not finished.
Kubernetes, systemd and ``docker stop`` all send SIGTERM and expect the process to drain within a grace
period. So the CLI drains first:

1. ``DrainCoordinator`` (a small Ray actor the CLI owns) is told to drain.
2. Every ingress replica holds a ``DrainGate``: an HTTP middleware that counts requests in flight and a
   heartbeat task (every ``HEARTBEAT_S``) that registers the replica with the coordinator and learns the
   drain. From then on the gate answers new requests ``503 shutting_down`` with ``Retry-After`` and
   ``Connection: close`` (and ``/readyz`` fails, so a load balancer stops sending), lets the requests it
   already took finish, and reports ``drained``.
3. The CLI waits until every live replica reported (a replica whose heartbeat stopped is dead and not
   waited for), at most ``--drain-timeout`` seconds, then calls ``serve.shutdown()``.

A Serve app deployed without the CLI (``serve deploy``, a RayService) has no coordinator; its gate only
counts. Ray Serve's own graceful replica shutdown (``graceful_shutdown_timeout_s``) applies there.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import ray
from starlette.requests import Request
from starlette.responses import Response

from pretextlab.serving.errors import error_response

log = logging.getLogger("ray.serve")

NAMESPACE = "pretextlab"
HEARTBEAT_S = 0.5  # how often a replica checks in; also the longest a replica takes to see the drain
STALE_S = 4 * HEARTBEAT_S  # a replica silent this long is gone (killed, restarted) and not waited for
RETRY_AFTER_S = 1


def coordinator_name(app_name: str) -> str:
    """The coordinator actor's name for one Serve application."""
    return f"pretextlab-drain:{app_name}"


class DrainCoordinator:
    """Knows the live ingress replicas (by heartbeat), whether a drain began and which replicas finished."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._drained: set[str] = set()
        self._draining = False

    def heartbeat(self, replica: str) -> bool:
        """Record that ``replica`` is alive; True once the service is draining."""
        self._seen[replica] = time.monotonic()
        return self._draining

    def drained(self, replica: str) -> None:
        self._drained.add(replica)

    def drain(self) -> None:
        self._draining = True

    def pending(self) -> list[str]:
        """Live replicas that have not reported drained (a replica seen within ``STALE_S``)."""
        now = time.monotonic()
        return sorted(r for r, t in self._seen.items() if r not in self._drained and now - t < STALE_S)

    def counts(self) -> tuple[int, int]:
        """(replicas ever seen, replicas drained)."""
        return len(self._seen), len(self._drained)


@dataclass(frozen=True)
class DrainResult:
    drained: int
    pending: int
    seconds: float


def start_coordinator(app_name: str) -> ray.actor.ActorHandle:
    """Create (or reuse) the coordinator for ``app_name``; owned by the calling driver, gone with it."""
    actor: Any = ray.remote(DrainCoordinator)  # an ActorClass (mypy sees the class)
    return actor.options(name=coordinator_name(app_name), namespace=NAMESPACE, get_if_exists=True, num_cpus=0).remote()


def drain(coordinator: ray.actor.ActorHandle, timeout_s: float) -> DrainResult:
    """Start the drain and wait until every live ingress replica finished its requests, or ``timeout_s``."""
    start = time.monotonic()
    ray.get(coordinator.drain.remote())
    time.sleep(HEARTBEAT_S)  # every live replica heartbeats once and sees the drain
    pending: list[str] = ray.get(coordinator.pending.remote())
    while pending and time.monotonic() - start < timeout_s:
        time.sleep(0.05)
        pending = ray.get(coordinator.pending.remote())
    _, drained = ray.get(coordinator.counts.remote())
    return DrainResult(drained=drained, pending=len(pending), seconds=time.monotonic() - start)


class DrainGate:
    """One per ingress replica: counts requests in flight and, once draining, refuses new ones."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False
        self._task: asyncio.Task[None] | None = None
        self._coordinator: str | None = None
        self._replica = uuid.uuid4().hex[:12]

    def watch(self, coordinator: str | None) -> None:
        """Heartbeat to the named coordinator (from the replica's event loop; a no-op without one)."""
        self._coordinator = coordinator
        if coordinator and self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # started later, from the first request
                return
            self._task = loop.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        if not ray.is_initialized():  # not in a Ray worker (a test app): there is no coordinator to reach
            return
        try:
            actor = await asyncio.to_thread(ray.get_actor, str(self._coordinator), namespace=NAMESPACE)
        except ValueError:  # not started by `pretextlab serve`: Serve's own shutdown applies
            return
        last = 0.0
        try:
            while True:
                if time.monotonic() - last >= HEARTBEAT_S:  # keeps beating while draining: still alive
                    last = time.monotonic()
                    if await actor.heartbeat.remote(self._replica) and not self.draining:
                        self.draining = True
                        log.info("draining: refusing new requests, %d in flight", self.in_flight)
                if self.draining and not self.in_flight:
                    await actor.drained.remote(self._replica)
                    return
                await asyncio.sleep(0.02 if self.draining else HEARTBEAT_S)
        except ray.exceptions.RayActorError:  # the CLI (and its coordinator) is gone
            return

    async def __call__(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """The HTTP middleware."""
        if self._task is None and self._coordinator:
            self.watch(self._coordinator)
        if self.draining and request.url.path != "/healthz":
            return error_response(
                503,
                "shutting_down",
                "the service is stopping; retry shortly (another replica or the restarted service)",
                {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
            )
        self.in_flight += 1
        try:
            return await call_next(request)
        finally:
            self.in_flight -= 1
