"""MP4 / AVI / MKV cine loops through PyAV (FFmpeg). Grayscale streams stay one channel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from pretextlab.modalities import get_modality, modality_for_source
from pretextlab.storage.readers.base import CineSource, Modality, ReaderError, SourceInfo
from pretextlab.storage.readers.registry import Reader, register_reader

BATCH = 16


def _is_gray(pix_fmt: str | None) -> bool:
    return pix_fmt is not None and pix_fmt.startswith(("gray", "y400", "ya"))


def decode_frames(path: str) -> Iterator[np.ndarray]:
    """Every frame of the first video stream as (Y, X, C): 'gray' for gray streams, else 'rgb24'."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        fmt = "gray" if _is_gray(stream.codec_context.pix_fmt) else "rgb24"
        for frame in container.decode(stream):
            arr = frame.to_ndarray(format=fmt)
            yield arr[..., None] if arr.ndim == 2 else arr


@register_reader
class VideoReader(Reader):
    name = "video"
    description = "MP4 / AVI / MKV / MOV video (PyAV)"
    suffixes = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")
    priority = 60

    @classmethod
    def sniff(cls, head: bytes, name: str, header: Any = None) -> bool:
        if head[4:8] == b"ftyp":  # ISO base media (mp4/mov)
            return True
        if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
            return True
        if head[:4] == b"\x1a\x45\xdf\xa3":  # Matroska / WebM
            return True
        return False

    def open(self, paths: list[str], modality: Modality | None) -> CineSource:
        (path,) = paths
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise ReaderError("file has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                meta: dict[str, Any] = {
                    "format": "video",
                    "container": container.format.name,
                    "codec": stream.codec_context.name,
                    "pix_fmt": stream.codec_context.pix_fmt,
                }
            # Count by decoding: container frame counts are often missing or wrong. Note whether
            # every frame is gray (R == G == B): grayscale ultrasound stays one channel.
            n, first, gray = 0, None, True
            for frame in decode_frames(path):
                first = frame if first is None else first
                n += 1
                if gray and frame.shape[2] == 3:
                    gray = bool((frame[..., 0] == frame[..., 1]).all() and (frame[..., 1] == frame[..., 2]).all())
        except ReaderError:
            raise
        except Exception as exc:  # av.error.* (InvalidDataError, ...)
            raise ReaderError(f"cannot decode video: {type(exc).__name__}: {exc}") from None
        if first is None:
            raise ReaderError("video has no frames")
        info = SourceInfo(reader=self.name, modality=modality or modality_for_source("video")[0], metadata=meta)
        keep = 1 if (gray and get_modality(info.modality).reader.grayscale) else first.shape[2]
        meta["channels_kept"] = keep

        def batches() -> Iterator[np.ndarray]:
            buf = []
            for frame in decode_frames(path):
                buf.append(frame[..., :keep])
                if len(buf) == BATCH:
                    yield np.stack(buf)
                    buf = []
            if buf:
                yield np.stack(buf)

        return CineSource(
            shape=(n, first.shape[0], first.shape[1], keep),
            dtype=first.dtype,
            batches=batches,
            info=info,
            frame_time_ms=1000.0 / float(rate) if rate else None,
        )
