"""Connect to Ray: the cluster in ``RAY_ADDRESS`` (a Ray job, KubeRay) or a local one started here.

Shared by jobs and serving (which never import each other). After ``ray.init`` the process's SIGTERM
handler is put back to "behave like Ctrl-C": Ray's driver handler exits abruptly (seen: exit 134 with a
native stack dump), while systemd, ``docker stop`` and Kubernetes all stop a process with SIGTERM.

A local cluster is started on a GCS port chosen here, and every task and actor of the run is told its
address (``RAY_ADDRESS`` in the environment its processes inherit). Without that, Ray code that looks the cluster
up by itself from inside a worker (Ray Train's placement-group cleaner calls the State API with no
address) scans the host for GCS processes and fails with "Found multiple active Ray instances" as soon
as a second run, or anyone's ``ray start``, is up on the same machine.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import closing
from typing import Any

import ray

from pretextlab.cluster.console import configure_ray_data_progress
from pretextlab.core.cli import sigterm_as_interrupt


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False, **kwargs: Any) -> None:
    """``ray.init`` once per process; quiet unless asked, no dashboard for local one-off runs."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    params: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True, **kwargs}
    if address:
        params["address"] = address
    else:
        params["include_dashboard"] = dashboard
        if num_cpus is not None:
            params["num_cpus"] = num_cpus
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    configure_ray_data_progress()  # Ray Data's bars only on a TTY or with --verbose
    if address:
        ray.init(**params)
    else:
        start_local_ray(**params)
    sigterm_as_interrupt()  # Ray's driver handler replaced: SIGTERM stops a command as Ctrl-C does


#: Idle worker processes a local cluster keeps per CPU (Ray keeps as many as it has free CPUs, and kills
#: the rest after 1 s idle). The stream's read tasks and the views' tasks take half a CPU each, so two
#: per CPU run at once; with Ray's default, every burst of them started new worker processes (imports,
#: and on object storage a first S3 client: 1.5-2 s each on 2 cores) that were killed again when the
#: stream waited. Measured on the loopback S3 server (benchmarks/pipeline.py --parts a; docs/storage.md,
#: "Keeping the read workers"): 3 epochs of a 4-slide stream 0.61x -> 0.97x the plain loop.
IDLE_WORKERS_PER_CPU = 2


def worker_pool_config(num_cpus: float | None) -> dict[str, Any]:
    """The ``_system_config`` of a local cluster's worker pool: keep IDLE_WORKERS_PER_CPU idle workers per
    CPU. On a Ray cluster started elsewhere (KubeRay) the same is ``RAY_num_workers_soft_limit`` in the
    pods' environment (k8s/base/kustomization.yaml), which wins here too when it is set."""
    if "RAY_num_workers_soft_limit" in os.environ:
        return {}
    if num_cpus is None:  # the CPUs this process may use (no sched_getaffinity on macOS)
        num_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"num_workers_soft_limit": max(1, int(IDLE_WORKERS_PER_CPU * num_cpus))}


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def start_local_ray(**params: Any) -> str:
    """Start a local cluster whose tasks and actors all know its address; returns ``host:port`` of its GCS.

    The GCS port is chosen before the start (``RAY_GCS_SERVER_PORT``, read by Ray's node startup) and
    ``RAY_ADDRESS`` names it while Ray starts its processes, which pass their environment on to every
    worker. Both are set only for the duration of the call: this process's environment is left as it
    was, so subprocesses started from here (another CLI run, a test's child) still start their own
    cluster. (A job-level ``runtime_env`` would do the same but costs ~1 s: prestarted workers go unused.)
    The worker pool keeps idle workers for the fractional-CPU tasks (:func:`worker_pool_config`) unless
    ``_system_config`` says otherwise.
    """
    system = {**worker_pool_config(params.get("num_cpus")), **(params.pop("_system_config", None) or {})}
    port = _free_port()
    gcs = f"{ray.util.get_node_ip_address()}:{port}"
    saved = {k: os.environ.get(k) for k in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")}
    os.environ.update(RAY_GCS_SERVER_PORT=str(port), RAY_ADDRESS=gcs)
    try:
        ray.init(address="local", _system_config=system, **params)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return gcs
