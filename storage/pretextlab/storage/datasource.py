"""Ray Data source of slide patches from a Zarr store (local or s3://): one read task per group of
~16 Zarr chunks, each array opened once per task; rows are ``image`` (H, W, C) uint8, ``item_id``,
``level``, ``x``, ``y``, ``label``."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pretextlab.storage import fs as sfs
from pretextlab.storage.item import open_item
from pretextlab.storage.patches import PatchRef, PatchSpec, group_by_chunks, plan_patches


def _read_group(dest: str, group: list[PatchRef], storage_options: dict[str, Any] | None):
    items: dict[str, Any] = {}
    images = []
    for r in group:
        item = items.get(r.item_id) or items.setdefault(r.item_id, open_item(dest, r.item_id, storage_options))
        images.append(item.read_region(r.level, r.x, r.y, r.size, r.size))
    batch = {
        "image": np.stack(images),
        "item_id": np.array([r.item_id for r in group]),
        "level": np.array([r.level for r in group], dtype=np.int32),
        "x": np.array([r.x for r in group], dtype=np.int64),
        "y": np.array([r.y for r in group], dtype=np.int64),
        "label": np.array(["" if r.label is None else str(r.label) for r in group]),
    }
    return [BlockAccessor.batch_to_block(batch)]


class ZarrPatchDatasource(Datasource):
    """Patches planned by :func:`plan_patches`, read in chunk-aligned groups."""

    def __init__(self, dest: str, refs: list[PatchRef], chunk: int = 512, chunks_per_task: int = 16,
                 channels: int = 3, storage_options: dict[str, Any] | None = None):
        self.dest, self.refs, self.chunk = sfs.normalize(dest), refs, chunk
        self.chunks_per_task, self.channels, self.storage_options = chunks_per_task, channels, storage_options

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(r.size * r.size * self.channels for r in self.refs)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        tasks = []
        for group in group_by_chunks(self.refs, self.chunk, self.chunks_per_task):
            meta = BlockMetadata(num_rows=len(group), size_bytes=sum(r.size * r.size * self.channels for r in group),
                                 exec_stats=None, input_files=None)
            tasks.append(ReadTask(lambda g=group: _read_group(self.dest, g, self.storage_options), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def read_patches(dest: str, spec: PatchSpec, storage_options: dict[str, Any] | None = None,
                 chunks_per_task: int = 16) -> ray.data.Dataset:
    """A Ray Dataset of the slide patches of the store at ``dest``."""
    refs = plan_patches(dest, spec, storage_options)
    first = open_item(dest, refs[0].item_id, storage_options) if refs else None
    chunk = int(first.level(0).chunks[-1]) if first else 512
    channels = int(first.level(0).shape[0]) if first else 3
    return ray.data.read_datasource(ZarrPatchDatasource(dest, refs, chunk, chunks_per_task, channels, storage_options))
