"""Rendered PNGs of a review under random 32-hex keys: a local folder, or s3:// via pretextlab.storage.fs.

Keys are generated here and read back only from the database, never from a request, so no client can
name a path. Local folders are read and written with plain file calls (the server then starts without
importing the storage package, which pulls in zarr and dask).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

REMOTE = ("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "memory://")
ASSET_RE = re.compile(r"^[0-9a-f]{32}$")


def asset_url(root: str, key: str) -> str:
    """The URL of asset ``key`` under ``root``."""
    if not ASSET_RE.match(key):
        raise ValueError("bad asset key")
    return f"{root.rstrip('/')}/{key}.png"


def put_png(root: str, data: bytes) -> str:
    """Write one PNG atomically under a fresh random key; return the key."""
    key = secrets.token_hex(16)
    url = asset_url(root, key)
    if root.startswith(REMOTE):
        from pretextlab.storage import fs as sfs

        sfs.atomic_write_bytes(url, data)
    else:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return key


def read_asset(root: str, key: str) -> bytes:
    url = asset_url(root, key)
    if root.startswith(REMOTE):
        from pretextlab.storage import fs as sfs

        return sfs.read_bytes(url)
    return Path(url).read_bytes()
