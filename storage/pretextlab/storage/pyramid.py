"""Pyramid levels and tissue masks, computed with dask chunk by chunk (never a whole slide in memory)."""

from __future__ import annotations

import dask.array as da
import numpy as np


def _box2(block: np.ndarray) -> np.ndarray:
    """2x2 box mean of a (C, y, x) block with round-half-up, in integer arithmetic (odd edge trimmed)."""
    c, h, w = block.shape
    b = block[:, : h // 2 * 2, : w // 2 * 2]
    if np.issubdtype(block.dtype, np.integer):
        acc = b[:, 0::2, 0::2].astype(np.uint32) + b[:, 1::2, 0::2] + b[:, 0::2, 1::2] + b[:, 1::2, 1::2]
        return ((acc + 2) // 4).astype(block.dtype)
    return ((b[:, 0::2, 0::2] + b[:, 1::2, 0::2] + b[:, 0::2, 1::2] + b[:, 1::2, 1::2]) / 4).astype(block.dtype)


def downsample2(level: da.Array, chunk: int) -> da.Array:
    """Next pyramid level of a (C, Y, X) array: 2x2 box mean, rounded half up, same dtype, ``chunk`` chunks.

    Input blocks are 2*chunk wide (even) except the last, so trimming an odd edge per block equals
    trimming it once for the whole level.
    """
    c = level.shape[0]
    src = level.rechunk((c, 2 * chunk, 2 * chunk))
    out_chunks = ((c,), tuple(n // 2 for n in src.chunks[1]), tuple(n // 2 for n in src.chunks[2]))
    return src.map_blocks(_box2, chunks=out_chunks, dtype=level.dtype)


def otsu_threshold(hist: np.ndarray) -> int:
    """Otsu's threshold over a 256-bin histogram: the bin maximising between-class variance."""
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    bins = np.arange(len(hist), dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * bins)
    mu_total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_total * w0 / total - m0) ** 2 / (w0 * w1)
    between = np.nan_to_num(between, nan=0.0, posinf=0.0)
    return int(np.argmax(between))


def _saturation(block: np.ndarray) -> np.ndarray:
    """HSV saturation (0-255) of a (C, y, x) RGB block; 0 where the pixel is black."""
    rgb = block[:3].astype(np.float32)
    mx, mn = rgb.max(axis=0), rgb.min(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sat = np.where(mx > 0, (mx - mn) / mx, 0.0)
    return (sat * 255.0 + 0.5).astype(np.uint8)


#: Saturation below this (out of 255) is never tissue: bright, unstained glass stays background
#: even on a blank slide, where Otsu alone would split noise.
MIN_SATURATION = 20


def tissue_mask(level: da.Array) -> tuple[da.Array, int]:
    """Tissue mask of a (C, Y, X) level and the threshold used.

    RGB (bright-field H&E): Otsu on HSV saturation, as CLAM and TIAToolbox do; grayscale: Otsu on
    intensity, tissue darker than the threshold.
    """
    if level.shape[0] >= 3:
        signal = da.map_blocks(_saturation, level, drop_axis=0, dtype=np.uint8)
        hist, _ = da.histogram(signal, bins=256, range=(0, 256))
        thr = max(otsu_threshold(hist.compute()), MIN_SATURATION)
        return (signal > thr).astype(np.uint8), thr
    gray = level[0]
    if gray.dtype != np.uint8:
        top = float(gray.max().compute()) or 1.0
        gray = (gray.astype(np.float32) * (255.0 / top)).astype(np.uint8)
    hist, _ = da.histogram(gray, bins=256, range=(0, 256))
    thr = otsu_threshold(hist.compute())
    return (gray < thr).astype(np.uint8), thr
