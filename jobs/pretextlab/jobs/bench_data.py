"""Write a controlled benchmark set (pretextlab.phantoms) into a labelled store through the normal ingest path.

    pretextlab bench-data DEST [--modality ultrasound|histology] [--locality L] [--noise N]
                          [--items N] [--size PX] [--seed S] [--raw DIR] [--geometry sector|linear]

The generated stills become a MedMNIST-style NPZ (``train_/val_/test_images`` and ``_labels``, a
seeded 60/20/20 split) and are ingested like any user's NPZ, so the command doubles as an ingest
test. ROI masks travel the same way: a second NPZ stack ``<name>-roi`` holds each image's mask
(0/255, same split and index), and a labels CSV attaches a catalog column ``roi`` to every image
row naming the item id of its mask row (``<name>-roi-<split>-<index>``). Mask rows carry no label,
so evaluation and pretraining streams never take them for images. The settings and each item's
nuisance values (gain, depth, stain...) go to ``DEST/bench-data.json``. The NPZ sources are written to
``--raw`` (default: a temporary folder, removed afterwards). Cine loops are not written here (the
NPZ layout holds stills).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pretextlab.core.errors import UserError

#: --modality (generator names, and the registered modality names) -> the store's modality
MODALITY = {"ultrasound": "ultrasound", "histology": "histopathology", "histopathology": "histopathology"}
GENERATOR = {"histopathology": "histology"}
SPLITS = (("train", 0.6), ("val", 0.2), ("test", 0.2))


def _unit(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", metavar="DEST", help="store to write (local folder or s3://bucket/prefix)")
    parser.add_argument("--modality", choices=sorted(MODALITY), default="ultrasound")
    parser.add_argument("--locality", type=_unit, default=0.0, help="0 = label in global structure, 1 = local")
    parser.add_argument("--noise", type=_unit, default=0.5, help="speckle strength / stain variation, 0-1")
    parser.add_argument("--items", type=int, default=400, help="number of images (even; balanced labels)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--geometry", choices=["sector", "linear"], help="ultrasound probe geometry (default sector)")
    parser.add_argument("--raw", metavar="DIR", help="keep the generated NPZ sources here (default: temporary)")


def split_of(n: int, seed: int) -> np.ndarray:
    """A seeded 60/20/20 train/val/test assignment of n items."""
    order = np.random.default_rng([seed, 0x5B1]).permutation(n)
    out = np.empty(n, dtype=object)
    start = 0
    for i, (name, share) in enumerate(SPLITS):
        stop = n if i == len(SPLITS) - 1 else start + round(share * n)
        out[order[start:stop]] = name
        start = stop
    return out


def write_sources(ps: Any, folder: Path, name: str, seed: int) -> tuple[Path, Path, Path, list[dict[str, Any]]]:
    """The image NPZ, the ROI NPZ and the labels CSV (item_id, roi) for phantom set ``ps``; per-item records."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = split_of(len(ps), seed)
    images, masks, records = {}, {}, []
    for split, _ in SPLITS:
        idx = np.nonzero(splits == split)[0]
        images[f"{split}_images"] = ps.images[idx]
        images[f"{split}_labels"] = ps.labels[idx].reshape(-1, 1).astype(np.uint8)
        masks[f"{split}_images"] = ps.masks[idx].astype(np.uint8) * 255
        for j, i in enumerate(idx):
            records.append(
                {
                    "item_id": f"{name}-{split}-{j:06d}",
                    "roi": f"{name}-roi-{split}-{j:06d}",
                    "index": int(i),
                    "label": int(ps.labels[i]),
                    **ps.meta["items"][i],
                }
            )
    npz, roi = folder / f"{name}.npz", folder / f"{name}-roi.npz"
    np.savez_compressed(npz, **images)
    np.savez_compressed(roi, **masks)
    csv = folder / f"{name}-roi.csv"
    csv.write_text("item_id,roi\n" + "".join(f"{r['item_id']},{r['roi']}\n" for r in records))
    return npz, roi, csv, records


def run(args: argparse.Namespace) -> int:
    from pretextlab.jobs.ingest import IngestConfig, run_ingest
    from pretextlab.phantoms import generate
    from pretextlab.storage import fs as sfs

    if args.items < 10 or args.items % 2:
        raise UserError(f"--items must be an even number >= 10 (balanced labels, three splits), got {args.items}")
    options = {"geometry": args.geometry} if args.geometry else {}
    if options and args.modality != "ultrasound":
        raise UserError("--geometry applies to --modality ultrasound only")
    print(
        f"generating {args.items} {args.modality} phantoms ({args.size} px, locality {args.locality:g}, "
        f"noise {args.noise:g}, seed {args.seed})"
    )
    ps = generate(
        GENERATOR.get(args.modality, args.modality),
        n=args.items,
        size=args.size,
        locality=args.locality,
        noise=args.noise,
        seed=args.seed,
        **options,
    )
    name = f"phantom-{args.modality}"
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        folder = Path(args.raw) if args.raw else Path(tmp)
        npz, roi, csv, records = write_sources(ps, folder, name, args.seed)
        report = run_ingest(
            IngestConfig(
                sources=[str(npz), str(roi)], dest=args.dest, modality=MODALITY[args.modality], labels=str(csv)
            )
        )
    print(report.render())
    if not report.ok:
        return 1
    if report.unmatched_labels:
        raise UserError(
            f"{args.dest}: ROI rows matched no image ({report.unmatched_labels[:3]}...): "
            "was the store written before with other items?"
        )
    summary = {
        "generator": "pretextlab.phantoms",
        "modality": args.modality,
        "items": args.items,
        "size": args.size,
        "locality": args.locality,
        "noise": args.noise,
        "seed": args.seed,
        "options": ps.meta["options"],
        "class_names": ps.meta["class_names"],
        "roi_column": "roi",
        "records": records,
    }
    sfs.atomic_write_bytes(
        sfs.join(sfs.normalize(args.dest), "bench-data.json"), json.dumps(summary, indent=1, default=float).encode()
    )
    counts = np.bincount(ps.labels, minlength=2)
    print(
        f"wrote {args.items} labelled images ({counts[0]} normal, {counts[1]} abnormal) with ROI masks "
        f"(catalog column 'roi') to {args.dest}"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pretextlab.jobs.bench_data", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
