"""Encoder files: ``model.safetensors`` + ``card.json`` in one folder. Never pickle.

The card says how to rebuild the model with timm alone (``timm.create_model(card.timm_name,
**card.timm_kwargs)``), how to preprocess (channels, size, normalisation), which objective and data
produced it, and the sha256 of the weights so a swapped or corrupted file is caught on load.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import timm
import torch
import torch.nn.functional as F
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
    resolution: dict[str, Any] | None = Field(
        None,
        description=(
            "the working resolution of training frames (resize or spacing_mm, fit, size, eval_fit); None: native"
        ),
    )
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
    card = card.model_copy(
        update={
            "weights_sha256": _sha256(folder / WEIGHTS),
            "created": card.created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
    )
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


# --- preprocessing: exactly what training fed the encoder, from its card ---------------------------

#: ITU-R BT.601 luma weights, the same ones Pillow uses for ``convert("L")``.
LUMA = (0.299, 0.587, 0.114)


class CardLike(Protocol):
    """What preprocessing reads from a card (read-only: frozen dataclasses and pydantic models fit)."""

    @property
    def img_size(self) -> int: ...
    @property
    def in_chans(self) -> int: ...
    @property
    def mean(self) -> list[float]: ...
    @property
    def std(self) -> list[float]: ...


def _channel_stats(values: Sequence[float], channels: int, name: str) -> torch.Tensor:
    vals = list(values)
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(f"card {name} has {len(vals)} values for {channels} input channels")
    return torch.tensor(vals, dtype=torch.float32).view(1, channels, 1, 1)


def preprocess(images: np.ndarray | torch.Tensor, card: CardLike) -> torch.Tensor:
    """uint8 (N, H, W, C) or (N, H, W) images -> float (N, card.in_chans, S, S), normalised as the card says.

    RGB becomes luminance for a 1-channel encoder and gray is copied to 3 channels for an RGB one;
    images are resized (bilinear, antialiased) to ``card.img_size`` only when their size differs.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).to(torch.float32)
    channels, want = x.shape[1], int(card.in_chans)
    if channels == 4:  # RGBA: drop alpha
        x, channels = x[:, :3], 3
    if channels != want:
        if channels == 3 and want == 1:
            weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * weights).sum(dim=1, keepdim=True)
        elif channels == 1 and want == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"cannot convert {channels}-channel images for a {want}-channel encoder")
    size = int(card.img_size)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x / 255.0
    mean = _channel_stats(card.mean, want, "mean").to(x.device)
    std = _channel_stats(card.std, want, "std").to(x.device)
    return ((x - mean) / std).contiguous()
