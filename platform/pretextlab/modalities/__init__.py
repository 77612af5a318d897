"""Imaging modalities as plug-ins: one file per modality, one registry everything else reads.

``get_modality("ultrasound").channels``, ``create_views("radiograph", "pair")``, and the pydantic field
type ``ModalityName`` that validates config fields against the registry. Every module in this package
is imported (and so registered) when the package is; third-party modalities register through the
``pretextlab.modalities`` entry-point group. Adding one: docs/modalities.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from pretextlab.modalities.base import (
    MODALITIES,
    Display,
    Modality,
    ModalityName,
    ReaderDefaults,
    check_modality,
    create_views,
    get_modality,
    list_modalities,
    list_views,
    modality_for_source,
    register_modality,
)


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    for ep in entry_points(group="pretextlab.modalities"):
        ep.load()


_discover()

__all__ = [
    "MODALITIES",
    "Display",
    "Modality",
    "ModalityName",
    "ReaderDefaults",
    "check_modality",
    "create_views",
    "get_modality",
    "list_modalities",
    "list_views",
    "modality_for_source",
    "register_modality",
]
