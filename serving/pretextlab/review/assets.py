"""Render a review's images and feature-map overlays once, at creation, under random opaque file keys.

Maps reuse :mod:`pretextlab.evaluate.feature_maps` (DINO-style last-block CLS attention averaged over
heads, PCA of patch tokens, cosine similarity to the centre patch) and are drawn over the image at
display size (nearest-neighbour upsampling, so each patch stays a visible square). PNGs carry no text
chunks; file names are random hex, so neither a name nor a path can unblind a reviewer.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pretextlab.core.errors import UserError
from pretextlab.evaluate import load_eval_set, preprocess
from pretextlab.evaluate.feature_maps import (
    anchor_similarity,
    cls_attention_maps,
    colormap,
    grid_size,
    patch_tokens,
    pca_rgb,
)
from pretextlab.models.encoder_io import EncoderCard, load_encoder
from pretextlab.review.files import put_png
from pretextlab.review.spec import ReviewSpec
from pretextlab.storage import read_catalog

OVERLAY_ALPHA = 0.55


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _put(root: str, img: Image.Image) -> str:
    return put_png(root, _png(img))


@dataclass
class LoadedEncoder:
    name: str
    source: str
    objective: str | None
    model: torch.nn.Module
    card: EncoderCard


@dataclass
class Rendered:
    """What create_review stores: encoders, panel images and map keys ((image, encoder, type) -> key)."""

    encoders: list[dict[str, Any]]
    images: list[dict[str, Any]]
    maps: dict[tuple[int, int, str], str] = field(default_factory=dict)


def load_encoders(spec: ReviewSpec) -> list[LoadedEncoder]:
    out = []
    if spec.registry:
        from pretextlab.registry import EncoderRegistry

        reg = EncoderRegistry(spec.registry)
        for addr in spec.encoders:
            ref = reg.resolve(addr)
            model, card = load_encoder(reg.local_folder(ref))
            out.append(LoadedEncoder(ref.id, addr, card.objective, model, card))
    else:
        for folder in spec.encoders:
            if not Path(folder).is_dir():
                raise UserError(f"encoders: {folder}: no such encoder folder (for registry addresses set registry)")
            model, card = load_encoder(folder)
            out.append(LoadedEncoder(f"{card.name} ({Path(folder).name})", folder, card.objective, model, card))
    return out


def panel(spec: ReviewSpec) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The review's panel: its images (at display size) and, per image, item id, label and modality."""
    es = load_eval_set(spec.store, label_column=spec.label_column, size=spec.display_size)
    if spec.items:
        idx = []
        for item in spec.items:
            hits = np.flatnonzero(es.item_ids == item)
            if not len(hits):
                raise UserError(f"items: {item!r} is not a labelled item of the store {spec.store}")
            idx.append(int(hits[0]))
    else:
        if spec.sample > len(es):  # type: ignore[operator]
            raise UserError(f"sample: {spec.sample} images asked, the store {spec.store} has {len(es)} labelled")
        rng = np.random.default_rng(spec.seed)
        idx = sorted(int(i) for i in rng.choice(len(es), size=spec.sample, replace=False))
    cat = read_catalog(spec.store)
    modality = dict(zip(cat["item_id"], cat["modality"], strict=False)) if "modality" in cat.columns else {}
    meta = [
        {
            "item_id": str(es.item_ids[i]),
            "label": es.class_names[int(es.labels[i])],
            "modality": (None if modality.get(str(es.item_ids[i])) is None else str(modality[str(es.item_ids[i])])),
        }
        for i in idx
    ]
    return es.images[idx], meta


def _display(img: np.ndarray, size: int) -> Image.Image:
    arr = img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def _map_rgb(model: torch.nn.Module, x: torch.Tensor, map_type: str) -> np.ndarray:
    if map_type == "attention":
        return colormap(cls_attention_maps(model, x).mean(dim=0).numpy())
    tokens = patch_tokens(model, x)
    if map_type == "pca":
        return np.rint(pca_rgb(tokens) * 255).astype(np.uint8)
    rows, cols = grid_size(model, x)
    return colormap(anchor_similarity(tokens, (rows // 2, cols // 2)))


def render_review(spec: ReviewSpec, root: str) -> Rendered:
    """Load encoders and panel, write every display image and map overlay under ``root``."""
    encoders = load_encoders(spec)
    images, meta = panel(spec)
    size = spec.display_size
    out = Rendered(
        encoders=[{"name": e.name, "source": e.source, "objective": e.objective} for e in encoders], images=[]
    )
    for i, (img, m) in enumerate(zip(images, meta, strict=True)):
        base = _display(img, size)
        out.images.append({**m, "asset": _put(root, base)})
        for j, enc in enumerate(encoders):
            x = preprocess(img[None], enc.card)
            for mt in spec.map_types:
                try:
                    rgb = _map_rgb(enc.model, x, mt)
                except ValueError as exc:
                    raise UserError(f"map_types: {mt} cannot be drawn for encoder {spec.encoders[j]}: {exc}") from None
                heat = Image.fromarray(rgb).convert("RGB").resize((size, size), Image.Resampling.NEAREST)
                out.maps[(i, j, mt)] = _put(root, Image.blend(base, heat, OVERLAY_ALPHA))
    return out
