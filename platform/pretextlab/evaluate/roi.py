"""Clinical ROI masks of evaluation rows, read from the store: the catalog's optional ``roi`` column.

A catalog row may name, in its ``roi`` column, the item id of another row holding that image's ROI
mask (a lesion, a region outline): ``pretextlab bench-data`` writes them as a second image stack
(``<stack>-roi``, 0/255 images, same split and index), and a user can ingest their own masks the
same way and attach the column from a CSV like labels. Mask rows carry no label, so evaluation and
streams never take them for images. This module reads the masks for a list of evaluation item ids,
so ``evaluate`` (and each study cell) can score how well feature maps fall on them
(``evaluate.localisation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pretextlab.core.errors import UserError
from pretextlab.evaluate.dataset import _text
from pretextlab.storage import open_item, read_catalog
from pretextlab.storage.stream import stack_split

ROI_COLUMN = "roi"


@dataclass
class RoiMasks:
    """One mask (H, W bool) or None per requested item id, and why any were not read."""

    masks: list[np.ndarray | None]
    notes: list[str] = field(default_factory=list)


def read_roi_masks(dest: str, item_ids: Sequence[str]) -> RoiMasks:
    """The ROI mask of each item id (None where the row names none), read from the store at ``dest``.

    Masks come back at their stored size (the field of view of the source image); pixel values above
    127 are inside the ROI. Raises ``UserError`` when a row names a mask item the catalog does not hold.
    """
    cat = read_catalog(dest)
    if ROI_COLUMN not in cat.columns:
        return RoiMasks([None] * len(item_ids), [f"catalog at {dest} has no {ROI_COLUMN!r} column"])
    rows = cat.set_index("item_id", drop=False)
    wanted = rows[ROI_COLUMN].map(_text)
    stacks: dict[tuple[str, str], Any] = {}
    masks: list[np.ndarray | None] = []
    notes: list[str] = []
    for item_id in item_ids:
        roi = wanted.get(item_id)
        if roi is None:
            masks.append(None)
            continue
        if roi not in rows.index:
            raise UserError(
                f"catalog at {dest}: row {item_id!r} names ROI mask {roi!r} in column {ROI_COLUMN!r}, "
                "but no such item is in the catalog"
            )
        r = rows.loc[roi]
        if r["kind"] != "image":
            notes.append(f"{item_id}: ROI mask {roi!r} is a {r['kind']!r} item; only image masks are read")
            masks.append(None)
            continue
        group = str(r["group"])
        sub = stack_split(roi, group)
        key = (group, sub)
        if key not in stacks:
            stacks[key] = open_item(dest, group).group[sub]["images"]
        plane = np.asarray(stacks[key][int(r["index"])])  # (C, H, W)
        masks.append(plane.max(axis=0) > 127)
    return RoiMasks(masks, notes)
