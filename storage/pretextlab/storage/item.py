"""Read an ingested item back: pyramid levels, regions, frames, the tissue mask, stack images.

Pixels come back channel-last (Y, X, C) / (T, Y, X, C), exactly as the source reader produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from pretextlab.core.errors import UserError
from pretextlab.storage import fs as sfs
from pretextlab.storage.layout import is_complete, item_url, read_card


class ItemNotFound(UserError):
    """No complete item of that id in the store."""


@dataclass
class Item:
    """A complete item: its card (metadata) and its Zarr group."""

    item_id: str
    url: str
    card: dict[str, Any]
    group: zarr.Group
    #: arrays opened so far, by path: opening one reads its metadata (a request on object storage), and
    #: a read task asks for the same level once per chunk group
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return self.card["kind"]

    @property
    def modality(self) -> str:
        return self.card["modality"]

    @property
    def mpp(self) -> float | None:
        return self.card.get("mpp")

    @property
    def num_levels(self) -> int:
        return len(self.card.get("levels", []))

    def _array(self, path: str) -> zarr.Array:
        cached = self._arrays.get(path)
        if cached is not None:
            return cached
        node = self.group[path]
        if not isinstance(node, zarr.Array):
            raise UserError(f"item {self.item_id}: {path} is a group, not an array (a damaged item?)")
        return self._arrays.setdefault(path, node)  # atomic: threads that raced share one array

    def level(self, index: int = 0) -> zarr.Array:
        """The raw Zarr array of a level: (C, Y, X) for slides, (T, C, Y, X) for cine loops."""
        return self._array(self.card["levels"][index]["path"])

    def downsample(self, index: int) -> float:
        return float(self.card["levels"][index]["downsample"])

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """A (height, width, C) region of a slide level; x, y in that level's pixels."""
        region = np.asarray(self.level(level)[:, y : y + height, x : x + width])
        return np.ascontiguousarray(region.transpose(1, 2, 0))

    def frames(self, start: int = 0, stop: int | None = None, step: int = 1) -> np.ndarray:
        """Frames [start:stop:step] of a cine loop as (T, Y, X, C)."""
        if self.kind != "cine":
            raise UserError(f"item {self.item_id} is a {self.kind}, not a cine loop")
        return np.ascontiguousarray(np.asarray(self.level(0)[start:stop:step]).transpose(0, 2, 3, 1))

    def to_numpy(self, level: int = 0) -> np.ndarray:
        """A whole level (slides, Y, X, C) or all frames (cine loops, T, Y, X, C). Small items only."""
        if self.kind == "cine":
            return self.frames()
        return np.ascontiguousarray(np.asarray(self.level(level)[:]).transpose(1, 2, 0))

    def tissue_mask(self) -> np.ndarray | None:
        meta = self.card.get("tissue_mask")
        return None if meta is None else np.asarray(self._array(meta["path"])[:])

    def stack_image(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One (Y, X, C) image and its label row from a stack item (NPZ)."""
        image = np.ascontiguousarray(np.asarray(self._array(f"{split}/images")[index]).transpose(1, 2, 0))
        has_labels = f"{split}/labels" in self.group
        labels = np.asarray(self._array(f"{split}/labels")[index]) if has_labels else None
        return image, labels


def open_item(dest: str, item_id: str, storage_options: dict[str, Any] | None = None) -> Item:
    """Open the complete item ``item_id`` of the store at ``dest`` (local path or s3:// prefix)."""
    url = item_url(sfs.normalize(dest), item_id)
    card = read_card(url, storage_options)
    if card is None:
        raise ItemNotFound(f"{dest}: no item {item_id!r}")
    if not is_complete(card):
        raise ItemNotFound(f"{dest}: item {item_id!r} is incomplete (an interrupted ingest); re-run ingest")
    group = zarr.open_group(sfs.zarr_store(url, read_only=True, storage_options=storage_options), mode="r")
    return Item(item_id=item_id, url=url, card=card, group=group)
