"""The controlled benchmark's two controls per setting: random-init kNN ceiling and supervised CNN floor.

    python benchmarks/phantom_controls.py [--modalities ultrasound,histology] [--localities 0,0.5,1]
        [--noises 0,0.5,1] [--items 400] [--train N] [--epochs 20] [--out .bench/phantom_controls.json]

Per setting: ``--items`` items (seed 0) embedded by random-init timm ViT-Tiny backbones (64 px,
patch 8; depth 4 as in configs/pretrain/*.yaml and depth 12, CLS token and mean pooling), classified
by 5-fold weighted kNN (k = 20); and a small CNN trained on ``--train`` items (seed 1; default the
test's budget per modality, ``FLOOR_TRAIN_ITEMS``), with the modality's flips (``augment_for``),
scored on 200 held-out items (seed 2). Balanced accuracy with 95 % bootstrap CIs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pretextlab.evaluate.controls import FLOOR_EPOCHS, FLOOR_TRAIN_ITEMS, augment_for, random_init_knn, supervised_cnn
from pretextlab.phantoms import generate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import compare, print_figures, write_results


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modalities", default="ultrasound,histology")
    p.add_argument("--localities", type=_floats, default=[0.0, 0.5, 1.0])
    p.add_argument("--noises", type=_floats, default=[0.0, 0.5, 1.0])
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--train", type=int, default=None, help="training items (default: FLOOR_TRAIN_ITEMS per modality)")
    p.add_argument("--epochs", type=int, default=FLOOR_EPOCHS)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--depths", default="4,12")
    p.add_argument("--out", default=".bench/phantom_controls.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    depths = [int(d) for d in args.depths.split(",")]
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(
        "| modality | locality | noise | "
        + " | ".join(f"kNN ViT-Ti d{d} {pool}" for d in depths for pool in ("cls", "avg"))
        + " | supervised CNN | s |"
    )
    print("|---|---|---|" + "---|" * (2 * len(depths)) + "---|---|")
    for modality in args.modalities.split(","):
        for locality in args.localities:
            for noise in args.noises:
                t0 = time.perf_counter()
                ps = generate(modality, n=args.items, size=args.size, locality=locality, noise=noise, seed=0)
                knn = {
                    f"d{d}-{pool}": random_init_knn(
                        ps.images, ps.labels, img_size=args.size, depth=d, global_pool=pool
                    ).to_dict()
                    for d in depths
                    for pool in ("token", "avg")
                }
                n_train = args.train or FLOOR_TRAIN_ITEMS.get(modality, 800)
                tr = generate(modality, n=n_train, size=args.size, locality=locality, noise=noise, seed=1)
                te = generate(modality, n=200, size=args.size, locality=locality, noise=noise, seed=2)
                cnn = supervised_cnn(
                    tr.images, tr.labels, te.images, te.labels, epochs=args.epochs, augment=augment_for(modality)
                ).to_dict()
                secs = time.perf_counter() - t0
                rows.append(
                    {
                        "modality": modality,
                        "locality": locality,
                        "noise": noise,
                        "knn": knn,
                        "cnn": cnn,
                        "items": args.items,
                        "train": n_train,
                        "epochs": args.epochs,
                        "seconds": secs,
                    }
                )
                cell = lambda e: f"{e['value']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"
                print(
                    f"| {modality} | {locality:g} | {noise:g} | "
                    + " | ".join(cell(v) for v in knn.values())
                    + f" | {cell(cnn)} | {secs:.0f} |",
                    flush=True,
                )
                out.write_text(json.dumps(rows, indent=1))
    first = f"d{depths[0]}-token"
    figures = [
        compare(
            f"{r['modality']} locality {r['locality']:g} noise {r['noise']:g}: supervised CNN balanced accuracy",
            "balanced accuracy",
            [r["cnn"]["value"]],
            f"random-init kNN (ViT-Ti {first})",
            [r["knn"][first]["value"]],
        )
        for r in rows
    ]
    write_results("phantom_controls", figures, out, rows=rows)
    print_figures(figures)


if __name__ == "__main__":
    main()
