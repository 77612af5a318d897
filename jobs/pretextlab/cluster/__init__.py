"""Connect to Ray: the cluster in ``RAY_ADDRESS`` (a Ray job, KubeRay) or a local one started here."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray


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
    ray.init(**params)
