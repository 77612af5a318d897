"""Connect to Ray: the cluster in ``RAY_ADDRESS`` (a Ray job, KubeRay) or a local one started here.

Shared by jobs and serving (which never import each other). After ``ray.init`` the process's SIGTERM
handler is put back to "behave like Ctrl-C": Ray's driver handler exits abruptly (seen: exit 134 with a
native stack dump), while systemd, ``docker stop`` and Kubernetes all stop a process with SIGTERM.
"""

from __future__ import annotations

import logging
import os
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
    ray.init(**params)
    sigterm_as_interrupt()  # Ray's driver handler replaced: SIGTERM stops a command as Ctrl-C does
