"""Request images -> validated uint8 arrays (N, H, W, C), before anything reaches a batch.

Accepted: ``.npy`` (uint8; (H, W), (H, W, C), (N, H, W) or (N, H, W, C) with C in 1, 3, 4), PNG, JPEG,
TIFF (first page) and DICOM (every frame; 8-bit, or windowed to 8 bits from BitsStored). Sizes are
checked from the header before pixels are decoded, so a small file cannot claim a huge image.
Every failure is a :class:`~pretextlab.serving.errors.ApiError` naming the image and the problem.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from pretextlab.serving.errors import ApiError, bad_request, invalid, too_large
from pretextlab.storage.pixels import to_uint8

NPY_MAGIC = b"\x93NUMPY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class ImageLimits:
    """Per-request bounds on what decoding may produce."""

    max_images: int
    max_image_pixels: int
    max_total_pixels: int


def sniff(data: bytes) -> str | None:
    """The format of ``data`` from its first bytes: npy, png, jpeg, tiff, dicom, or None."""
    if data.startswith(NPY_MAGIC):
        return "npy"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[:4] in TIFF_MAGICS:
        return "tiff"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


class _HasShape(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


#: an array, or a :class:`_Shape` stand-in checked before the array exists
_S = TypeVar("_S", bound=_HasShape)


def _check_shape(images: _S, what: str, limits: ImageLimits) -> _S:
    n, h, w, c = images.shape
    if h < 1 or w < 1 or n < 1:
        raise invalid(f"{what}: empty image (shape {tuple(images.shape)})")
    if c not in (1, 3, 4):
        raise invalid(f"{what}: {c} channels; send 1 (gray), 3 (RGB) or 4 (RGBA)")
    if h * w > limits.max_image_pixels:
        raise too_large(f"{what}: {h}x{w} pixels exceeds the limit of {limits.max_image_pixels} per image")
    if n > limits.max_images:
        raise too_large(f"{what}: {n} images exceeds the limit of {limits.max_images} per request")
    return images


def _npy_header(data: bytes, what: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    buf = io.BytesIO(data)
    try:
        major, _ = np.lib.format.read_magic(buf)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(buf, max_header_size=10_000)
    except Exception as exc:  # numpy raises ValueError/SyntaxError/... on a malformed header
        raise bad_request(f"{what}: not a valid .npy array ({type(exc).__name__}: {str(exc)[:200]})") from None
    return tuple(shape), dtype, fortran


def decode_npy(data: bytes, what: str, limits: ImageLimits) -> np.ndarray:
    """A ``.npy`` payload -> (N, H, W, C) uint8; the header is checked before the array is built."""
    shape, dtype, _ = _npy_header(data, what)
    if dtype.hasobject:
        raise invalid(f"{what}: object arrays are refused (no pickles); send uint8 pixels")
    if dtype != np.uint8:
        raise invalid(f"{what}: dtype {dtype} is not supported; send uint8 pixels (0-255)")
    if len(shape) == 2:
        shape4 = (1, *shape, 1)
    elif len(shape) == 3:
        shape4 = (1, *shape) if shape[-1] in (1, 3, 4) else (*shape, 1)
    elif len(shape) == 4:
        shape4 = shape
    else:
        raise invalid(f"{what}: array of shape {shape}; expected (H, W), (H, W, C), (N, H, W) or (N, H, W, C)")
    _check_shape(_Shape(shape4), what, limits)  # before the array is allocated
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise bad_request(f"{what}: cannot read the .npy array ({type(exc).__name__}: {str(exc)[:200]})") from None
    return np.ascontiguousarray(arr.reshape(shape4))


class _Shape:
    """A stand-in with a ``.shape`` so sizes can be checked before an array exists."""

    shape: tuple[int, ...]

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


def _pil_to_array(img, what: str) -> np.ndarray:
    mode = img.mode
    if mode in ("1", "L", "P", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "PA", "RGBX"):
        if mode in ("1", "LA"):
            img = img.convert("L")
        elif mode in ("P", "PA", "CMYK", "YCbCr", "RGBX"):
            img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
        arr = np.asarray(img, dtype=np.uint8)
    else:
        raise invalid(f"{what}: {mode} images (16-bit or float) are not supported; send 8-bit images or uint8 .npy")
    return arr[..., None] if arr.ndim == 2 else arr


def decode_pil(data: bytes, what: str, limits: ImageLimits) -> np.ndarray:
    """PNG / JPEG / TIFF bytes -> (1, H, W, C) uint8 (first page of a multi-page TIFF)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            _check_shape(_Shape((1, h, w, 3)), what, limits)  # before any pixel is decoded
            img.load()
            arr = _pil_to_array(img, what)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large(f"{what}: image too large to decode") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad files
        raise invalid(f"{what}: cannot decode the image ({type(exc).__name__}: {str(exc)[:200]})") from None
    return _check_shape(np.ascontiguousarray(arr[None]), what, limits)


