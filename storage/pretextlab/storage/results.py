"""What the ingest driver plans (:class:`ItemPlan`) and what each item's task reports (:class:`ItemResult`).

A light module on purpose: a collection shard's Ray task imports it, and must not pay for the slide
writer's imports (dask, every reader: about 1.7 s per fresh worker process).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ingested", "skipped", "failed"]
Modality = str


@dataclass
class ItemPlan:
    """One unit of ingest work, decided by the driver: which files make which item, read how."""

    item_id: str
    sources: list[str]
    reader: str
    fingerprint: str
    modality: Modality | None = None


@dataclass
class ItemResult:
    item_id: str
    status: Status
    source: str
    reason: str | None = None
    seconds: float = 0.0
    source_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def one_line(exc: BaseException) -> str:
    """A one-line reason for an exception: a reader's ReaderError text as is, others with their type."""
    readers = sys.modules.get("pretextlab.storage.readers.base")  # not imported: exc cannot be one
    if readers is not None and isinstance(exc, readers.ReaderError):
        msg = str(exc)
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split())[:500]
