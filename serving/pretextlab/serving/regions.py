"""Region reads for ``POST /v1/embeddings/regions``: only from stores registered with the server, only for
item ids in that store's catalog, only inside the item's bounds.

A request names a store (never a path or URL) and an item id; the id is checked against a pattern (no
``/``, ``\\``, ``..``, scheme) and then against the catalog, so nothing outside the registered stores is
ever opened.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pretextlab.serving.errors import ApiError, invalid, not_found, too_large
from pretextlab.storage import fs as sfs

ITEM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
CATALOG_TTL_S = 30.0
RELOAD_MIN_INTERVAL_S = 2.0


class Patch(BaseModel):
    """A square region of a slide: ``size`` pixels at (x, y) of pyramid ``level``."""

    model_config = ConfigDict(extra="forbid")

    level: int = Field(0, ge=0, le=64)
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    size: int = Field(ge=1)


class RegionsRequest(BaseModel):
    """Which regions of which catalog item to embed, with which model."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="served model name (optional when one model is served)")
    store: str = Field(description="a store registered with the server (see GET /v1/models)")
    item_id: str = Field(description="an item of that store's catalog")
    patches: list[Patch] | None = Field(None, description="slide regions (level, x, y, size)")
    frames: list[int] | None = Field(None, description="frame indices of a cine loop")

    @model_validator(mode="after")
    def _one_kind(self) -> RegionsRequest:
        if (self.patches is None) == (self.frames is None):
            raise ValueError("give exactly one of patches (slides) or frames (cine loops)")
        if not (self.patches or self.frames):
            raise ValueError("patches/frames is empty")
        return self


def check_item_id(item_id: str) -> str:
    """Refuse anything but a plain catalog id: no paths, URLs or ``..``."""
    if not ITEM_ID_RE.match(item_id) or ".." in item_id:
        raise invalid(
            f"item_id {item_id[:80]!r}: not a catalog item id (letters, digits, . _ - only; no paths or URLs)"
        )
    return item_id


class StoreReader:
    """Registered stores -> catalogs (cached, refreshed) and opened items (LRU), for region reads."""

    def __init__(self, stores: dict[str, str], max_open_items: int = 64):
        self.stores = {name: sfs.normalize(uri) for name, uri in stores.items()}
        self._ids: dict[str, tuple[float, set[str]]] = {}
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.max_open_items = max_open_items

    def _catalog_ids(self, store: str, refresh: bool = False) -> set[str]:
        from pretextlab.storage import read_catalog

        now = time.monotonic()
        cached = self._ids.get(store)
        if cached and (now - cached[0] < CATALOG_TTL_S) and not (refresh and now - cached[0] > RELOAD_MIN_INTERVAL_S):
            return cached[1]
        try:
            cat = read_catalog(self.stores[store])
            ids = set(cat.loc[cat["kind"].isin(["slide", "cine"]), "item_id"].astype(str))
        except Exception as exc:  # a store that cannot be read is the server's problem, not the client's
            if cached:
                return cached[1]
            raise ApiError(
                503, "store_unavailable", f"store {store!r}: catalog cannot be read ({type(exc).__name__})"
            ) from None
        self._ids[store] = (now, ids)
        return ids

    def item(self, store: str, item_id: str):
        """The opened item ``item_id`` of the registered ``store`` (404 for anything else)."""
        if store not in self.stores:
            known = ", ".join(sorted(self.stores)) or "none"
            raise not_found(
                "unknown_store", f"store {store[:80]!r} is not registered with this server (registered: {known})"
            )
        check_item_id(item_id)
        if item_id not in self._catalog_ids(store) and item_id not in self._catalog_ids(store, refresh=True):
            raise not_found("unknown_item", f"store {store!r} has no slide or cine item {item_id!r} in its catalog")
        key = (store, item_id)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        from pretextlab.storage import open_item

        try:
            item = open_item(self.stores[store], item_id)
        except Exception as exc:
            raise ApiError(
                503, "store_unavailable", f"store {store!r}: item {item_id!r} cannot be opened ({type(exc).__name__})"
            ) from None
        with self._lock:
            self._items[key] = item
            while len(self._items) > self.max_open_items:
                self._items.popitem(last=False)
        return item

    def read(
        self, req: RegionsRequest, max_images: int, max_region_size: int, max_total_pixels: int
    ) -> tuple[list[np.ndarray], list[dict]]:
        """Validate and read the request's regions -> (uint8 arrays (N, H, W, C) grouped by shape, coords)."""
        count = len(req.patches or req.frames or [])
        if count > max_images:
            raise too_large(f"{count} regions exceeds the limit of {max_images} per request")
        item = self.item(req.store, req.item_id)
        dtype = str(item.card.get("dtype", "uint8"))
        if dtype != "uint8":
            raise invalid(f"item {req.item_id!r} stores {dtype} pixels; only uint8 items can be embedded")
        if req.patches is not None:
            return self._read_patches(item, req.patches, max_region_size, max_total_pixels)
        return self._read_frames(item, req.frames or [], max_total_pixels)

    def _read_patches(self, item, patches: list[Patch], max_size: int, max_total: int):
        if item.kind != "slide":
            raise invalid(f"item {item.item_id!r} is a {item.kind}; ask for frames, not patches")
        total = sum(p.size * p.size for p in patches)
        if total > max_total:
            raise too_large(f"{total} pixels in total exceeds the limit of {max_total} per request")
        for i, p in enumerate(patches):
            if p.size > max_size:
                raise too_large(f"patches[{i}]: size {p.size} exceeds the limit of {max_size}")
            if p.level >= item.num_levels:
                raise invalid(f"patches[{i}]: level {p.level} does not exist (item has {item.num_levels} levels)")
            _, height, width = item.level(p.level).shape
            if p.x + p.size > width or p.y + p.size > height:
                raise invalid(
                    f"patches[{i}]: region x={p.x} y={p.y} size={p.size} lies outside level {p.level} "
                    f"({width}x{height})"
                )
        images = [item.read_region(p.level, p.x, p.y, p.size, p.size)[None] for p in patches]
        coords = [{"level": p.level, "x": p.x, "y": p.y, "size": p.size} for p in patches]
        return images, coords

    def _read_frames(self, item, frames: list[int], max_total: int):
        if item.kind != "cine":
            raise invalid(f"item {item.item_id!r} is a {item.kind}; ask for patches, not frames")
        arr = item.level(0)
        t, _, h, w = arr.shape
        if len(frames) * h * w > max_total:
            raise too_large(f"{len(frames) * h * w} pixels in total exceeds the limit of {max_total} per request")
        for i, f in enumerate(frames):
            if not 0 <= f < t:
                raise invalid(f"frames[{i}]: frame {f} does not exist (item has {t} frames)")
        order = np.asarray(frames, dtype=np.int64)
        uniq, inverse = np.unique(order, return_inverse=True)
        block = np.ascontiguousarray(arr.get_orthogonal_selection((uniq,)).transpose(0, 2, 3, 1))
        return [block[inverse]], [{"frame": int(f)} for f in frames]
