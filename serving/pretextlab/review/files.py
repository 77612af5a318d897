"""Rendered PNGs of a review under random 32-hex keys (local folder or s3:// via pretextlab.storage.fs).

Keys are generated here and read back only from the database, never from a request, so no client can
name a path.
"""

from __future__ import annotations

import re
import secrets

from pretextlab.storage import fs as sfs

ASSET_RE = re.compile(r"^[0-9a-f]{32}$")


def asset_url(root: str, key: str) -> str:
    """The URL of asset ``key`` under ``root``."""
    if not ASSET_RE.match(key):
        raise ValueError("bad asset key")
    return sfs.join(root, f"{key}.png")


def put_png(root: str, data: bytes) -> str:
    """Write one PNG atomically under a fresh random key; return the key."""
    key = secrets.token_hex(16)
    sfs.atomic_write_bytes(asset_url(root, key), data)
    return key


def read_asset(root: str, key: str) -> bytes:
    return sfs.read_bytes(asset_url(root, key))
