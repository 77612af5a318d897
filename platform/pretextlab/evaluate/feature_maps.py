"""Look inside a ViT: last-block CLS attention per head, PCA of patch tokens, similarity to an anchor patch.

The attention maps follow DINO's ``visualize_attention``: the query of the CLS token against the
keys of every patch token in the last block, softmax(q k^T * scale), one map per head. q and k are
recomputed from ``blocks[-1].norm1`` and ``attn.qkv`` because timm's fused attention never
materialises the attention matrix. PNGs are written with Pillow and a viridis-like colormap done in
NumPy, upsampled to the image size with nearest-neighbour so each patch stays a visible square.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:  # for the casts only: the functions are duck-typed over timm ViTs
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

#: Viridis sampled at 0, 1/8, ..., 1 (matplotlib's values, rounded); colours in between are linear.
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map a 2-D array to (H, W, 3) uint8 viridis-like colours, min-max scaled."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = np.nanmin(v), np.nanmax(v)
    v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    pos = v * (len(_VIRIDIS) - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, len(_VIRIDIS) - 2)
    frac = (pos - i0)[..., None]
    rgb = _VIRIDIS[i0] * (1 - frac) + _VIRIDIS[i0 + 1] * frac
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _batch(image: torch.Tensor) -> torch.Tensor:
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one (C, H, W) or (1, C, H, W) image, got {tuple(image.shape)}")
    return image.float()


def _vit(model: torch.nn.Module) -> VisionTransformer:
    """``model`` seen as the timm ViT whose internals this module reads. Static only: the functions
    here are duck-typed (any timm ViT-like model with these attributes works), nothing is checked."""
    return cast("VisionTransformer", model)


def grid_size(model: torch.nn.Module, image: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) of the patch grid for this image."""
    patch = _vit(model).patch_embed.patch_size
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    return int(image.shape[-2]) // ph, int(image.shape[-1]) // pw


def _tokens_before_last_block(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model = _vit(model)
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for blk in model.blocks[:-1]:
        x = blk(x)
    return x


def last_block_attention(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(heads, T, T) attention probabilities of the last block for one image (T = prefix + patch tokens)."""
    model.eval()
    with torch.inference_mode():
        x = _tokens_before_last_block(model, _batch(image).to(next(model.parameters()).device))
        blk = cast("Block", _vit(model).blocks[-1])
        if not isinstance(getattr(blk.attn, "qkv", None), torch.nn.Linear):
            raise ValueError(f"last block attention {type(blk.attn).__name__} has no fused qkv projection")
        attn = cast("Attention", blk.attn)  # fused qkv, as timm's Attention: its attributes are read below
        h = blk.norm1(x)
        b, n, _ = h.shape
        head_dim = getattr(attn, "head_dim", h.shape[-1] // attn.num_heads)
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        q, k = attn.q_norm(q), attn.k_norm(k)
        return ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)[0].float().cpu()


def cls_attention_maps(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(heads, rows, cols) attention of the CLS token to each patch in the last block; needs a CLS token."""
    if getattr(model, "cls_token", None) is None:
        raise ValueError("the model has no CLS token: no CLS attention maps")
    attn = last_block_attention(model, image)
    npt = int(_vit(model).num_prefix_tokens)
    rows, cols = grid_size(model, _batch(image))
    return attn[:, 0, npt:].reshape(attn.shape[0], rows, cols)


def patch_tokens(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(rows, cols, D) final normalised patch tokens of one image."""
    model.eval()
    x = _batch(image)
    with torch.inference_mode():
        vit = _vit(model)
        tokens = vit.forward_features(x.to(next(vit.parameters()).device))[0, int(vit.num_prefix_tokens) :]
    rows, cols = grid_size(model, x)
    return tokens.float().cpu().reshape(rows, cols, -1)


def pca_rgb(tokens: torch.Tensor) -> np.ndarray:
    """(rows, cols, 3) float in [0, 1]: the first 3 principal components of the patch tokens, min-max scaled each."""
    rows, cols, dim = tokens.shape
    flat = tokens.reshape(-1, dim).double()
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    comps = (flat @ vh[:3].T).numpy()
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = comps.min(axis=0), comps.max(axis=0)
    comps = np.where(hi > lo, (comps - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    return comps.reshape(rows, cols, 3)


def anchor_similarity(tokens: torch.Tensor, anchor: tuple[int, int]) -> np.ndarray:
    """(rows, cols) cosine similarity of every patch token to the token at ``anchor`` = (row, col)."""
    rows, cols, _ = tokens.shape
    r, c = anchor
    if not (0 <= r < rows and 0 <= c < cols):
        raise ValueError(f"anchor {anchor} is outside the {rows}x{cols} patch grid")
    flat = F.normalize(tokens.reshape(rows * cols, -1).double(), dim=1)
    return (flat @ flat[r * cols + c]).reshape(rows, cols).numpy()


def _upsample(img: np.ndarray, height: int, width: int) -> Image.Image:
    return Image.fromarray(img).resize((width, height), Image.Resampling.NEAREST)


def _display_image(image: torch.Tensor, mean: Any | None, std: Any | None) -> np.ndarray:
    x = _batch(image)[0].detach().cpu().double()
    if mean is not None and std is not None:
        c = x.shape[0]
        m = torch.tensor(list(mean) * (c if len(mean) == 1 else 1), dtype=torch.float64).view(-1, 1, 1)
        s = torch.tensor(list(std) * (c if len(std) == 1 else 1), dtype=torch.float64).view(-1, 1, 1)
        x = (x * s + m).clamp(0, 1)
    else:
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    arr = np.rint(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def save_feature_maps(
    model: torch.nn.Module,
    image_tensor: torch.Tensor,
    out_dir: str | Path,
    anchor: tuple[int, int] | None = None,
    mean: Any | None = None,
    std: Any | None = None,
    prefix: str = "",
) -> list[Path]:
    """Write input.png, attention-head<h>.png + attention-mean.png (CLS models), pca.png, similarity-r<row>-c<col>.png.

    ``image_tensor`` is one preprocessed image; pass the card's ``mean``/``std`` to show it un-normalised.
    ``anchor`` (row, col) defaults to the centre patch. Every PNG has the image's height and width.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = _batch(image_tensor)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    rows, cols = grid_size(model, x)
    anchor = anchor if anchor is not None else (rows // 2, cols // 2)
    written: list[Path] = []

    def save(img: Image.Image, name: str) -> None:
        path = out / f"{prefix}{name}.png"
        img.save(path)
        written.append(path)

    save(Image.fromarray(_display_image(x, mean, std)), "input")
    try:
        maps = cls_attention_maps(model, x).numpy()
    except ValueError:  # no CLS token, or an attention layout this module does not know: skip those maps
        maps = np.zeros((0, rows, cols))
    if len(maps):
        for h, m in enumerate(maps):
            save(_upsample(colormap(m), height, width), f"attention-head{h}")
        save(_upsample(colormap(maps.mean(axis=0)), height, width), "attention-mean")
    tokens = patch_tokens(model, x)
    save(_upsample(np.rint(pca_rgb(tokens) * 255).astype(np.uint8), height, width), "pca")
    sim = anchor_similarity(tokens, anchor)
    save(_upsample(colormap(sim), height, width), f"similarity-r{anchor[0]}-c{anchor[1]}")
    return written
