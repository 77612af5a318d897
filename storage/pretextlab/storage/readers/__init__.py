"""Source readers behind a registry, as timm's ``create_model``: ``open_source(files, reader=...)``.

Each reader sniffs a file (magic bytes, suffix, DICOM header) and opens it as a
:class:`~pretextlab.storage.readers.base.SlideSource`, ``CineSource`` or ``StackSource``.
"""

from __future__ import annotations

# Importing the modules registers the readers.
from pretextlab.storage.readers import dicom_image, dicom_wsi, image, npz, tiff, video  # noqa: F401
from pretextlab.storage.readers.base import (
    CineSource,
    ReaderError,
    SlideSource,
    Source,
    SourceInfo,
    StackSource,
)
from pretextlab.storage.readers.registry import (
    READERS,
    Reader,
    get_reader,
    list_readers,
    register_reader,
    sniff,
)

__all__ = [
    "READERS",
    "CineSource",
    "Reader",
    "ReaderError",
    "SlideSource",
    "Source",
    "SourceInfo",
    "StackSource",
    "get_reader",
    "list_readers",
    "register_reader",
    "sniff",
]
