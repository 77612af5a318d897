"""Training-state checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint folder holds ``objective.safetensors`` (student, EMA teacher/target, heads, buffers such
as DINO's centre), ``optimizer.pt`` (AdamW moments; loaded with ``weights_only=True``), one
``rng-<rank>.json`` per worker (torch, CUDA, numpy and Python RNG states) and ``state.json`` (step,
epoch, metrics) written last. LR, weight decay and EMA momentum are functions of the step, so
restoring the step restores them.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

OBJECTIVE = "objective.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    # the legacy global RandomState is always MT19937, whose state is a tuple (a dict only for other bit generators)
    assert isinstance(np_state, tuple), type(np_state)
    return {
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def save_rng(folder: str | Path, rank: int) -> None:
    _atomic_json(Path(folder) / f"rng-{rank}.json", rng_state())


def save_training_state(
    folder: str | Path,
    objective: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    epoch: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the run state of rank 0 into ``folder`` (state.json last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(objective, str(folder / OBJECTIVE))
    torch.save(optimizer.state_dict(), folder / OPTIMIZER)
    _atomic_json(folder / STATE, {"step": step, "epoch": epoch, **(extra or {})})


def read_state(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def load_training_state(
    folder: str | Path,
    objective: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    rank: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Restore objective (strict), optimizer and this rank's RNG; returns state.json."""
    folder = Path(folder)
    state = read_state(folder)
    if state is None:
        raise FileNotFoundError(f"{folder}: no {STATE}: not a complete checkpoint")
    missing, unexpected = load_model(objective, str(folder / OBJECTIVE), strict=True, device=str(device))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER, map_location=device, weights_only=True))
    rng = folder / f"rng-{rank}.json"
    if rng.is_file():
        set_rng_state(json.loads(rng.read_text()))
    return state
