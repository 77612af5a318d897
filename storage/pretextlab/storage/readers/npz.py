"""NumPy NPZ archives of labelled images in the MedMNIST layout (``train_images``, ``train_labels``...).

Loaded with ``allow_pickle=False``: an archive can hold arrays only, never code.
"""

from __future__ import annotations

import zipfile
from typing import Any

import numpy as np

from pretextlab.modalities import modality_for_source
from pretextlab.storage.readers.base import Modality, ReaderError, SourceInfo, StackSource
from pretextlab.storage.readers.registry import Reader, register_reader

SPLITS = ("train", "val", "test")


@register_reader
class NpzReader(Reader):
    name = "npz"
    description = "NPZ image arrays with labels, MedMNIST layout (<split>_images, <split>_labels)"
    suffixes = (".npz",)
    priority = 70

    @classmethod
    def sniff(cls, head: bytes, name: str, header: Any = None) -> bool:
        return head.startswith(b"PK\x03\x04") and name.lower().endswith(".npz")

    def open(self, paths: list[str], modality: Modality | None) -> StackSource:
        (path,) = paths
        try:
            archive = np.load(path, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise ReaderError(f"not a readable NPZ archive: {exc}") from None
        with archive:
            keys = set(archive.files)
            splits: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
            names = [s for s in SPLITS if f"{s}_images" in keys]
            if not names and "images" in keys:
                names = [""]
            if not names:
                raise ReaderError(f"NPZ has no '<split>_images' arrays (found: {', '.join(sorted(keys)) or 'none'})")
            for split in names:
                prefix = f"{split}_" if split else ""
                try:
                    images = archive[f"{prefix}images"]
                    labels = archive[f"{prefix}labels"] if f"{prefix}labels" in keys else None
                except ValueError as exc:  # object arrays need pickle: refused
                    raise ReaderError(f"NPZ array {prefix}images cannot be loaded safely: {exc}") from None
                if images.ndim == 3:
                    images = images[..., None]
                if images.ndim != 4:
                    raise ReaderError(f"{prefix}images has shape {images.shape}; expected (N, H, W) or (N, H, W, C)")
                if labels is not None:
                    labels = labels.reshape(len(labels), -1)
                    if len(labels) != len(images):
                        raise ReaderError(f"{prefix}labels has {len(labels)} rows for {len(images)} images")
                splits[split or "all"] = (np.ascontiguousarray(images), labels)
        channels = next(iter(splits.values()))[0].shape[-1]
        info = SourceInfo(
            reader=self.name,
            modality=modality or modality_for_source(f"stack-{3 if channels == 3 else 1}")[0],
            metadata={"format": "npz", "splits": {k: list(v[0].shape) for k, v in splits.items()}},
        )
        return StackSource(splits=splits, info=info)
