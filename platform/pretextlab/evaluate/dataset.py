"""A labelled catalog as an evaluation set: one uint8 image per sample, with its label, patient and split.

- ``image`` rows (NPZ stacks, collections): the image itself, read from its stack when a batch asks
  for it (``EvalImages``), so a 100,000-image collection is never held in memory at once.
- ``cine`` rows: the middle frame, or every ``cine_frame_step``-th frame.
- ``slide`` rows: ``patches_per_slide`` level-0 patches centred on tissue (random tissue-mask pixels,
  seeded), each carrying the slide's label and patient.

Every sample's group is its patient id, else the item it came from, so a split by group never puts
one patient (or one slide's patches) on both sides.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pretextlab.core.errors import UserError
from pretextlab.evaluate.images import EvalImages, resize_uint8  # noqa: F401  (resize_uint8's old home)
from pretextlab.storage import open_item, read_catalog
from pretextlab.storage.frames import working_frame
from pretextlab.storage.pixels import stored_bits, to_uint8
from pretextlab.storage.stream import stack_split


@dataclass
class EvalSet:
    """Images (N, H, W, C) uint8, integer labels, and where each sample came from.

    ``images`` indexes like an (N, H, W, C) uint8 array; from ``load_eval_set`` it is an
    :class:`~pretextlab.evaluate.images.EvalImages` that reads rows when asked (memory stays flat in N).
    """

    images: Any
    labels: np.ndarray
    class_names: list[str]
    groups: np.ndarray
    item_ids: np.ndarray
    splits: np.ndarray
    kinds: np.ndarray
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """How many classes the labels index into."""
        return len(self.class_names)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT


def _text(value: Any) -> str | None:
    if _missing(value):
        return None
    s = str(value).strip()
    return s or None


def _class_order(names: list[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def tissue_patch_origins(
    item: Any, count: int, patch: int, rng: np.random.Generator
) -> tuple[list[tuple[int, int]], str | None]:
    """Level-0 (x, y) corners of ``count`` patch x patch tiles centred on random tissue-mask pixels of a slide."""
    height, width = (int(v) for v in item.card["levels"][0]["shape"][-2:])
    mask = item.tissue_mask()
    note = None
    meta = item.card.get("tissue_mask") or {}
    ds = float(meta.get("downsample", 1.0))
    if mask is None or not np.any(mask):
        note = f"{item.item_id}: no tissue mask or no tissue in it; patches placed anywhere"
        ys, xs = np.mgrid[0 : max(1, height // 64), 0 : max(1, width // 64)]
        ys, xs, ds = ys.ravel(), xs.ravel(), 64.0
    else:
        ys, xs = np.nonzero(mask)
    cy, cx = (ys + 0.5) * ds, (xs + 0.5) * ds
    half = patch / 2
    inside = (cx >= half) & (cx <= width - half) & (cy >= half) & (cy <= height - half)
    if inside.any():  # prefer centres whose whole patch lies in the slide
        cy, cx = cy[inside], cx[inside]
    pick = rng.choice(len(cy), size=min(count, len(cy)), replace=False)
    origins = []
    for i in np.sort(pick):
        x0 = int(np.clip(round(cx[i] - half), 0, max(0, width - patch)))
        y0 = int(np.clip(round(cy[i] - half), 0, max(0, height - patch)))
        origins.append((x0, y0))
    return origins, note


def read_level0_patch(item: Any, x0: int, y0: int, patch: int) -> np.ndarray:
    """A patch x patch level-0 window of a slide at (x0, y0), padded with glass (255) past its edge."""
    region = item.read_region(0, x0, y0, patch, patch)
    if region.shape[0] != patch or region.shape[1] != patch:  # slide smaller than a patch: pad with glass
        padded = np.full((patch, patch, region.shape[2]), 255, np.uint8)
        padded[: region.shape[0], : region.shape[1]] = region
        region = padded
    return region


def load_eval_set(
    dest: str,
    label_column: str = "label",
    patches_per_slide: int = 16,
    patch_size: int | None = None,
    seed: int = 0,
    size: int | None = None,
    cine_frame_step: int | None = None,
    modality: str | None = None,
    resolution: dict[str, Any] | None = None,
) -> EvalSet:
    """Read the labelled rows of the catalog at ``dest`` as uint8 images with integer labels.

    ``patch_size`` is the slide patch side at level 0 (default ``size``, else 224). ``size``: images of
    another size are resized to size x size; without it all images must already share one size.
    Mixed 1- and 3-channel images are all made RGB. Raises ``UserError`` for a catalog without labels
    or with fewer than 2 classes.

    ``resolution`` (an encoder card's working resolution, ``ClipSpec.resolution()``) brings cine frames
    to the scale training saw: resampled as the stream resampled them and fitted to its size; with
    ``resolution['eval_fit'] == 'crop'`` (native-crop views) the encoder-size window is then cut from
    the middle instead of resizing the whole frame.
    """
    cat = read_catalog(dest)
    hint = f"attach them with `pretextlab catalog {dest} --labels labels.csv`"
    if label_column not in cat.columns:
        raise UserError(f"catalog at {dest} has no labels (no column {label_column!r}): {hint}")
    if modality is not None:
        cat = cat[cat["modality"] == modality]
    labelled = cat[cat[label_column].map(_text).notna()].reset_index(drop=True)
    if labelled.empty:
        what = "labels" if label_column == "label" else f"labels in column {label_column!r}"
        where = f" for modality {modality!r}" if modality else ""
        raise UserError(f"catalog at {dest} has no {what}{where}: {hint}")
    names = _class_order(sorted({t for v in labelled[label_column] if (t := _text(v)) is not None}))
    if len(names) < 2:
        raise UserError(
            f"catalog at {dest}: column {label_column!r} has only one class ({names[0]!r}); evaluation needs at least 2"
        )
    index = {n: i for i, n in enumerate(names)}
    patch = int(patch_size or size or 224)
    notes: list[str] = []
    held: list[np.ndarray] = []  # cine frames and slide patches (few per item), read now
    stacks: dict[tuple[str, str], int] = {}  # (stack item, split) -> stack number; images read on demand
    opened: list[tuple[Any, int]] = []  # per stack: its images array (metadata only) and stored bits
    source: list[int] = []  # per sample: its stack number, or -1 (held)
    pos: list[int] = []  # per sample: its index in that stack, or in held
    meta: list[tuple[int, str, str, str, str]] = []  # label, group, item_id, split, kind
    has_patient = "patient_id" in labelled.columns
    has_split = "split" in labelled.columns
    has_index = "index" in labelled.columns
    columns = [labelled[c] for c in ("kind", "item_id", label_column)]
    extra = [
        labelled["group"] if "group" in labelled.columns else [None] * len(labelled),
        labelled["patient_id"] if has_patient else [None] * len(labelled),
        labelled["split"] if has_split else [None] * len(labelled),
        labelled["index"] if has_index else [None] * len(labelled),
    ]
    for kind, item_id, value, stack_item, patient, split_value, row_index in zip(*columns, *extra, strict=True):
        label = index[_text(value)]  # type: ignore[index]
        group = _text(patient) or item_id
        split = _text(split_value) or ""
        if kind == "image":  # one row of an image stack: read when a batch asks for it
            key = (stack_item, stack_split(item_id, stack_item))
            if key not in stacks:
                stacks[key] = len(opened)
                stack = open_item(dest, key[0])
                arr = stack.group[key[1]]["images"]
                opened.append((arr, stored_bits(stack.card, arr.dtype)))
            source.append(stacks[key])
            pos.append(int(row_index))
            meta.append((label, group, item_id, split, kind))
            continue
        if kind == "cine":
            item = open_item(dest, item_id)
            frames = int(item.card.get("frames") or item.level(0).shape[0])
            if cine_frame_step:
                new = list(item.frames(0, frames, int(cine_frame_step)))
            else:
                new = [item.frames(frames // 2, frames // 2 + 1)[0]]
            new = [to_uint8(f, stored_bits(item.card, f.dtype)) for f in new]
            if resolution is not None:
                new = [working_frame(f, resolution, item.card.get("pixel_spacing_mm"), size) for f in new]
        elif kind == "slide":
            item = open_item(dest, item_id)
            rng = np.random.default_rng([seed, zlib.crc32(item_id.encode())])
            origins, note = tissue_patch_origins(item, patches_per_slide, patch, rng)
            if note:
                notes.append(note)
            new = [read_level0_patch(item, x0, y0, patch) for x0, y0 in origins]
        else:
            notes.append(f"{item_id}: kind {kind!r} is not evaluated")
            continue
        for img in new:
            source.append(-1)
            pos.append(len(held))
            held.append(img)
            meta.append((label, group, item_id, split, kind))
    if not meta:
        raise UserError(f"catalog at {dest}: no image, cine or slide rows among the labelled items")
    stack_shapes = [tuple(int(v) for v in arr.shape[1:]) for arr, _ in opened]  # (C, H, W) per stack
    shapes = {img.shape[:2] for img in held} | {sh[1:] for sh in stack_shapes}
    if size is None and len(shapes) > 1:
        raise UserError(
            f"catalog at {dest}: labelled images differ in size ({sorted(shapes)[:3]}...); pass size= to resize them"
        )
    channels = {img.shape[2] for img in held} | {sh[0] for sh in stack_shapes}
    if len(channels) > 1:
        notes.append("mixed 1- and 3-channel images: all converted to RGB")
    images: Any = EvalImages(
        opened,
        held,
        np.array(source),
        np.array(pos),
        next(iter(shapes)),  # type: ignore[arg-type]
        3 if len(channels) > 1 else channels.pop(),
        size,
    )
    if not opened:  # cine frames and slide patches only: already in memory, so one array
        images = np.asarray(images)
    labels, groups, item_ids, splits, kinds = (np.array(col) for col in zip(*meta, strict=True))
    return EvalSet(
        images,
        labels.astype(np.int64),
        names,
        groups.astype(str),
        item_ids.astype(str),
        splits.astype(str),
        kinds.astype(str),
        notes,
    )
