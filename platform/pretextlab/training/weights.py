"""Weights a run starts from, resolved for an objective built from a :class:`PretrainConfig`.

- ``objective.init``: ``registry:<address>`` (a pretextlab encoder in the run's registry),
  ``timm:<model name>`` (timm's pretrained weights, local only: ``$PRETEXTLAB_WEIGHTS_DIR`` or the
  Hugging Face cache) or a path to a ``.safetensors`` file. The weights go into the backbone and its
  EMA twins (:meth:`Objective.backbone_twins`), fitted by :mod:`pretextlab.models.init_weights`.
- ``objective.teacher`` (``salt``, ``cine_salt``): a registry address or an encoder folder, loaded
  sha256-checked and handed to the objective with ``set_teacher``.

Objectives may not import the registry (layer rule), so this module, in the training layer, does the
resolving. What was used (address and sha256) is recorded in ``objective.provenance`` and from there
on the exported encoder's card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pretextlab.core.config import ConfigError
from pretextlab.core.errors import UserError
from pretextlab.models.encoder_io import CARD, load_encoder
from pretextlab.models.init_weights import load_backbone_state, read_safetensors, sha256_file, timm_weights_file
from pretextlab.objectives.base import Objective


def _registry_encoder(address: str, registry: str, field: str) -> tuple[torch.nn.Module, str, str | None]:
    """(model, pinned id name:version, weights sha256) of a registry address."""
    from pretextlab.registry import EncoderRegistry

    try:
        model, card, ref = EncoderRegistry(registry).load(address)
    except UserError as exc:
        raise ConfigError(f"{field}: {address}: {exc}") from None
    return model, ref.id, card.weights_sha256


def resolve_init(spec: str, registry: str) -> tuple[dict[str, torch.Tensor], str, str | None]:
    """(state dict, what it was, sha256) for an ``objective.init`` value."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "registry":
        model, ref_id, sha = _registry_encoder(rest, registry, "objective.init")
        return model.state_dict(), f"registry:{ref_id}", sha
    if sep and kind == "timm":
        if not rest:
            raise ConfigError("objective.init: timm: needs a model name, e.g. timm:vit_small_patch16_224.augreg_in21k")
        path = timm_weights_file(rest)
        return read_safetensors(path), f"timm:{rest}", sha256_file(path)
    path = Path(spec).expanduser()
    if path.suffix != ".safetensors":
        raise ConfigError(
            f"objective.init: {spec!r}: expected registry:<address>, timm:<model name> or a .safetensors file"
        )
    return read_safetensors(path), str(path.resolve()), sha256_file(path)


def resolve_teacher(spec: str, registry: str) -> tuple[torch.nn.Module, str, str | None]:
    """(frozen model, address, weights sha256) of ``objective.teacher``: an encoder folder or a registry
    address."""
    folder = Path(spec).expanduser()
    if (folder / CARD).is_file():
        try:
            model, card = load_encoder(folder)
        except UserError as exc:
            raise ConfigError(f"objective.teacher: {exc}") from None
        return model, str(folder.resolve()), card.weights_sha256
    return _registry_encoder(spec, registry, "objective.teacher")


def apply_weights(objective: Objective, registry: str) -> Objective:
    """Load ``objective.cfg.init`` into the backbone (and twins) and inject the teacher it needs."""
    cfg = objective.cfg
    provenance: dict[str, Any] = {}
    if cfg.init:
        state, source, sha = resolve_init(cfg.init, registry)
        load_backbone_state([objective.backbone, *objective.backbone_twins()], state, source)
        provenance.update(init=source, init_sha256=sha)
    if getattr(objective, "needs_teacher", False):
        spec = getattr(cfg, "teacher", None)
        if not spec:
            raise ConfigError(
                f"objective.teacher: {objective.name} needs a frozen teacher: a registry address "
                "(e.g. us-mae:latest) or an encoder folder"
            )
        teacher, address, sha = resolve_teacher(spec, registry)
        objective.set_teacher(teacher)
        provenance.update(teacher=address, teacher_sha256=sha)
    objective.provenance = provenance
    return objective
