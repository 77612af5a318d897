"""Storage: ingest slides and cine loops into Zarr v3 stores (local or object storage) and read them back.

Public API::

    from pretextlab.storage import open_item, read_catalog
    item = open_item("data/zarr", "cmu-1-small-region")
    patch = item.read_region(level=0, x=1024, y=512, width=224, height=224)

    # training streams (Ray Data: pretextlab.storage.datasource.read_stream / map_views)
    plan = plan_stream(StreamSpec(sources=["data/zarr"], kind="patches"))
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module. Imported on first use (PEP 562), so importing a light submodule such as
#: ``pretextlab.storage.stream`` (the training config does) never pulls in the writer, dask or zarr.
_EXPORTS = {
    "read_catalog": "catalog",
    "rebuild_catalog": "catalog",
    "discover": "discovery",
    "Item": "item",
    "ItemNotFound": "item",
    "open_item": "item",
    "ZarrOptions": "options",
    "ClipSpec": "stream",
    "SourceSpec": "stream",
    "StreamPlan": "stream",
    "StreamSpec": "stream",
    "plan_stream": "stream",
    "ItemPlan": "writer",
    "ItemResult": "writer",
    "write_item": "writer",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "ClipSpec",
    "Item",
    "ItemNotFound",
    "ItemPlan",
    "ItemResult",
    "SourceSpec",
    "StreamPlan",
    "StreamSpec",
    "ZarrOptions",
    "discover",
    "open_item",
    "plan_stream",
    "read_catalog",
    "rebuild_catalog",
    "write_item",
]
