"""The encoder registry: versioned encoder folders (safetensors + card) under one root, local or s3://.

Layout under ROOT::

    encoders/<name>/<version>/model.safetensors
    encoders/<name>/<version>/card.json      written last: a version with a card is complete
    chosen/<modality>.json                   {"name", "version", "reason", "chosen_at"}: the mark
                                             serving and the study read to pick "the" encoder

Versions are ``YYYYmmddTHHMMSS.mmmZ-<6 hex of the weights sha256>``, so they sort by time and two runs
never collide. An encoder is addressed as ``name``, ``name:latest``, ``name:<version>`` or
``chosen:<modality>``.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretextlab.core.errors import UserError
from pretextlab.core.names import NAME_RE, NAME_RULE
from pretextlab.models.encoder_io import CARD, WEIGHTS, EncoderCard, load_encoder, save_encoder
from pretextlab.storage import fs as sfs


class RegistryError(UserError):
    """A registry address that names nothing, or a registry that cannot be read."""


@dataclass(frozen=True)
class EncoderRef:
    """One registered encoder version."""

    name: str
    version: str
    uri: str  # folder URL (local path or s3://...)
    card: EncoderCard

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise RegistryError(f"encoder name {name!r}: {NAME_RULE}")
    return name


class EncoderRegistry:
    """Register, list, resolve, fetch and mark ("choose") encoders under ``root``."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None, cache_dir: str | Path | None = None):
        self.root = sfs.normalize(root)
        self.storage_options = storage_options
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "pretextlab" / "encoders")

    # -- writing -------------------------------------------------------------------------------
    def register(self, model: torch.nn.Module, card: EncoderCard, name: str | None = None) -> EncoderRef:
        """Save ``model`` + ``card`` as a new version of ``name`` (default: the card's name)."""
        name = check_name(name or card.name)
        card = card.model_copy(update={"name": name})
        with tempfile.TemporaryDirectory(prefix="pretextlab-enc-") as tmp:
            folder = save_encoder(model, card, Path(tmp) / "enc")
            saved = EncoderCard.model_validate_json((folder / CARD).read_text())
            now = _dt.datetime.now(_dt.UTC)
            stamp = f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z"
            version = f"{stamp}-{(saved.weights_sha256 or '000000')[:6]}"
            saved = saved.model_copy(update={"version": version})
            (folder / CARD).write_text(saved.model_dump_json(indent=1))
            uri = sfs.join(self.root, "encoders", name, version)
            # weights first, card last: a reader that sees the card sees complete weights
            self._put(folder / WEIGHTS, sfs.join(uri, WEIGHTS))
            sfs.atomic_write_bytes(sfs.join(uri, CARD), (folder / CARD).read_bytes(), self.storage_options)
        return EncoderRef(name, version, uri, saved)

    def _put(self, local: Path, url: str) -> None:
        fs, path = sfs.get_fs(url, self.storage_options)
        if sfs.is_remote(url):
            fs.put_file(str(local), path)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(local, tmp)
        tmp.replace(target)

    def choose(self, ref: EncoderRef, modality: str, reason: dict[str, Any] | None = None) -> None:
        """Mark ``ref`` as the chosen encoder for ``modality`` (atomic; replaces the previous mark)."""
        mark = {
            "name": ref.name,
            "version": ref.version,
            "modality": modality,
            "reason": reason or {},
            "chosen_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        sfs.atomic_write_bytes(
            sfs.join(self.root, "chosen", f"{check_name(modality)}.json"),
            json.dumps(mark, indent=1).encode(),
            self.storage_options,
        )

    # -- reading -------------------------------------------------------------------------------
    def _card(self, uri: str) -> EncoderCard | None:
        try:
            raw = sfs.read_bytes(sfs.join(uri, CARD), self.storage_options)
        except (FileNotFoundError, OSError):
            return None
        try:
            return EncoderCard.model_validate_json(raw)
        except ValueError:
            return None  # a corrupt card is treated like no card: the version is not offered

    def _listdir(self, url: str) -> list[str]:
        fs, path = sfs.get_fs(url, self.storage_options)
        try:
            fs.invalidate_cache(path)
            entries = fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except PermissionError as exc:
            raise RegistryError(f"{url}: access denied ({exc})") from None
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def names(self) -> list[str]:
        return [n for n in self._listdir(sfs.join(self.root, "encoders")) if NAME_RE.match(n)]

    def versions(self, name: str) -> list[EncoderRef]:
        """Complete versions of ``name``, oldest first."""
        out = []
        for version in self._listdir(sfs.join(self.root, "encoders", check_name(name))):
            uri = sfs.join(self.root, "encoders", name, version)
            card = self._card(uri)
            if card is not None:
                out.append(EncoderRef(name, version, uri, card))
        return out

    def list(self) -> list[EncoderRef]:
        """The latest complete version of every name."""
        return [vs[-1] for n in self.names() if (vs := self.versions(n))]

    def chosen(self, modality: str) -> EncoderRef | None:
        try:
            mark = json.loads(
                sfs.read_bytes(sfs.join(self.root, "chosen", f"{check_name(modality)}.json"), self.storage_options)
            )
        except (FileNotFoundError, OSError):
            return None
        return self.resolve(f"{mark['name']}:{mark['version']}")

    def chosen_marks(self) -> dict[str, dict[str, Any]]:
        """modality -> mark, for every chosen mark in the registry."""
        fs, path = sfs.get_fs(sfs.join(self.root, "chosen"), self.storage_options)
        out: dict[str, dict[str, Any]] = {}
        try:
            fs.invalidate_cache(path)
            files = [e for e in fs.ls(path, detail=False) if e.endswith(".json")]
        except FileNotFoundError:
            return out
        for f in files:
            mark = json.loads(fs.cat_file(f))
            out[mark.get("modality", Path(f).stem)] = mark
        return out

    def resolve(self, spec: str) -> EncoderRef:
        """``name`` / ``name:latest`` / ``name:<version>`` / ``chosen:<modality>`` -> a complete version."""
        name, _, version = spec.partition(":")
        if name == "chosen":
            ref = self.chosen(version)
            if ref is None:
                raise RegistryError(f"{self.root}: no encoder is chosen for modality {version!r}")
            return ref
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise RegistryError(f"{self.root}: no encoder named {name!r} (registered: {known})")
        if version in ("", "latest"):
            return versions[-1]
        for ref in versions:
            if ref.version == version:
                return ref
        raise RegistryError(
            f"{self.root}: encoder {name!r} has no version {version!r} (latest: {versions[-1].version})"
        )

    def local_folder(self, ref: EncoderRef) -> Path:
        """A local folder holding ``ref``'s files: the folder itself, or a verified cache copy for s3."""
        if not sfs.is_remote(ref.uri):
            return Path(ref.uri)
        folder = self.cache_dir / ref.name / ref.version
        if (folder / CARD).is_file():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{ref.version}-", dir=folder.parent))
        try:
            fs, path = sfs.get_fs(ref.uri, self.storage_options)
            fs.get_file(f"{path}/{WEIGHTS}", str(tmp / WEIGHTS))
            fs.get_file(f"{path}/{CARD}", str(tmp / CARD))
            load_encoder(tmp)  # verifies sha256 and shapes before the copy is trusted
            tmp.replace(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def load(self, spec: str, map_location: str = "cpu") -> tuple[torch.nn.Module, EncoderCard, EncoderRef]:
        """Resolve ``spec``, fetch it and rebuild the timm model (sha256-checked)."""
        ref = self.resolve(spec)
        model, card = load_encoder(self.local_folder(ref), map_location=map_location)
        return model, card, ref
