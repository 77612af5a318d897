"""The catalog: one Parquet table per store, a row per item (per image for stacks), plus labels.

It is rebuilt from the complete items' cards (so it can never list a half-written item) and
written atomically. Labels come from a CSV keyed by ``item_id`` or ``source`` (file name or URL).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pretextlab.core.errors import UserError
from pretextlab.storage import fs as sfs
from pretextlab.storage.layout import (
    CATALOG_FILE,
    ITEMS_DIR,
    LABELS_FILE,
    is_complete,
    item_relpath,
    item_url,
    parse_card,
)

#: Columns with a fixed meaning; labels may add more.
COLUMNS = [
    "item_id",
    "group",
    "index",
    "kind",
    "modality",
    "split",
    "label",
    "patient_id",
    "study_id",
    "uri",
    "axes",
    "shape",
    "dtype",
    "channels",
    "levels",
    "mpp",
    "objective_power",
    "frames",
    "frame_time_ms",
    "pixel_spacing_mm",
    "tissue_fraction",
    "source",
    "relpath",
    "reader",
    "checksum",
    "warnings",
]
INT_COLUMNS = ("index", "channels", "levels", "frames")
LABEL_KEYS = ("item_id", "source")
RESERVED = {
    "group",
    "relpath",
    "index",
    "kind",
    "modality",
    "uri",
    "axes",
    "shape",
    "dtype",
    "channels",
    "levels",
    "checksum",
    "reader",
}


def list_cards(dest: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Cards of the complete items under ``dest`` (incomplete ones are invisible)."""
    fs, root = sfs.get_fs(sfs.join(sfs.normalize(dest), ITEMS_DIR), storage_options)
    try:
        names = [p for p in fs.ls(root, detail=False) if p.rstrip("/").endswith(".zarr")]
    except FileNotFoundError:
        return []
    paths = [f"{p.rstrip('/')}/zarr.json" for p in names]

    def load(path: str) -> dict[str, Any] | None:
        try:
            card = parse_card(fs.cat_file(path))
        except FileNotFoundError:
            return None
        return card if is_complete(card) else None

    with ThreadPoolExecutor(max_workers=16) as pool:
        cards = [c for c in pool.map(load, paths) if c]
    return sorted(cards, key=lambda c: c["item_id"])


def _label_text(row: np.ndarray) -> str:
    vals = [str(int(v)) if float(v).is_integer() else str(float(v)) for v in np.ravel(row)]
    return ",".join(vals)


def rows_for_card(card: dict[str, Any], dest: str, storage_options: dict[str, Any] | None = None) -> list[dict]:
    src = card.get("source", {})
    levels = card.get("levels") or []
    base = {
        "item_id": card["item_id"],
        "group": card["item_id"],
        "index": None,
        "kind": card["kind"],
        "modality": card["modality"],
        "split": None,
        "label": None,
        "patient_id": card.get("patient_id"),
        "study_id": card.get("study_id"),
        "uri": item_relpath(card["item_id"]),
        "axes": card.get("axes"),
        "shape": card.get("shape"),
        "dtype": card.get("dtype"),
        "channels": card.get("channels"),
        "levels": len(levels) if levels else None,
        "mpp": card.get("mpp"),
        "objective_power": card.get("objective_power"),
        "frames": card.get("frames"),
        "frame_time_ms": card.get("frame_time_ms"),
        "pixel_spacing_mm": card.get("pixel_spacing_mm"),
        "tissue_fraction": (card.get("tissue_mask") or {}).get("tissue_fraction"),
        "source": (src.get("uris") or [None])[0],
        "relpath": None,
        "reader": src.get("reader"),
        "checksum": src.get("checksum"),
        "warnings": "; ".join(card.get("warnings") or []) or None,
    }
    if card["kind"] != "image":
        return [base]
    if "collection" in card:  # a collection shard: rows from the card alone, no array opened
        from pretextlab.storage.collection import collection_rows

        return collection_rows(card, base)
    import zarr

    group = zarr.open_group(
        sfs.zarr_store(item_url(dest, card["item_id"]), read_only=True, storage_options=storage_options), mode="r"
    )
    rows = []
    for split, meta in card.get("splits", {}).items():
        split_group = group[split]
        assert isinstance(split_group, zarr.Group)  # the writer makes <split>/images and <split>/labels
        node = split_group["labels"] if "labels" in split_group else None
        assert node is None or isinstance(node, zarr.Array)
        labels = None if node is None else np.asarray(node[:])
        for i in range(int(meta["count"])):
            row = dict(base)
            row.update(
                item_id=f"{card['item_id']}-{split}-{i:06d}",
                index=i,
                split=None if split == "all" else split,
                label=None if labels is None else _label_text(labels[i]),
                shape=meta["shape"],
                frames=None,
            )
            rows.append(row)
    return rows


