"""What a reader hands the writer: a slide pyramid, a cine loop, or a stack of labelled images.

Pixel arrays are channel-last (``Y, X, C`` / ``T, Y, X, C``) with C = 1 for grayscale; slide levels
are lazy dask arrays so a slide is never whole in memory; cine frames come as an iterator of batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

#: a registered modality name (pretextlab.modalities); readers never branch on it, they read its record
Modality = str


class ReaderError(Exception):
    """The source cannot be read; the message is one line that says why."""


@dataclass
class SourceInfo:
    """Facts about where the pixels came from, kept in the item's metadata."""

    reader: str
    modality: Modality
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    patient_id: str | None = None
    study_id: str | None = None
    series_id: str | None = None
    #: Called by the writer when it is done with the source (open file handles).
    closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for fn in self.closers:
            fn()
        self.closers.clear()


@dataclass
class SlideSource:
    """A 2-D image pyramid. ``levels[0]`` is full resolution; each level is (Y, X, C), lazy."""

    levels: list[Any]  # dask arrays
    info: SourceInfo
    mpp: float | None = None  # micrometres per pixel at level 0
    objective_power: float | None = None
    downsamples: list[float] | None = None  # per level, relative to level 0
    #: per level, a faster way to read a band of rows than slicing the dask array (or None):
    #: ``(y0, y1, pool) -> (rows, X, C)`` (pretextlab.storage.bands.RowReader)
    row_readers: list[Any] | None = None
    kind: ClassVar[str] = "slide"


@dataclass
class CineSource:
    """Frames (T, Y, X, C), delivered in batches so long loops stream through memory."""

    shape: tuple[int, int, int, int]
    dtype: np.dtype
    batches: Callable[[], Iterator[np.ndarray]]
    info: SourceInfo
    frame_time_ms: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    kind: ClassVar[str] = "cine"


@dataclass
class StackSource:
    """Labelled images in named splits (MedMNIST NPZ): split -> (images (N, Y, X, C), labels (N, K))."""

    splits: dict[str, tuple[np.ndarray, np.ndarray | None]]
    info: SourceInfo
    kind: ClassVar[str] = "stack"


Source = SlideSource | CineSource | StackSource


def single_frame_cine(image: np.ndarray, info: SourceInfo, **kw: Any) -> CineSource:
    """A still image as a cine loop of one frame (ultrasound stills, plain images)."""
    frame = channel_last(image)[None]
    return CineSource(shape=frame.shape, dtype=frame.dtype, batches=lambda: iter([frame]), info=info, **kw)


def channel_last(arr: np.ndarray) -> np.ndarray:
    """Give a 2-D image an explicit channel axis: (Y, X) -> (Y, X, 1)."""
    if arr.ndim == 2:
        return arr[..., None]
    return arr
