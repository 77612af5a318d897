"""Feature bags of the batch embedding job: one per item, in Zarr and in the HDF5 layout TRIDENT/CLAM load.

Layout under DEST (a local folder or an s3:// prefix)::

    h5_files/<item_id>.h5      features (N, D) float32, coords (N, 2) int64 (x, y at level 0; cine: frame, 0),
                               attrs patch_size, level, downsample, patch_size_level0, kind, encoder
    zarr/<item_id>.zarr/       the same arrays (+ frames for cine loops) and attrs, as a Zarr v3 group
    done/<item_id>.json        the completion marker, written last: an item without it is not embedded
    embed.json                 the last run's summary

Every file is written atomically (local: temp + rename; object storage: one PUT per object, the marker
last), so a killed run leaves nothing that looks complete; the next run redoes exactly those items.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pretextlab.core.errors import UserError
from pretextlab.storage import fs as sfs

ITEM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
H5_DIR, ZARR_DIR, DONE_DIR, SUMMARY = "h5_files", "zarr", "done", "embed.json"


@dataclass
class Bag:
    """The embeddings of one item and where each row came from."""

    item_id: str
    kind: str  # slide | cine | image (an image stack's split: a row per image)
    features: np.ndarray  # (N, D) float32
    coords: np.ndarray  # (N, 2) int64: level-0 (x, y) for slides, (frame, 0) for cine loops, (index, 0) images
    attrs: dict[str, Any] = field(default_factory=dict)  # patch_size, level, downsample, ...


class BagStore:
    """Write bags and completion markers under ``dest``; list what is complete."""

    def __init__(self, dest: str, storage_options: dict[str, Any] | None = None):
        self.dest = sfs.normalize(dest)
        self.storage_options = storage_options
        self.remote = sfs.is_remote(self.dest)

    def marker_url(self, item_id: str) -> str:
        return sfs.join(self.dest, DONE_DIR, f"{item_id}.json")

    def markers(self) -> dict[str, dict[str, Any]]:
        """item_id -> marker of every complete item."""
        fs, path = sfs.get_fs(sfs.join(self.dest, DONE_DIR), self.storage_options)
        try:
            fs.invalidate_cache(path)
            names = [n for n in fs.ls(path, detail=False) if n.endswith(".json")]
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            base = name.rsplit("/", 1)[-1]
            if base.startswith("."):
                continue  # a temp file of an interrupted marker write
            try:
                mark = json.loads(fs.cat_file(name))
            except (ValueError, OSError):
                continue  # unreadable marker: the item is redone
            out[mark.get("item_id", base[:-5])] = mark
        return out

    def write(self, bag: Bag, marker: dict[str, Any]) -> dict[str, Any]:
        """Zarr, then HDF5, then the marker (each atomic). Returns the marker written."""
        if not ITEM_ID_RE.match(bag.item_id) or ".." in bag.item_id:
            raise UserError(f"item id {bag.item_id!r} cannot name a file; re-ingest with a plain id")
        features = np.ascontiguousarray(bag.features, dtype=np.float32)
        coords = np.ascontiguousarray(bag.coords, dtype=np.int64).reshape(-1, 2)
        attrs = {"item_id": bag.item_id, "kind": bag.kind, **bag.attrs}
        self._write_zarr(bag.item_id, features, coords, attrs)
        self._write_h5(bag.item_id, features, coords, attrs)
        marker = {
            "item_id": bag.item_id,
            "kind": bag.kind,
            "count": int(len(features)),
            "dim": int(features.shape[1]) if features.ndim == 2 else 0,
            "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
            "h5": f"{H5_DIR}/{bag.item_id}.h5",
            "zarr": f"{ZARR_DIR}/{bag.item_id}.zarr",
            **marker,
        }
        sfs.atomic_write_bytes(
            self.marker_url(bag.item_id), json.dumps(marker, indent=1).encode(), self.storage_options
        )
        return marker

    def write_summary(self, summary: dict[str, Any]) -> None:
        sfs.atomic_write_bytes(
            sfs.join(self.dest, SUMMARY), json.dumps(summary, indent=1).encode(), self.storage_options
        )

    # -- formats ---------------------------------------------------------------------------------------
    def _write_h5(self, item_id: str, features: np.ndarray, coords: np.ndarray, attrs: dict[str, Any]) -> None:
        import h5py

        url = sfs.join(self.dest, H5_DIR, f"{item_id}.h5")
        local_dir = tempfile.mkdtemp(prefix="pretextlab-h5-") if self.remote else str(Path(url).parent)
        os.makedirs(local_dir, exist_ok=True)
        tmp = os.path.join(local_dir, f".{item_id}.h5.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("features", data=features)
                dset = f.create_dataset("coords", data=coords)
                for k, v in attrs.items():
                    if v is not None:
                        value = json.dumps(v) if isinstance(v, (dict, list)) else v
                        dset.attrs[k] = value
                        f.attrs[k] = value
            if self.remote:
                fs, path = sfs.get_fs(url, self.storage_options)
                fs.put_file(tmp, path)
            else:
                os.replace(tmp, url)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if self.remote:
                shutil.rmtree(local_dir, ignore_errors=True)

    def _write_zarr(self, item_id: str, features: np.ndarray, coords: np.ndarray, attrs: dict[str, Any]) -> None:
        import zarr

        url = sfs.join(self.dest, ZARR_DIR, f"{item_id}.zarr")
        target = url
        if not self.remote:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            target = str(Path(url).parent / f".{item_id}.zarr.{uuid.uuid4().hex[:8]}.tmp")
        else:
            sfs.remove_tree(url, self.storage_options)  # a partial group from a killed run
        try:
            group = zarr.open_group(sfs.zarr_store(target, storage_options=self.storage_options), mode="w")
            rows = max(1, min(len(features), 4096))
            group.create_array("features", data=features, chunks=(rows, max(1, features.shape[1])))
            group.create_array("coords", data=coords, chunks=(rows, 2))
            if attrs.get("kind") == "cine":
                group.create_array("frames", data=coords[:, 0].copy(), chunks=(rows,))
            group.attrs.update({k: v for k, v in attrs.items() if v is not None})
            if not self.remote:
                if Path(url).exists():
                    shutil.rmtree(url)
                os.replace(target, url)
        finally:
            if not self.remote and Path(target).exists():
                shutil.rmtree(target, ignore_errors=True)


def read_h5(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(features, coords, attrs) of an HDF5 feature bag, the way TRIDENT/CLAM users load one."""
    import h5py

    with h5py.File(path, "r") as f:
        return f["features"][:], f["coords"][:], dict(f["coords"].attrs)
