"""The reader registry: a name -> reader class map, and sniffing a file to pick one."""

from __future__ import annotations

from typing import Any, ClassVar

from pretextlab.core.registry import Registry
from pretextlab.storage.readers.base import Modality, Source


class Reader:
    """Base class. Subclasses set ``name``/``suffixes``, implement ``sniff`` and ``open``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: Readers are tried in ascending ``priority`` order when sniffing.
    priority: ClassVar[int] = 100

    @classmethod
    def sniff(cls, head: bytes, name: str, header: Any = None) -> bool:
        """True if this reader handles a file starting with ``head`` called ``name``.

        ``header`` is the parsed DICOM header (without pixels) for DICOM files, else None.
        """
        raise NotImplementedError

    def open(self, paths: list[str], modality: Modality | None) -> Source:
        """Open local ``paths`` (one file, or the files of one DICOM series)."""
        raise NotImplementedError


READERS: Registry[type[Reader]] = Registry("reader")


def register_reader(cls: type[Reader]) -> type[Reader]:
    """Class decorator adding a reader to :data:`READERS` under ``cls.name`` (empty and duplicate names
    are refused)."""
    return READERS.register(cls.name, cls)


def get_reader(name: str) -> Reader:
    """An instance of the reader called ``name``; UnknownName listing the known readers otherwise."""
    return READERS.get(name)()


def list_readers() -> list[type[Reader]]:
    return sorted(READERS.values(), key=lambda r: (r.priority, r.name))


def sniff(head: bytes, name: str, header: Any = None) -> str | None:
    """The name of the first reader that claims the file, or None."""
    for reader in list_readers():
        if reader.sniff(head, name, header):
            return reader.name
    return None
