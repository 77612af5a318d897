"""Object-storage access through fsspec: local paths by default, ``s3://bucket/prefix`` when asked.

S3 endpoint and credentials come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...) or
from explicit ``storage_options``; never from files in this repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

REMOTE_SCHEMES = ("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "memory://")


def is_remote(url: str) -> bool:
    """True for object-storage URLs, False for local paths (``file://`` or plain)."""
    return url.startswith(REMOTE_SCHEMES)


def normalize(url: str) -> str:
    """Absolute local path or the URL unchanged; strips trailing slashes."""
    url = str(url)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if is_remote(url):
        return url.rstrip("/")
    return str(Path(url).expanduser().absolute())


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with '/'."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def s3_options(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """s3fs options: endpoint from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, bounded retries."""
    opts: dict[str, Any] = {
        "config_kwargs": {
            "connect_timeout": float(os.environ.get("PRETEXTLAB_S3_CONNECT_TIMEOUT", "5")),
            "read_timeout": 120,
            "retries": {"max_attempts": int(os.environ.get("PRETEXTLAB_S3_MAX_ATTEMPTS", "3"))},
        },
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    if extra:
        opts.update(extra)
    return opts


def storage_options_for(url: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec options to use for ``url``."""
    if url.startswith(("s3://", "s3a://")):
        return s3_options(extra)
    return dict(extra or {})


def get_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the in-filesystem path for ``url``."""
    url = normalize(url)
    if not is_remote(url):
        return LocalFileSystem(), url
    fs, path = fsspec.core.url_to_fs(url, **storage_options_for(url, storage_options))
    return fs, path


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL of ``path`` inside ``fs`` (inverse of :func:`get_fs`)."""
    if isinstance(fs, LocalFileSystem):
        return path
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return f"{protocol}://{path}"


def atomic_write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` so a reader sees the old object or the whole new one, never a part.

    Local files: write a temporary sibling, fsync, rename. Object stores: a single PUT is atomic.
    """
    fs, path = get_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        fs.pipe_file(path, data)


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, path = get_fs(url, storage_options)
    return fs.cat_file(path)


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = get_fs(url, storage_options)
    return fs.exists(path)


def remove_tree(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Delete a folder or prefix and everything under it; missing is fine."""
    fs, path = get_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
    fs.invalidate_cache(path)


def fingerprint(info: dict[str, Any]) -> str:
    """A cheap identity of a stored file from its listing entry (size + ETag or mtime)."""
    size = info.get("size")
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{size}:{str(tag).strip(chr(34))}"


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    """``sha256:<hex>`` of a local file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


@contextlib.contextmanager
def local_copies(urls: list[str], storage_options: dict[str, Any] | None = None) -> Iterator[list[str]]:
    """Local paths for ``urls``: local files as they are, remote ones downloaded to a temp folder.

    Readers (tifffile, pydicom, PyAV) do many small random reads; one sequential download is far
    faster than range requests against object storage and keeps memory flat (it goes to disk).
    """
    remote = [u for u in urls if is_remote(u)]
    if not remote:
        yield [normalize(u) for u in urls]
        return
    tmpdir = tempfile.mkdtemp(prefix="pretextlab-src-")
    try:
        out = []
        for i, url in enumerate(urls):
            if not is_remote(url):
                out.append(normalize(url))
                continue
            fs, path = get_fs(url, storage_options)
            local = os.path.join(tmpdir, f"{i:05d}-{os.path.basename(path)}")
            fs.get_file(path, local)
            out.append(local)
        yield out
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def zarr_store(url: str, read_only: bool = False, storage_options: dict[str, Any] | None = None):
    """A zarr v3 store for a local folder or an object-storage prefix (pretextlab's codecs registered)."""
    import zarr.storage

    from pretextlab.storage.codecs import register

    register()
    url = normalize(url)
    if not is_remote(url):
        return zarr.storage.LocalStore(url, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(
        url, read_only=read_only, storage_options=storage_options_for(url, storage_options)
    )
