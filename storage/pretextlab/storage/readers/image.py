"""PNG / JPEG / BMP / WebP images through Pillow. RGBA drops alpha; palette becomes RGB.

Histopathology images become a one-level slide (patch sampling works the same), ultrasound images a
cine loop of one frame.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from PIL import Image

from pretextlab.modalities import get_modality, modality_for_source
from pretextlab.storage.readers.base import (
    Modality,
    ReaderError,
    SlideSource,
    Source,
    SourceInfo,
    channel_last,
    single_frame_cine,
)
from pretextlab.storage.readers.registry import Reader, register_reader

Image.MAX_IMAGE_PIXELS = 1 << 30  # big tiles are fine; Pillow's default guards against bombs at 89 MP

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"RIFF")


def load_image(path: str) -> np.ndarray:
    """Pixels as (Y, X, C): L/I;16 stay one channel, palette/RGBA/CMYK become RGB."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("L", "I;16", "I;16B", "I;16L"):
            arr = np.asarray(im)
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("="))
        elif im.mode == "RGB":
            arr = np.asarray(im)
        elif im.mode in ("LA",):
            arr = np.asarray(im.convert("L"))
        else:
            arr = np.asarray(im.convert("RGB"))
    return channel_last(np.ascontiguousarray(arr))


@register_reader
class ImageReader(Reader):
    name = "image"
    description = "PNG / JPEG / BMP / WebP images (Pillow)"
    suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    priority = 50

    @classmethod
    def sniff(cls, head: bytes, name: str, header: Any = None) -> bool:
        if head.startswith(b"RIFF"):
            return head[8:12] == b"WEBP"
        return head.startswith(_MAGIC)

    def open(self, paths: list[str], modality: Modality | None) -> Source:
        (path,) = paths
        try:
            with Image.open(path) as im:
                fmt, mode, size = im.format, im.mode, im.size
            arr = load_image(path)
        except Exception as exc:
            raise ReaderError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
        info = SourceInfo(
            reader=self.name,
            modality=modality or modality_for_source("image")[0],
            metadata={"format": (fmt or "image").lower(), "mode": mode, "size": list(size)},
        )
        if get_modality(info.modality).reader.still == "cine":
            return single_frame_cine(arr, info)
        info.warnings.append("source has no pixel size: µm/px unknown (set it before sampling by µm/px)")
        return SlideSource(levels=[da.from_array(arr, chunks=(1024, 1024, arr.shape[2]))], info=info)
