"""Storage: ingest slides and cine loops into Zarr v3 stores (local or object storage) and read them back.

Public API::

    from pretextlab.storage import open_item, read_catalog
    item = open_item("data/zarr", "cmu-1-small-region")
    patch = item.read_region(level=0, x=1024, y=512, width=224, height=224)

    # training streams (Ray Data: pretextlab.storage.datasource.read_stream / map_views)
    plan = plan_stream(StreamSpec(sources=["data/zarr"], kind="patches"))
"""

from pretextlab.storage.catalog import read_catalog, rebuild_catalog
from pretextlab.storage.discovery import discover
from pretextlab.storage.item import Item, ItemNotFound, open_item
from pretextlab.storage.options import ZarrOptions
from pretextlab.storage.stream import ClipSpec, SourceSpec, StreamPlan, StreamSpec, plan_stream
from pretextlab.storage.writer import ItemPlan, ItemResult, write_item

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
