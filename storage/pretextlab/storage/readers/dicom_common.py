"""DICOM helpers shared by the whole-slide and the ultrasound/still readers."""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut

from pretextlab.storage.readers.base import ReaderError

VL_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_header(path: str) -> pydicom.Dataset:
    """The dataset without pixel data, or a one-line ReaderError."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise ReaderError(f"not a readable DICOM file: {type(exc).__name__}: {exc}") from None


class DicomIds(TypedDict):
    """The identifiers :class:`~pretextlab.storage.readers.base.SourceInfo` takes (``**ids(ds)``)."""

    patient_id: str | None
    study_id: str | None
    series_id: str | None


def ids(ds: pydicom.Dataset) -> DicomIds:
    """Patient, study and series identifiers when the file has them."""

    def get(name: str) -> str | None:
        v = ds.get(name)
        return str(v) if v not in (None, "") else None

    return {
        "patient_id": get("PatientID"),
        "study_id": get("StudyInstanceUID"),
        "series_id": get("SeriesInstanceUID"),
    }


def describe(ds: pydicom.Dataset) -> dict[str, Any]:
    """A small, JSON-safe summary of the header for the item's source metadata."""
    out: dict[str, Any] = {}
    for key in (
        "SOPClassUID",
        "Modality",
        "Manufacturer",
        "ManufacturerModelName",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "SamplesPerPixel",
        "NumberOfFrames",
        "Rows",
        "Columns",
        "SeriesDescription",
        "ImageType",
    ):
        v = ds.get(key)
        if v is None:
            continue
        if isinstance(v, pydicom.multival.MultiValue):
            v = [str(x) for x in v]
        elif not isinstance(v, (int, float)):
            v = str(v)
        out[key] = v
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None:
        out["TransferSyntaxUID"] = str(ts)
        out["TransferSyntax"] = ts.name
    return out


def check_decodable(ds: pydicom.Dataset) -> None:
    """Fail early, with the transfer syntax named, when no installed decoder handles the pixels."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ReaderError(f"unsupported transfer syntax {ts.name} ({ts}): no pixel decoder for it") from None
    if not decoder.is_available:
        raise ReaderError(f"unsupported transfer syntax {ts.name} ({ts}): its decoder plugins are not installed")


def to_display(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Decoded frame -> what a viewer shows: palette colour to RGB, MONOCHROME1 inverted."""
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        return apply_color_lut(frame, ds)
    if photometric == "MONOCHROME1":
        bits = int(ds.get("BitsStored", frame.dtype.itemsize * 8))
        return (np.asarray((1 << bits) - 1, dtype=frame.dtype) - frame).astype(frame.dtype)
    return frame
