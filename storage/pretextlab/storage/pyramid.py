"""Pyramid levels and tissue masks, computed with dask chunk by chunk (never a whole slide in memory)."""

from __future__ import annotations

import dask.array as da
import numpy as np


def downsample2(level: da.Array, chunk: int) -> da.Array:
    """Next pyramid level of a (C, Y, X) array: 2x2 box mean, rounded, same dtype, ``chunk`` chunks."""
    c = level.shape[0]
    src = level.rechunk((c, 2 * chunk, 2 * chunk))
    mean = da.coarsen(np.mean, src, {1: 2, 2: 2}, trim_excess=True)
    out = da.floor(mean + 0.5).astype(level.dtype)
    return out.rechunk((c, chunk, chunk))


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
        signal = level.map_blocks(_saturation, drop_axis=0, dtype=np.uint8)
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
