"""A third modality end to end, added as one modality file plus its views: projection radiographs.

DICOM DX files (inferred from the Modality tag) and PNG exports (``--modality radiograph``) ingest as
one-frame grayscale stills with their pixel spacing; the stream, the views, Ray Train pretraining,
evaluation and the encoder card all work from the modality record alone. Serving is covered in
tests/test_serving.py (a radiograph encoder chosen as ``chosen:radiograph`` embeds a DX upload).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretextlab.modalities import create_views, get_modality, list_modalities

SPACING_MM = 0.15


def chest(size: int, label: int, seed: int) -> np.ndarray:
    """A toy chest radiograph (uint8): two dark lung fields, a bright mediastinum whose heart is wide
    (label 1, 'cardiomegaly') or narrow (label 0), quantum-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.1 * y
    for cx in (0.3, 0.7):
        img -= 0.45 * (((x - cx) / 0.17) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1)
    half_width = 0.16 if label else 0.09
    img += 0.35 * (((x - 0.52) / half_width) ** 2 + ((y - 0.62) / 0.14) ** 2 < 1)
    img = rng.poisson(np.clip(img, 0.02, 1) * 200) / 200
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_dx(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", patient: str = "SYNTH-CXR") -> Path:
    """A DICOM Digital X-Ray (DX, for presentation) file with ImagerPixelSpacing, 8 bits stored."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.PatientID, ds.PatientName = patient, "Synthetic^Chest"
    ds.StudyDate = _dt.date.today().strftime("%Y%m%d")
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [SPACING_MM, SPACING_MM]
    stored = 255 - pixels if photometric == "MONOCHROME1" else pixels
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_radiograph_is_registered_with_its_record():
    assert "radiograph" in list_modalities()
    m = get_modality("radiograph")
    assert m.channels == 1 and m.sampling == "frames" and m.noise == "quantum"
    assert {"CR", "DX"} <= set(m.reader.dicom_modalities) and m.reader.still == "cine"
    views = create_views("radiograph", "pair", size=16)
    out = views(
        {"images": torch.from_numpy(chest(48, 1, 0))[None, None].repeat(3, 1, 1, 1)}, torch.Generator().manual_seed(0)
    )
    assert [t.shape for t in out["global"]] == [(3, 1, 16, 16)] * 2
    assert not torch.equal(out["global"][0], out["global"][1])


@pytest.fixture(scope="module")
def cxr_store(ray_session, tmp_path_factory):
    """8 DX files (4 per class, 8 patients, two MONOCHROME1) and 2 PNG exports, ingested into one store."""
    from pretextlab.jobs.ingest import IngestConfig, run_ingest

    raw = tmp_path_factory.mktemp("cxr-raw")
    images, rows = {}, ["item_id,label,patient_id"]
    for i in range(8):
        pixels = chest(64, i % 2, seed=i)
        write_dx(raw / "dicom" / f"cxr{i}.dcm", pixels, "MONOCHROME1" if i in (1, 2) else "MONOCHROME2")
        images[f"cxr{i}"] = pixels
        rows.append(f"cxr{i},{'wide' if i % 2 else 'narrow'},P{i}")
    for j in range(2):
        pixels = chest(64, j, seed=100 + j)
        (raw / "png").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(raw / "png" / f"export{j}.png")
        images[f"export{j}"] = pixels
    labels = raw / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    dest = tmp_path_factory.mktemp("cxr-store")
    first = run_ingest(IngestConfig(sources=[str(raw / "dicom")], dest=str(dest), labels=str(labels)), progress=False)
    assert first.ok, first.render()
    second = run_ingest(
        IngestConfig(
            sources=[str(raw / "png")],
            dest=str(dest),
            modality="radiograph",
            labels=str(labels),
            one_item_per_file=True,
        ),
        progress=False,
    )
    assert second.ok, second.render()
    return dest, images


def test_dicom_dx_and_png_ingest_as_radiograph_stills(cxr_store):
    from pretextlab.storage import open_item, read_catalog

    dest, images = cxr_store
    cat = read_catalog(str(dest)).set_index("item_id")
    assert sorted(cat.index) == sorted(images)
    assert set(cat["modality"]) == {"radiograph"} and set(cat["kind"]) == {"cine"}
    assert set(cat["frames"]) == {1} and set(cat["channels"]) == {1}
    assert list(cat.loc["cxr3", "pixel_spacing_mm"]) == [SPACING_MM, SPACING_MM]  # ImagerPixelSpacing
    assert cat.loc["cxr3", "label"] == "wide" and cat.loc["cxr0", "patient_id"] == "P0"
    for item_id, pixels in images.items():  # MONOCHROME1 is inverted back to display polarity
        frame = np.asarray(open_item(str(dest), item_id).level(0)[0])  # (C, Y, X)
        np.testing.assert_array_equal(frame[0], pixels)


def test_radiograph_pretrains_on_ray_train_and_evaluates(cxr_store, tmp_path):
    """I-JEPA on radiograph frames, 2 DDP workers: the card carries the modality's channels and
    normalisation, and frozen evaluation reads the same store."""
    from pretextlab.evaluate.report import evaluate_encoder
    from pretextlab.jobs.pretrain import run_pretrain
    from pretextlab.training.config import PretrainConfig

    dest, _ = cxr_store
    cfg = PretrainConfig.model_validate(
        {
            "name": "cxr-ijepa",
            "modality": "radiograph",
            "data": {"kind": "frames", "sources": [{"uri": str(dest), "modality": "radiograph"}], "clip": {"size": 32}},
            "objective": {
                "name": "ijepa",
                "backbone": {"arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1},
            },
            "train": {
                "steps": 2,
                "batch_size": 4,
                "num_workers": 2,
                "cpus_per_worker": 0.5,
                "data_cpus": 0.25,
                "log_every": 1,
                "checkpoint_every": 2,
            },
            "storage": str(tmp_path / "runs"),
            "registry": str(tmp_path / "registry"),
        }
    )
    res = run_pretrain(cfg)
    card = json.loads(Path(res.encoder.uri, "card.json").read_text())
    assert card["modality"] == "radiograph" and card["in_chans"] == 1
    assert card["mean"] == [0.5] and card["std"] == [0.25]  # RadiographViews' normalisation
    result = evaluate_encoder(
        res.encoder.uri, str(dest), {"modality": "radiograph", "shots": [1], "fewshot_repeats": 1, "n_bootstrap": 50}
    )
    ds = result["dataset"]
    assert ds["n_items"] == 8 and ds["class_names"] == ["narrow", "wide"]  # the labelled DX items, not the PNGs
    assert ds["kinds"] == ["cine"] and result["encoder"]["in_chans"] == 1
    assert result["split"]["n_groups"] == 8  # one patient each: the split is grouped by patient
