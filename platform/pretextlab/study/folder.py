"""A study folder's layout, read by the study's runner and by anything that builds on a finished study.

    <storage>/<name>/study.json          name, fingerprint (the study config and its cell ids), status
    <storage>/<name>/cells/<cell>.json   one record per cell: arm, seed, status, registered encoder, evaluation
    <storage>/<name>/reviews/<id>.json   a clinician review linked to the study (written by
                                          ``pretextlab review report``): its analysis, per arm
    <storage>/<name>/report.md|html, results.json|parquet

The review package writes ``reviews/<id>.json`` and the study report reads it, so neither imports the
other: the folder is the contract. No Ray here.
"""

from __future__ import annotations

import json
from typing import Any

from pretextlab.storage import fs as sfs

STUDY_FILE = "study.json"
CELLS_DIR = "cells"
REVIEWS_DIR = "reviews"


def read_json(url: str, storage_options: dict[str, Any] | None = None) -> Any | None:
    """The JSON document at ``url``, or None when it is missing or unreadable."""
    try:
        return json.loads(sfs.read_bytes(url, storage_options))
    except (FileNotFoundError, OSError, ValueError):
        return None


def read_cells(uri: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The records of the cells of the study at ``uri`` that have one (in the study's cell order)."""
    study = read_json(sfs.join(uri, STUDY_FILE), storage_options) or {}
    ids = (study.get("fingerprint") or {}).get("cells") or []
    records = (read_json(sfs.join(uri, CELLS_DIR, f"{cid}.json"), storage_options) for cid in ids)
    return [r for r in records if isinstance(r, dict)]


def review_url(uri: str, review_id: str) -> str:
    return sfs.join(uri, REVIEWS_DIR, f"{review_id}.json")


def read_reviews(uri: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every clinician review section written into the study folder, oldest review first."""
    fs, path = sfs.get_fs(sfs.join(uri, REVIEWS_DIR), storage_options)
    try:
        names = sorted(p for p in fs.ls(path, detail=False) if str(p).endswith(".json"))
    except (FileNotFoundError, OSError):
        return []
    found = [read_json(sfs.to_url(fs, str(p)), storage_options) for p in names]
    reviews = [r for r in found if isinstance(r, dict) and r.get("review")]
    return sorted(reviews, key=lambda r: (str(r.get("created_at") or ""), str(r["review"])))
