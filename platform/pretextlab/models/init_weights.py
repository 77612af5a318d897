"""Starting a backbone from existing weights: read a state dict, fit it to the backbone, load it.

Pure weight handling (no registry, no network). Sources are resolved by
``pretextlab.training.weights``: a pretextlab encoder from the registry, timm's pretrained weights
from the local Hugging Face cache or ``$PRETEXTLAB_WEIGHTS_DIR``, or a local ``.safetensors`` file.

:func:`fit_state` makes the common, well-defined adaptations and refuses everything else:

- classifier heads (``head.*``) that the backbone (``num_classes=0``) does not have are dropped;
- a final ``norm.*`` becomes ``fc_norm.*`` (and back) when the pooling differs (timm moves the last
  norm after the pool for ``global_pool="avg"``);
- RGB patch-embedding filters are summed to one channel for grayscale inputs (timm's
  ``adapt_input_conv``, as ``timm.create_model(..., pretrained=True, in_chans=1)`` does);
- absolute position embeddings are resampled to the backbone's patch grid when the image size
  differs (timm's ``resample_abs_pos_embed``, bicubic).

Any other missing, unexpected or differently shaped tensor is a one-line :class:`ConfigError` that
names them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from pretextlab.core.config import ConfigError
from pretextlab.models.vit import VisionTransformer

#: environment variable naming a folder of pretrained weights (checked before the Hugging Face cache)
WEIGHTS_DIR_ENV = "PRETEXTLAB_WEIGHTS_DIR"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def read_safetensors(path: str | Path, field: str = "objective.init") -> dict[str, torch.Tensor]:
    """The tensors of a local ``.safetensors`` file (never pickle), with a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{field}: {p}: no such file")
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{field}: {p}: not a safetensors file ({str(exc).splitlines()[0]})") from None


def hf_cache_dirs() -> list[Path]:
    """Where Hugging Face keeps downloaded repos: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"])]
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return [home / "hub"]


def _hub_ids(model_name: str) -> list[str]:
    """Hugging Face repo ids that may hold timm's weights for ``model_name`` (with or without a tag)."""
    ids = []
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is not None and cfg.hf_hub_id:
            ids.append(cfg.hf_hub_id.split("@")[0])
    except Exception:  # an unknown name: fall back to timm's naming convention
        pass
    ids.append(f"timm/{model_name}")
    return list(dict.fromkeys(ids))


def _snapshot_file(repo_dir: Path) -> Path | None:
    """``model.safetensors`` of a cached repo: the snapshot ``refs/main`` names, else any snapshot."""
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        f = repo_dir / "snapshots" / ref.read_text().strip() / "model.safetensors"
        if f.is_file():
            return f
    found = sorted((repo_dir / "snapshots").glob("*/model.safetensors"))
    return found[-1] if found else None


def timm_weights_file(model_name: str) -> Path:
    """The local safetensors file of timm's pretrained ``model_name``. Looks in
    ``$PRETEXTLAB_WEIGHTS_DIR`` (``<name>.safetensors``, ``<name>/model.safetensors`` or a Hugging
    Face cache layout) and then in the Hugging Face cache. Never downloads: sets ``HF_HUB_OFFLINE``."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    roots: list[Path] = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        base = Path(os.environ[WEIGHTS_DIR_ENV])
        for f in (base / f"{model_name}.safetensors", base / model_name / "model.safetensors"):
            if f.is_file():
                return f
        roots.append(base)
    roots += hf_cache_dirs()
    for root in roots:
        for repo_id in _hub_ids(model_name):
            snapshot = _snapshot_file(root / ("models--" + repo_id.replace("/", "--")))
            if snapshot is not None:
                return snapshot
    where = ", ".join(str(r) for r in roots)
    raise ConfigError(
        f"objective.init: timm:{model_name}: no local weights (looked in {where}; pretextlab never "
        f"downloads: put model.safetensors under ${WEIGHTS_DIR_ENV}/{model_name}/ or fetch it "
        "into the Hugging Face cache beforehand)"
    )


def _grid(model: VisionTransformer) -> tuple[int, int]:
    rows, cols = model.patch_embed.grid_size
    return int(rows), int(cols)


def fit_state(
    state: dict[str, torch.Tensor], model: VisionTransformer, source: str, field: str = "objective.init"
) -> dict[str, torch.Tensor]:
    """``state`` adapted to ``model`` (a timm ViT); a one-line ConfigError when it cannot fit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not (k.startswith("head.") and k not in expected)}
    for a, b in (("norm.", "fc_norm."), ("fc_norm.", "norm.")):
        if not any(k.startswith(a) for k in expected) and any(k.startswith(b) for k in expected):
            state = {
                (b + k[len(a) :] if k.startswith(a) and (b + k[len(a) :]) in expected else k): v
                for k, v in state.items()
            }
    w = state.get("patch_embed.proj.weight")
    want = expected.get("patch_embed.proj.weight")
    if w is not None and want is not None and w.ndim == 4 and w.shape[1] != want[1] and w.shape[2:] == want[2:]:
        state["patch_embed.proj.weight"] = adapt_input_conv(want[1], w)
    pos = state.get("pos_embed")
    if (
        pos is not None
        and "pos_embed" in expected
        and tuple(pos.shape) != expected["pos_embed"]
        and pos.shape[-1] == expected["pos_embed"][-1]
    ):
        npt = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
        state["pos_embed"] = resample_abs_pos_embed(
            pos.float(), new_size=list(_grid(model)), num_prefix_tokens=npt, verbose=False
        ).to(pos.dtype)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in state if k in expected and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            shown = ", ".join(f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in shapes[:3])
            parts.append(f"{len(shapes)} of another shape ({shown}{', ...' if len(shapes) > 3 else ''})")
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
            )
        raise ConfigError(f"{field}: {source}: weights do not fit the backbone: {'; '.join(parts)}")
    return state


def load_backbone_state(
    models: Sequence[VisionTransformer], state: dict[str, torch.Tensor], source: str, field: str = "objective.init"
) -> None:
    """Fit ``state`` to the first model and load it into every one of them (backbone and its twins)."""
    fitted = fit_state(state, models[0], source, field)
    with torch.no_grad():
        for m in models:
            m.load_state_dict(fitted, strict=True)