def load_labels_csv(path: str) -> pd.DataFrame:
    """Read and validate a labels CSV; errors name the file and the column."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: labels file not found")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: not a readable CSV: {' '.join(str(exc).split())}") from None
    df.columns = [c.strip() for c in df.columns]
    keys = [k for k in LABEL_KEYS if k in df.columns]
    if not keys:
        raise UserError(f"{path}: needs an 'item_id' or 'source' column (found: {', '.join(df.columns)})")
    key = keys[0]
    if "group" in df.columns:  # a grouping column (patients, cases, slides): what grouped splits use
        if "patient_id" in df.columns:
            raise UserError(f"{path}: has both 'group' and 'patient_id'; keep one (both mean the split group)")
        df = df.rename(columns={"group": "patient_id"})
    bad = sorted(RESERVED & set(df.columns))
    if bad:
        raise UserError(f"{path}: column(s) {', '.join(bad)} are set by ingest and cannot be labels")
    if df[key].isna().any():
        raise UserError(f"{path}: column {key!r} has empty values (row {int(df[key].isna().idxmax()) + 2})")
    dup = df[key][df[key].duplicated()]
    if len(dup):
        raise UserError(f"{path}: column {key!r} repeats {dup.iloc[0]!r}; each item may appear once")
    if len(df.columns) < 2:
        raise UserError(f"{path}: has only the key column {key!r}; add a label, split or patient_id column")
    return df


def attach_labels(catalog: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Join labels onto the catalog; returns the new catalog and the label keys that matched nothing."""
    key = "item_id" if "item_id" in labels.columns else "source"
    cat = catalog.copy()
    if key == "source":
        # full path/URL first, then the path relative to the collection's folder (the usual form in
        # dataset CSVs: "benign/benign (1).png"), then the bare file name
        lab_src = labels["source"].map(lambda s: s[2:] if s.startswith("./") else s)
        labels = labels.assign(source=lab_src)
        wanted = set(lab_src)
        full = cat["source"].fillna("")
        rel = cat["relpath"].fillna("") if "relpath" in cat.columns else full.map(lambda s: "")
        name = full.map(lambda s: s.rsplit("/", 1)[-1])
        match_key = full.where(full.isin(wanted), rel.where(rel.isin(wanted), name))
    else:
        match_key = cat["item_id"]
    lab = labels.set_index(key)
    unmatched = sorted(set(lab.index) - set(match_key))
    for col in lab.columns:
        values = match_key.map(lab[col])
        if col in cat.columns:
            cat[col] = values.where(values.notna(), cat[col])
        else:
            cat[col] = values
    return cat, unmatched


def build_catalog(
    dest: str, storage_options: dict[str, Any] | None = None, labels: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """The catalog of the complete items under ``dest`` with ``labels`` joined on."""
    rows: list[dict] = []
    for card in list_cards(dest, storage_options):
        rows.extend(rows_for_card(card, dest, storage_options))
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    unmatched: list[str] = []
    if labels is not None:
        df, unmatched = attach_labels(df, labels)
    return df, unmatched


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as Parquet bytes (no index), written through an Arrow buffer.

    Not through a Python file object (``io.BytesIO``): Arrow's I/O on a Python file handle leaves its
    thread pool in a state that can abort the interpreter at exit ("terminate called without an active
    exception", exit 134; apache/arrow#34314, #50482), which a short command such as ``pretextlab
    catalog`` hit about once in 40 runs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


def parquet_frame(data: bytes) -> pd.DataFrame:
    """Parquet bytes as a DataFrame, read from an Arrow buffer (see :func:`parquet_bytes` for why)."""
    import pyarrow as pa

    return pd.read_parquet(pa.BufferReader(data))


def write_table(url: str, df: pd.DataFrame, storage_options: dict[str, Any] | None = None) -> None:
    sfs.atomic_write_bytes(url, parquet_bytes(df), storage_options)


def read_table(url: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    return parquet_frame(sfs.read_bytes(url, storage_options))


def rebuild_catalog(
    dest: str,
    labels_csv: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Rebuild and write ``catalog.parquet``; a new labels CSV replaces the stored labels table."""
    dest = sfs.normalize(dest)
    labels = None
    if labels_csv is not None:
        labels = load_labels_csv(labels_csv)
        write_table(sfs.join(dest, LABELS_FILE), labels, storage_options)
    elif sfs.exists(sfs.join(dest, LABELS_FILE), storage_options):
        labels = read_table(sfs.join(dest, LABELS_FILE), storage_options)
    df, unmatched = build_catalog(dest, storage_options, labels)
    write_table(sfs.join(dest, CATALOG_FILE), df, storage_options)
    return df, unmatched


def read_catalog(dest: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """The catalog of the store at ``dest``; a one-line UserError when there is none."""
    url = sfs.join(sfs.normalize(dest), CATALOG_FILE)
    try:
        return read_table(url, storage_options)
    except FileNotFoundError:
        raise UserError(
            f"{dest}: no catalog here ({CATALOG_FILE} missing); run `pretextlab ingest ... --to {dest}`"
        ) from None