def _to_uint8(frames: np.ndarray, bits: int) -> np.ndarray:
    """The one bit-depth rule (storage.pixels): the top 8 of the stored bits."""
    return to_uint8(frames, bits)


def decode_dicom(data: bytes, what: str, limits: ImageLimits) -> np.ndarray:
    """DICOM bytes -> (frames, H, W, C) uint8, display-ready (palette to RGB, YBR to RGB, MONOCHROME1 inverted)."""
    import pydicom
    from pydicom.pixels import apply_color_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if rows < 1 or cols < 1 or "PixelData" not in ds:
            raise invalid(f"{what}: DICOM file holds no image (no Rows/Columns/PixelData)")
        _check_shape(_Shape((frames, rows, cols, 3 if samples == 3 else 1)), what, limits)
        pixels = ds.pixel_array
        photometric = str(ds.get("PhotometricInterpretation", ""))
        if photometric == "PALETTE COLOR":  # YBR is already RGB: pydicom converts it by default
            pixels = apply_color_lut(pixels, ds)
        bits = int(ds.get("BitsStored", 8) or 8)
        if photometric == "MONOCHROME1":
            pixels = (np.asarray((1 << bits) - 1, dtype=pixels.dtype) - pixels).astype(pixels.dtype)
        pixels = _to_uint8(np.asarray(pixels), bits)
    except ApiError:
        raise
    except Exception as exc:  # pydicom raises many kinds on malformed files
        raise invalid(f"{what}: cannot decode the DICOM file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if frames == 1:
        pixels = pixels[None]
    if pixels.ndim == 3:  # (frames, H, W) gray
        pixels = pixels[..., None]
    return _check_shape(np.ascontiguousarray(pixels), what, limits)


def decode_image(data: bytes, what: str, limits: ImageLimits) -> np.ndarray:
    """Any accepted image payload -> (N, H, W, C) uint8; refuses what it cannot identify."""
    if not data:
        raise bad_request(f"{what}: empty")
    fmt = sniff(data)
    if fmt == "npy":
        return decode_npy(data, what, limits)
    if fmt in ("png", "jpeg", "tiff"):
        return decode_pil(data, what, limits)
    if fmt == "dicom":
        return decode_dicom(data, what, limits)
    raise invalid(f"{what}: not a PNG, JPEG, TIFF, DICOM or .npy file (unrecognised first bytes)")


def check_total(images: list[np.ndarray], limits: ImageLimits) -> None:
    """Refuse a request whose images together exceed the image-count or pixel budget."""
    count = sum(len(a) for a in images)
    if count > limits.max_images:
        raise too_large(f"{count} images exceeds the limit of {limits.max_images} per request")
    pixels = sum(a.shape[0] * a.shape[1] * a.shape[2] for a in images)
    if pixels > limits.max_total_pixels:
        raise too_large(f"{pixels} pixels in total exceeds the limit of {limits.max_total_pixels} per request")
