"""Example images of the controlled benchmark for docs/benchmark.md (PNG, a few hundred KB in all).

    python benchmarks/phantom_examples.py [--out docs/img/benchmark] [--size 64] [--seed 0]

One grid per modality: rows are settings (locality x noise), columns are items (normal, abnormal),
each shown plain and with its ROI mask outlined in green; plus a cine strip of one ultrasound loop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pretextlab.phantoms import generate

SETTINGS = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
PER_CLASS = 2


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def _outlined(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = _rgb(img).copy()
    edge = mask & ~ndimage.binary_erosion(mask)
    out[edge] = (40, 220, 60)
    return out


def _pick(labels: np.ndarray) -> list[int]:
    normal = [int(i) for i in np.nonzero(labels == 0)[0][:PER_CLASS]]
    abnormal = [int(i) for i in np.nonzero(labels == 1)[0][:PER_CLASS]]
    return normal + abnormal


def grid(modality: str, size: int, seed: int, scale: int) -> Image.Image:
    pad, label_w = 3, 150
    rows = []
    for locality, noise in SETTINGS:
        ps = generate(modality, n=16, size=size, locality=locality, noise=noise, seed=seed)
        tiles = []
        for i in _pick(ps.labels):
            pair = np.concatenate(
                [_rgb(ps.images[i]), np.full((pad, size, 3), 255, np.uint8), _outlined(ps.images[i], ps.masks[i])],
                axis=0,
            )
            tiles += [pair, np.full((2 * size + pad, pad, 3), 255, np.uint8)]
        rows.append(np.concatenate(tiles, axis=1))
    body = np.concatenate([np.concatenate([r, np.full((pad, r.shape[1], 3), 255, np.uint8)]) for r in rows])
    img = Image.fromarray(body).resize((body.shape[1] * scale, body.shape[0] * scale), Image.NEAREST)
    canvas = Image.new("RGB", (img.width + label_w, img.height + 22), "white")
    canvas.paste(img, (label_w, 22))
    draw = ImageDraw.Draw(canvas)
    col_w = (size + pad) * scale
    for j in range(2 * PER_CLASS):
        draw.text((label_w + j * col_w + 4, 5), "normal" if j < PER_CLASS else "abnormal", fill="black")
    row_h = (2 * size + 2 * pad) * scale
    for r, (locality, noise) in enumerate(SETTINGS):
        draw.text(
            (6, 22 + r * row_h + row_h // 2 - 14),
            f"locality {locality:g}\nnoise {noise:g}\n(top: image,\n below: ROI)",
            fill="black",
        )
    return canvas


def cine_strip(size: int, seed: int, scale: int, frames: int = 8) -> Image.Image:
    ps = generate("ultrasound", n=2, size=size, locality=0.0, noise=0.5, seed=seed, frames=frames)
    clip, masks = ps.images[0], ps.masks[0]
    tiles = []
    for t in range(frames):
        tiles += [_outlined(clip[t], masks[t]), np.full((size, 2, 3), 255, np.uint8)]
    body = np.concatenate(tiles, axis=1)
    return Image.fromarray(body).resize((body.shape[1] * scale, body.shape[0] * scale), Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/img/benchmark")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling for display")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for modality in ("ultrasound", "histology"):
        path = out / f"{modality}.png"
        # a 128-colour palette keeps the PNGs small (the phantoms' colours are few)
        grid(modality, args.size, args.seed, args.scale).quantize(128).save(path, optimize=True)
        print(f"{path}: {path.stat().st_size // 1024} KB")
    path = out / "ultrasound-cine.png"
    cine_strip(args.size, args.seed, args.scale).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
