"""The automatic counterpart of the clinicians' ratings: how well each reviewed map falls on the ROI.

When the review's store has ROI masks (catalog column ``roi``, see ``pretextlab.evaluate.roi``), each
(encoder, panel image) gets the localisation scores of ``pretextlab.evaluate.localisation`` for the map
the reviewers rated: the mean last-block CLS attention (map type ``attention``). The review's
``similarity`` map is anchored at the image centre for reviewers, not inside the ROI, and ``pca`` has no
ROI counterpart, so neither is scored. ``analysis.localisation_agreement`` then correlates these scores
with the mean ratings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pretextlab.evaluate.localisation import MEAN_MAP, image_scores
from pretextlab.evaluate.roi import read_roi_masks
from pretextlab.models.encoder_io import preprocess
from pretextlab.review.spec import ReviewSpec
from pretextlab.storage import read_catalog

#: review map type -> the localisation map that is the same picture
SCORED = {"attention": MEAN_MAP}


def roi_scores(spec: ReviewSpec) -> pd.DataFrame | None:
    """One row per (encoder, item_id, map_type) with ``auroc`` and ``hit`` (pointing game), for the panel
    images whose ROI mask is neither empty nor full; None when the store has no ROI masks."""
    from pretextlab.review.assets import load_encoders, panel

    if "roi" not in read_catalog(spec.store).columns:
        return None
    images, meta = panel(spec)
    masks = read_roi_masks(spec.store, [m["item_id"] for m in meta]).masks
    rows: list[dict[str, Any]] = []
    scored = [t for t in spec.map_types if t in SCORED]
    if not scored:
        return pd.DataFrame(columns=["encoder", "item_id", "map_type", "auroc", "hit"])
    for enc in load_encoders(spec):
        for img, m, mask in zip(images, meta, masks, strict=True):
            if mask is None or not mask.any() or mask.all():
                continue
            scores = image_scores(enc.model, preprocess(np.asarray(img)[None], enc.card), mask)
            for map_type in scored:
                s = scores.scores[SCORED[map_type]]
                rows.append(
                    {"encoder": enc.name, "item_id": m["item_id"], "map_type": map_type, "auroc": s.auroc, "hit": s.hit}
                )
    return pd.DataFrame(rows, columns=["encoder", "item_id", "map_type", "auroc", "hit"])
