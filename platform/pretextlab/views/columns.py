"""Views as flat columns and back: Ray Data rows hold one array per column, objectives take lists of views.

``{"global": [a, b], "local": [c, d]}`` <-> ``global_0, global_1, local_0, local_1``; a plain tensor
(``images``, ``clips``) keeps its key. Pure (numpy + torch), so training loops and tests share it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

_LISTED = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z][A-Za-z0-9]*)*)_(?P<i>\d+)$")


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def to_columns(views_out: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Views output -> flat numpy columns: a list under ``name`` becomes ``name_0``, ``name_1``, ..."""
    cols: dict[str, np.ndarray] = {}
    for name, value in views_out.items():
        if _LISTED.match(name):
            raise ValueError(f"view key {name!r} ends in _<digits>, which from_columns reads as a list item")
        if isinstance(value, (list, tuple)):
            cols.update({f"{name}_{i}": _array(v) for i, v in enumerate(value)})
        else:
            cols[name] = _array(value)
    return cols


def from_columns(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Flat columns -> the objective's batch: ``name_<i>`` columns become the list ``name`` (in index
    order), other numeric columns become tensors under their key (read-only arrays are copied, writable
    ones shared); string / object columns (item_id, label) are dropped. ``from_columns(to_columns(v))``
    equals v (empty lists excepted: no column)."""
    out: dict[str, Any] = {}
    listed: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            value = np.asarray(value)
            if value.dtype.kind not in "biufc":
                continue
            if not value.flags.writeable:  # Ray's zero-copy blocks are read-only; tensors must not alias them
                value = value.copy()
        tensor = torch.as_tensor(value)
        m = _LISTED.match(key)
        if m:
            listed.setdefault(m["name"], {})[int(m["i"])] = tensor
        else:
            out[key] = tensor
    for name, parts in listed.items():
        if sorted(parts) != list(range(len(parts))):
            raise ValueError(f"columns {name}_<i> are not numbered 0..{len(parts) - 1}: got {sorted(parts)}")
        if name in out:
            raise ValueError(f"column {name!r} is both a tensor and a list ({name}_0, ...)")
        out[name] = [parts[i] for i in range(len(parts))]
    return out
