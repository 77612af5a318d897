"""The on-disk layout of a pretextlab store (documented in docs/storage.md).

DEST/
  catalog.parquet            one row per item (rebuilt from the items, written atomically)
  labels.parquet             the last labels table attached (re-applied on every rebuild)
  items/<item_id>.zarr/      one Zarr v3 group per item; OME-Zarr 0.5 for slides and cine loops
    zarr.json                group attributes: "ome" (multiscales) and "pretextlab" (item card);
                             the card's status becomes "complete" in the very last write
    0/ 1/ ...                pyramid levels (c, y, x) for slides; (t, c, y, x) for cine loops
    tissue_mask/             uint8 (y, x) at a coarse level, for slides
    <split>/images, labels   for stacks of labelled images (NPZ)
"""

from __future__ import annotations

import json
from typing import Any, TypeGuard

from pretextlab.storage import fs as sfs
from pretextlab.storage.fs import join

LAYOUT_VERSION = 1
ITEMS_DIR = "items"
CATALOG_FILE = "catalog.parquet"
LABELS_FILE = "labels.parquet"
CARD_KEY = "pretextlab"
STATUS_WRITING = "writing"
STATUS_COMPLETE = "complete"


def parse_card(zarr_json: bytes) -> dict[str, Any] | None:
    """The pretextlab card inside an item's ``zarr.json`` bytes, or None when absent or unreadable."""
    try:
        card = json.loads(zarr_json).get("attributes", {}).get(CARD_KEY)
    except (ValueError, AttributeError):
        return None
    return card if isinstance(card, dict) else None


def is_complete(card: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """True only for a card whose last write (status complete) happened."""
    return card is not None and card.get("status") == STATUS_COMPLETE


def item_relpath(item_id: str) -> str:
    return f"{ITEMS_DIR}/{item_id}.zarr"


def item_url(dest: str, item_id: str) -> str:
    return join(dest, item_relpath(item_id))


def ngff_multiscales(
    name: str,
    axes: str,
    level_paths: list[str],
    downsamples: list[float],
    spatial_um: float | None,
    time_s: float | None = None,
) -> dict[str, Any]:
    """OME-NGFF 0.5 ``multiscales`` metadata for axes ``"cyx"`` or ``"tcyx"``."""
    axis_defs = {
        "t": {"name": "t", "type": "time", **({"unit": "second"} if time_s else {})},
        "c": {"name": "c", "type": "channel"},
        "y": {"name": "y", "type": "space", **({"unit": "micrometer"} if spatial_um else {})},
        "x": {"name": "x", "type": "space", **({"unit": "micrometer"} if spatial_um else {})},
    }
    datasets = []
    for path, ds in zip(level_paths, downsamples, strict=True):
        scale = []
        for ax in axes:
            if ax == "t":
                scale.append(time_s or 1.0)
            elif ax == "c":
                scale.append(1.0)
            else:
                scale.append((spatial_um or 1.0) * ds)
        datasets.append({"path": path, "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    return {
        "version": "0.5",
        "multiscales": [{"name": name, "axes": [axis_defs[a] for a in axes], "datasets": datasets}],
    }


def read_card(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The pretextlab card of the item at ``url``, or None when absent or unreadable."""
    try:
        return parse_card(sfs.read_bytes(sfs.join(url, "zarr.json"), storage_options))
    except FileNotFoundError:
        return None
