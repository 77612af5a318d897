"""Encoder files: ``model.safetensors`` + ``card.json`` in one folder. Never pickle.

The card says how to rebuild the model with timm alone (``timm.create_model(card.timm_name,
**card.timm_kwargs)``), how to preprocess (channels, size, normalisation), which objective and data
produced it, and the sha256 of the weights so a swapped or corrupted file is caught on load.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pretextlab.core.errors import UserError

WEIGHTS = "model.safetensors"
CARD = "card.json"
FORMAT = "pretextlab.encoder/v1"


class EncoderFileError(UserError):
    """An encoder path that is not a valid pretextlab encoder."""


class EncoderCard(BaseModel):
    """Everything needed to rebuild, preprocess for, and trace an encoder."""

    model_config = ConfigDict(extra="allow")

    format: str = FORMAT
    name: str = "encoder"
    timm_name: str
    timm_kwargs: dict[str, Any]
    embed_dim: int
    img_size: int
    patch_size: int
    in_chans: int
    global_pool: str = "token"
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.5])
    modality: str | None = None
    objective: str | None = None
    objective_config: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict, description="catalog id/uri and checksum")
    metrics: dict[str, Any] = Field(default_factory=dict)
    git_commit: str | None = None
    created: str | None = None
    weights_sha256: str | None = None
    init: str | None = Field(None, description="weights training started from (objective.init, resolved)")
    init_sha256: str | None = None
    teacher: str | None = Field(None, description="frozen teacher of a SALT run: registry id or encoder folder")
    teacher_sha256: str | None = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def save_encoder(model: torch.nn.Module, card: EncoderCard, folder: str | Path) -> Path:
    """Write weights then card (the card last, atomically): a folder with a card is complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(folder / WEIGHTS)
    card = card.model_copy(update={
        "weights_sha256": _sha256(folder / WEIGHTS),
        "created": card.created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })
    tmp_card = folder / f".{CARD}.tmp"
    tmp_card.write_text(card.model_dump_json(indent=1))
    tmp_card.replace(folder / CARD)
    return folder


def read_card(folder: str | Path) -> EncoderCard:
    folder = Path(folder)
    if folder.is_file():
        raise EncoderFileError(f"{folder}: expected an encoder folder ({WEIGHTS} + {CARD}), got a file")
    path = folder / CARD
    if not path.is_file():
        raise EncoderFileError(f"{folder}: not an encoder folder (no {CARD})")
    try:
        return EncoderCard.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise EncoderFileError(f"{path}: not a valid encoder card: {first}") from None


def load_encoder(folder: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, EncoderCard]:
    """Rebuild the timm model from the card and load its safetensors weights, strictly."""
    folder = Path(folder)
    card = read_card(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise EncoderFileError(f"{folder}: {WEIGHTS} missing")
    if card.weights_sha256 and _sha256(weights) != card.weights_sha256:
        raise EncoderFileError(f"{weights}: sha256 does not match its card (weights replaced or corrupted)")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError) as exc:
        raise EncoderFileError(f"{weights}: not a safetensors file ({exc})") from None
    model = timm.create_model(card.timm_name, pretrained=False, **card.timm_kwargs)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]
    if missing or unexpected or shapes:  # compared before load_state_dict, which would raise on shapes
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {expected[k]})")
        raise EncoderFileError(f"{weights}: weights do not match their card ({card.timm_name}): {'; '.join(parts)}")
    model.load_state_dict(state)
    model.eval()
    return model, card
