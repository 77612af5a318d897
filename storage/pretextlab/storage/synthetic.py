"""Generated sample data in the real formats: pyramidal TIFF/SVS-like slides, DICOM ultrasound cine loops
and whole-slide series, videos, PNG tiles and MedMNIST-style NPZ.

Used by ``pretextlab demo``, the tests and the benchmarks. Slides are generated tile by tile, so a
40,000 x 40,000 slide is written without ever being in memory. The images carry a learnable signal
(class-dependent structure) so later issues can check that objectives learn something.
"""

from __future__ import annotations

import datetime as _dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# H&E-ish colours (RGB): background glass, eosin (pink stroma), haematoxylin (purple nuclei).
_GLASS = np.array([242, 240, 245], np.float32)
_EOSIN = np.array([222, 150, 190], np.float32)
_HEMA = np.array([95, 60, 150], np.float32)


def he_region(y0: int, x0: int, h: int, w: int, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """An (h, w, 3) uint8 H&E-like region at (y0, x0) of a slide whose level-0 is ``scale`` x finer.

    Deterministic in (seed, coordinates): tiles of the same slide agree at their borders and lower
    levels look like downsampled upper ones.
    """
    rng = np.random.default_rng(seed)
    fy, fx, ph = rng.uniform(0.002, 0.006, 3), rng.uniform(0.002, 0.006, 3), rng.uniform(0, 6.28, 6)
    yy = (y0 + np.arange(h, dtype=np.float32))[:, None] * scale
    xx = (x0 + np.arange(w, dtype=np.float32))[None, :] * scale
    field = sum(np.sin(yy * fy[i] + ph[i]) * np.cos(xx * fx[i] + ph[i + 3]) for i in range(3))
    tissue = np.clip((field - 0.1) * 3.0, 0.0, 1.0)[..., None]
    nuclei = (np.sin(yy * 0.21 + 1.3) * np.sin(xx * 0.23 + 0.7) > 0.85).astype(np.float32)[..., None]
    stain = _EOSIN * (1 - nuclei) + _HEMA * nuclei
    img = _GLASS * (1 - tissue) + stain * tissue
    noise = ((yy * 131 + xx * 71).astype(np.int64) % 7 - 3).astype(np.float32)[..., None]
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _tiles(height: int, width: int, tile: int, scale: float, seed: int) -> Iterator[np.ndarray]:
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            yield he_region(ty, tx, tile, tile, scale, seed)


def write_slide_tiff(
    path: str | Path,
    height: int = 4096,
    width: int = 4096,
    tile: int = 512,
    levels: int = 3,
    mpp: float | None = 0.5,
    compression: str | None = "jpeg",
    svs: bool = False,
    seed: int = 0,
) -> Path:
    """A tiled, pyramidal RGB TIFF (SubIFDs, 2x per level), written tile by tile.

    ``svs=True`` writes an Aperio-style description (``MPP``, ``AppMag``) and levels as pages, as
    Aperio scanners do; otherwise the pixel size goes in the TIFF resolution tags.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = [(height >> i, width >> i) for i in range(levels) if min(height >> i, width >> i) >= 16]
    common: dict[str, Any] = {  # TiffWriter.write keywords, shared by every level
        "dtype": np.uint8,
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": compression,
        "metadata": None,
    }
    if compression == "jpeg":
        common["compressionargs"] = {"level": 90}
    big = height * width * 3 > 2**31
    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        for i, (h, w) in enumerate(shapes):
            kw = dict(common)
            if svs:
                if i == 0:
                    kw["description"] = (
                        f"Aperio Image Library pretextlab-synthetic\n{w}x{h} ({tile}x{tile}) "
                        f"|AppMag = 20|MPP = {mpp or 0.5:.4f}"
                    )
            else:
                if i == 0:
                    kw["subifds"] = len(shapes) - 1
                    if mpp:
                        kw["resolution"] = (1e4 / mpp, 1e4 / mpp)
                        kw["resolutionunit"] = "CENTIMETER"
                else:
                    kw["subfiletype"] = 1
            tif.write(_tiles(h, w, tile, float(2**i), seed), shape=(h, w, 3), **kw)
    return path


def ultrasound_frames(frames: int, rows: int, cols: int, seed: int = 0, label: int = 0) -> np.ndarray:
    """(T, rows, cols) uint8 B-mode-like frames: a sector fan of speckle with a moving bright structure.

    ``label`` changes the structure (0: round lesion, 1: elongated band), a signal for tests.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    apex_x = cols / 2
    angle = np.arctan2(xx - apex_x, yy + 1)
    radius = np.hypot(xx - apex_x, yy + 1)
    fan = (np.abs(angle) < 0.6) & (radius < rows * 0.98)
    out = np.zeros((frames, rows, cols), np.uint8)
    for t in range(frames):
        speckle = rng.rayleigh(0.35, (rows, cols)).astype(np.float32)
        cy = rows * (0.45 + 0.1 * np.sin(t / 3.0))
        cx = cols * 0.5
        if label == 0:
            blob = np.exp(-(((yy - cy) / (rows * 0.08)) ** 2 + ((xx - cx) / (cols * 0.08)) ** 2))
        else:
            blob = np.exp(-(((yy - cy) / (rows * 0.03)) ** 2)) * (np.abs(xx - cx) < cols * 0.25)
        depth_gain = 1.0 - 0.5 * yy / rows
        img = (0.35 * speckle * depth_gain + 0.6 * blob * speckle) * 255.0
        out[t] = np.where(fan, np.clip(img, 0, 255), 0).astype(np.uint8)
    return out


def _us_dataset(rows: int, cols: int, frames: int, samples: int, photometric: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    multi = frames > 1
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1" if multi else "1.2.840.10008.5.1.4.1.1.6.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.PatientID = "SYNTH-001"
    ds.PatientName = "Synthetic^Phantom"
    ds.StudyDate = _dt.date.today().strftime("%Y%m%d")
    ds.Manufacturer = "pretextlab-synthetic"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if multi:
        ds.NumberOfFrames = frames
        ds.FrameTime = 40.0
        ds.FrameIncrementPointer = (0x0018, 0x1063)
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = 0.02
    ds.SequenceOfUltrasoundRegions = [region]
    return ds


def write_us_dicom(
    path: str | Path,
    frames: int = 8,
    rows: int = 128,
    cols: int = 160,
    syntax: str = "explicit",
    color: str = "MONOCHROME2",
    seed: int = 0,
    label: int = 0,
) -> Path:
    """A DICOM ultrasound image (1 frame) or cine loop (multi-frame).

    syntax: explicit | rle | jpeg2000 | jpeg-baseline; color: MONOCHROME2 | RGB | PALETTE COLOR.
    """
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = ultrasound_frames(frames, rows, cols, seed, label)
    if color == "RGB":
        pixels = np.stack([gray, (gray * 0.8).astype(np.uint8), gray // 2], axis=-1)
        samples = 3
    else:
        pixels, samples = gray, 1
    ds = _us_dataset(rows, cols, frames, samples, color)
    if color == "PALETTE COLOR":
        ramp = np.arange(256, dtype=np.uint16)
        for ch, lut in zip("Red Green Blue".split(), (ramp, ramp // 2, 255 - ramp), strict=True):
            setattr(ds, f"{ch}PaletteColorLookupTableDescriptor", [256, 0, 8])
            setattr(ds, f"{ch}PaletteColorLookupTableData", lut.astype(np.uint8).tobytes())
    arr = pixels if frames > 1 else pixels[0]
    if syntax == "explicit":
        ds.PixelData = arr.tobytes()
    elif syntax == "rle":
        ds.compress(RLELossless, arr)
    elif syntax == "jpeg2000":
        ds.compress(JPEG2000Lossless, arr)
    elif syntax == "jpeg-baseline":
        from PIL import Image

        if color == "RGB":
            ds.PhotometricInterpretation = "YBR_FULL_422"
        frames_bytes = []
        for frame in pixels:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="JPEG", quality=95, subsampling=2 if samples == 3 else 0)
            frames_bytes.append(buf.getvalue())
        ds.PixelData = encapsulate(frames_bytes)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    else:
        raise ValueError(f"unknown syntax {syntax!r}")
    ds.save_as(path, enforce_file_format=True)
    return path


def _encode_jpeg(tile: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _wsi_level_dataset(
    tiles: list[np.ndarray] | list[bytes],
    h: int,
    w: int,
    tile: int,
    lv: int,
    uids: tuple[str, str, str],
    compression: str,
    offset_table: str,
):
    """One VL WSI level (TILED_FULL): native RGB frames, or JPEG baseline fragments (one per frame) with
    no offset table, a Basic Offset Table or an Extended Offset Table."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate, encapsulate_extended
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if compression == "none" else JPEGBaseline8Bit
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
    ds.Modality = "SM"
    ds.PatientID = "SYNTH-002"
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE" if lv == 0 else "RESAMPLED"]
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = h, w
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = len(tiles)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB" if compression == "none" else "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    measures = Dataset()
    measures.PixelSpacing = [0.00025 * 2**lv, 0.00025 * 2**lv]
    measures.SliceThickness = 0.004
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    optical.ObjectiveLensPower = 40
    ds.OpticalPathSequence = [optical]
    if compression == "none":
        ds.PixelData = np.stack(tiles).tobytes()  # type: ignore[arg-type]
    elif compression == "jpeg":
        frames = [t if isinstance(t, bytes) else _encode_jpeg(t) for t in tiles]
        if offset_table == "eot":
            ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
        else:
            ds.PixelData = encapsulate(frames, has_bot=offset_table == "bot")
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        raise ValueError(f"compression must be 'none' or 'jpeg', not {compression!r}")
    return ds


def write_wsi_dicom_series(
    folder: str | Path,
    height: int = 1500,
    width: int = 2000,
    tile: int = 256,
    levels: int = 2,
    seed: int = 1,
    compression: str = "none",
    offset_table: str = "none",
) -> list[Path]:
    """A DICOM VL Whole Slide Microscopy series: one file per level, TILED_FULL; uncompressed, or
    ``compression="jpeg"`` (baseline, one fragment per frame) with ``offset_table`` none / bot / eot."""
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uids = (generate_uid(), generate_uid(), generate_uid())
    out = []
    for lv in range(levels):
        h, w = height >> lv, width >> lv
        nx, ny = -(-w // tile), -(-h // tile)
        full = he_region(0, 0, ny * tile, nx * tile, float(2**lv), seed)
        full[h:, :] = 255
        full[:, w:] = 255
        tiles = [full[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(ny) for c in range(nx)]
        ds = _wsi_level_dataset(tiles, h, w, tile, lv, uids, compression, offset_table)
        p = folder / f"level-{lv}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def write_wsi_dicom_level(
    path: str | Path,
    frames: int,
    tile: int = 64,
    compression: str = "jpeg",
    offset_table: str = "none",
    distinct: int = 64,
    seed: int = 1,
) -> Path:
    """One big VL WSI level of ``frames`` tiles (a square-ish grid), fast: ``distinct`` H&E tiles are made
    (and JPEG-encoded) once and repeated. For benchmarks of per-tile cost against the number of frames."""
    from pydicom.uid import generate_uid

    nx = int(np.ceil(np.sqrt(frames)))
    ny = -(-frames // nx)
    region = he_region(0, 0, tile, tile * distinct, 1.0, seed)
    base = [np.ascontiguousarray(region[:, i * tile : (i + 1) * tile]) for i in range(distinct)]
    made: list[Any] = [_encode_jpeg(t) for t in base] if compression == "jpeg" else base
    tiles = [made[i % distinct] for i in range(nx * ny)]
    ds = _wsi_level_dataset(tiles, ny * tile, nx * tile, tile, 0, (generate_uid(),) * 3, compression, offset_table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_video(
    path: str | Path,
    frames: int = 12,
    rows: int = 96,
    cols: int = 128,
    codec: str = "libx264",
    gray: bool = False,
    fps: int = 25,
    seed: int = 0,
) -> Path:
    """An ultrasound-like cine loop as video (MP4/H.264, AVI/MJPEG or FFV1, MKV...)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ultrasound_frames(frames, rows, cols, seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)  # a video codec
        stream.width, stream.height = cols, rows
        if gray:
            stream.pix_fmt = "gray"
        elif codec == "mjpeg":
            stream.pix_fmt = "yuvj420p"
        elif codec == "ffv1":
            stream.pix_fmt = "bgr0"
        else:
            stream.pix_fmt = "yuv420p"
        for f in data:
            if gray:
                frame = av.VideoFrame.from_ndarray(f, format="gray")
            else:
                frame = av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, axis=2), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_png(path: str | Path, size: int = 256, seed: int = 0, rgba: bool = False) -> Path:
    """An H&E-like tile as PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = he_region(seed * 997, seed * 577, size, size, 1.0, seed)
    if rgba:
        img = np.concatenate([img, np.full((size, size, 1), 255, np.uint8)], axis=2)
    Image.fromarray(img).save(path)
    return path


def write_npz(path: str | Path, per_split: int = 32, size: int = 28, channels: int = 1, seed: int = 0) -> Path:
    """A MedMNIST-layout archive with two classes: vertical vs horizontal stripes under noise."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        labels = rng.integers(0, 2, size=(per_split, 1)).astype(np.uint8)
        yy, xx = np.mgrid[0:size, 0:size]
        images = []
        for lab in labels[:, 0]:
            pattern = np.sin((xx if lab == 0 else yy) * 0.9) * 60 + 128
            img = np.clip(pattern + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
            images.append(np.repeat(img[..., None], channels, axis=2) if channels > 1 else img)
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = labels
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **arrays to allow_pickle
    return path


def make_sample_set(folder: str | Path, seed: int = 0, liver_loops: int = 4) -> dict[str, list[Path]]:
    """The demo set: slides (pyramidal TIFF, SVS-like), ``liver_loops`` labelled ultrasound cine loops
    (DICOM, one patient each) plus an MP4, an NPZ, and ``labels.csv`` (item_id, label, patient_id, split)."""
    folder = Path(folder)
    slides = [
        write_slide_tiff(
            folder / "slides" / f"slide-{i}.tif", 2048, 2048 + 512 * i, levels=2, seed=seed + i, svs=(i == 1)
        )
        for i in range(2)
    ]
    cines = [
        write_us_dicom(
            folder / "ultrasound" / f"liver-{i}.dcm",
            frames=8,
            syntax=("explicit", "rle")[i % 2],
            seed=seed + i,
            label=i % 2,
        )
        for i in range(liver_loops)
    ]
    cines.append(write_video(folder / "ultrasound" / "cine-0.mp4", seed=seed))
    npz = [write_npz(folder / "tiles" / "stripes.npz", per_split=16, seed=seed)]
    rows = ["item_id,label,patient_id,split"]
    for i, p in enumerate(slides):
        rows.append(f"{p.stem},{'tumour' if i % 2 else 'normal'},P{i:03d},train")
    for i, p in enumerate(cines[:liver_loops]):
        split = "val" if i >= liver_loops - max(1, liver_loops // 4) else "train"  # the last quarter
        rows.append(f"{p.stem},{'lesion' if i % 2 == 0 else 'band'},P{10 + i:03d},{split}")
    labels = folder / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return {"slides": slides, "cines": cines, "npz": npz, "labels": [labels]}
