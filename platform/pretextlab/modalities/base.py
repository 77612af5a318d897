"""What a modality is to pretextlab: one :class:`Modality` record in one registry.

Everything that differs between histopathology, ultrasound, radiographs, ... lives in the record:
the channels the encoder sees, the intensity model, the view set, the working-resolution unit, how
readers store and infer it, how evaluation samples it, the noise model the recommender profiles, and
how reports display it. Code elsewhere reads the record and never branches on a modality's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator

from pretextlab.core.registry import Registry

if TYPE_CHECKING:  # the views (and torch) load on first use: ingest and catalog tools never need them
    from pretextlab.views.registry import Views, ViewSet


@dataclass(frozen=True)
class ReaderDefaults:
    """How ingest treats sources of this modality."""

    #: DICOM ``Modality`` tags that mean this modality (e.g. ("US",)); used when ingest is not told.
    dicom_modalities: tuple[str, ...] = ()
    #: source formats (``image``, ``slide``, ``dicom``, ``video``) read as this modality when nothing else
    #: says; exactly one registered modality may claim each format.
    default_for: tuple[str, ...] = ()
    #: how a single 2-D image is stored: a one-level ``slide`` (patch sampling) or a one-frame ``cine``
    still: Literal["slide", "cine"] = "cine"
    #: keep one channel when a colour source carries grey pixels (video, RGB-encoded stills)
    grayscale: bool = False


@dataclass(frozen=True)
class Display:
    """How reports, feature-map grids and the review app render images of this modality."""

    grayscale: bool = False
    #: Matplotlib colormap for the image itself (grayscale modalities: "gray")
    cmap: str | None = None


@dataclass(frozen=True)
class Modality:
    """One imaging modality: the single source of truth the rest of pretextlab reads."""

    name: str
    description: str
    #: channels the views emit and the encoder takes
    channels: int
    #: how pixel values relate to the physics, in a phrase (reports and the recommender cite it)
    intensity: str
    #: the augmentation set (config model + single-view function): a ViewSet, or where to find one,
    #: ``"package.module:NAME"``, imported on first use (:meth:`views`) so that reading the registry
    #: (ingest, catalogs) does not import torch
    view_set: ViewSet | str
    #: what a training or evaluation sample is: slide ``patches`` or cine ``frames``
    sampling: Literal["patches", "frames"]
    #: unit of the working resolution: µm/px for slides, mm/px for frames
    resolution_unit: Literal["um", "mm"]
    #: name of the noise model the recommender profiles: ``stain`` | ``speckle`` | ``quantum``
    noise: str
    reader: ReaderDefaults = field(default_factory=ReaderDefaults)
    display: Display = field(default_factory=Display)

    def __post_init__(self) -> None:
        if not isinstance(self.view_set, str):
            self._check(self.view_set)

    def _check(self, view_set: ViewSet) -> ViewSet:
        if view_set.channels != self.channels:
            raise ValueError(
                f"modality {self.name}: view set {view_set.name!r} emits "
                f"{view_set.channels} channel(s), the modality says {self.channels}"
            )
        return view_set

    def views(self) -> ViewSet:
        """The modality's :class:`~pretextlab.views.registry.ViewSet` (imported here when named by path)."""
        if isinstance(self.view_set, str):
            return self._check(_load_view_set(self.view_set))
        return self.view_set

    def create_views(self, recipe: str, **overrides: Any) -> Views:
        """This modality's views for ``recipe`` (see :func:`pretextlab.views.make_views`)."""
        from pretextlab.views.registry import make_views

        return make_views(self.views(), recipe, modality=self.name, **overrides)


@cache
def _load_view_set(path: str) -> ViewSet:
    module, _, name = path.partition(":")
    view_set: ViewSet = getattr(importlib.import_module(module), name)
    return view_set


MODALITIES: Registry[Modality] = Registry("modality")


def register_modality(modality: Modality) -> Modality:
    """Add ``modality`` to the registry (refuses duplicates and a second claim on a default format)."""
    for fmt in modality.reader.default_for:
        for other in MODALITIES.values():
            if fmt in other.reader.default_for:
                raise ValueError(f"modality {modality.name}: format {fmt!r} already defaults to {other.name}")
    return MODALITIES.register(modality.name, modality)


def get_modality(name: str) -> Modality:
    """The registered modality ``name``; UnknownName listing the known ones otherwise."""
    return MODALITIES.get(name)


def list_modalities() -> list[str]:
    return MODALITIES.names()


def create_views(modality: str, recipe: str, **overrides: Any) -> Views:
    """The views of ``modality`` for ``recipe``, like timm's ``create_model``: ``create_views("ultrasound",
    "pair", size=64)``. Unknown names and invalid fields raise ValueError naming them."""
    return get_modality(modality).create_views(recipe, **overrides)


def check_modality(name: str) -> str:
    """``name`` if registered, else ValueError listing the known modalities (pydantic field errors)."""
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; known: {', '.join(MODALITIES.names())}")
    return name


#: a pydantic field type for modality names, validated against the registry: ``modality: ModalityName``
ModalityName = Annotated[str, AfterValidator(check_modality)]


def modality_for_source(fmt: str, dicom_modality: str | None = None) -> tuple[str, str | None]:
    """The modality a source is read as when ingest is not told: (name, warning or None).

    A DICOM ``Modality`` tag that a modality claims wins; otherwise the modality that claims the format.
    """
    tag = (dicom_modality or "").upper()
    if tag:
        for m in MODALITIES.values():
            if tag in m.reader.dicom_modalities:
                return m.name, None
    for m in MODALITIES.values():
        if fmt in m.reader.default_for:
            warning = f"DICOM modality {tag} read as {m.name}" if tag else None
            return m.name, warning
    raise ValueError(f"no registered modality reads {fmt!r} sources by default; pass --modality")


def list_views() -> list[tuple[str, str]]:
    """Every (modality, recipe) pair :func:`create_views` accepts."""
    from pretextlab.views.registry import RECIPES

    return [(m, r) for m in MODALITIES.names() for r in RECIPES.names()]
