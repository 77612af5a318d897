"""Independent decoders for pixel-identity checks: each reads the source with its own library."""

from __future__ import annotations

import numpy as np


def dicom_frames(path) -> np.ndarray:
    """(T, Y, X, C) as pydicom decodes them, palette colour through its LUT, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n == 1:
        arr = arr[None]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif ds.PhotometricInterpretation == "MONOCHROME1":
        arr = (2 ** int(ds.BitsStored) - 1) - arr
    if arr.ndim == 3:
        arr = arr[..., None]
    return arr


def dicom_wsi_level(path) -> np.ndarray:
    """A whole DICOM WSI level (Y, X, C) assembled from pydicom-decoded TILED_FULL frames."""
    import pydicom

    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    if int(ds.NumberOfFrames) == 1:
        frames = frames[None]
    th, tw = ds.Rows, ds.Columns
    H, W = ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns
    nx = -(-W // tw)
    ny = -(-H // th)
    out = np.zeros((ny * th, nx * tw, frames.shape[-1]), frames.dtype)
    for i in range(ny * nx):
        r, c = divmod(i, nx)
        out[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = frames[i]
    return out[:H, :W]


def tiff_levels(path) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        return [lv.asarray() for lv in tf.series[0].levels]


def video_frames(path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        fmt = "gray" if s.codec_context.pix_fmt.startswith("gray") else "rgb24"
        frames = [f.to_ndarray(format=fmt) for f in c.decode(s)]
    arr = np.stack(frames)
    return arr[..., None] if arr.ndim == 3 else arr


def pil_image(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("RGBA", "P", "CMYK", "LA") and im.mode != "LA":
            im = im.convert("RGB")
        arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr
