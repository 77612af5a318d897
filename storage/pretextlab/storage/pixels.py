"""One bit-depth policy: stores keep the source's depth, everything that feeds an encoder sees 8 bits.

Ingest writes pixels as the source holds them (uint8, or uint16 for 12/16-bit DICOM and 16-bit PNG /
TIFF), so nothing is lost at rest. Encoders take uint8, so the training stream, evaluation and serving
bring deeper pixels to 8 bits by one rule, the one serving applies to uploaded DICOM: keep the top 8
of the bits the source stores (DICOM ``BitsStored``, recorded on the item's card; otherwise the
dtype's width), i.e. ``value >> (bits - 8)``, clipped to 0-255. A linear rescale keeps the ordering
and relative contrast of every pixel and needs no per-image statistics, so a frame streams the same
whatever batch it lands in. Float pixels are refused (no store holds them today).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def stored_bits(card: Mapping[str, Any] | None, dtype: Any) -> int:
    """Bits the source stores: DICOM BitsStored from the item card's source metadata, else the dtype's width."""
    meta = ((card or {}).get("source") or {}).get("metadata") or {}
    bits = meta.get("BitsStored")
    width = np.dtype(dtype).itemsize * 8
    try:
        return max(1, min(int(bits), width)) if bits is not None else width
    except (TypeError, ValueError):
        return width


def to_uint8(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Integer pixels with ``bits`` significant bits -> uint8 (their top 8 bits); uint8 passes through."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind not in "ui":
        raise ValueError(f"pixel data of dtype {pixels.dtype} (integer pixels expected)")
    shift = max(0, bits - 8)
    return np.clip(pixels.astype(np.int64) >> shift, 0, 255).astype(np.uint8)
