"""H&E-like tissue tiles composed in optical density space (Beer-Lambert), with per-item stain variation.

Bright-field microscopy transmits I = I0 * 10^(-OD) per colour channel, and the optical density of a
stained section is the sum of each stain's concentration times its OD colour vector (Beer-Lambert).
Ruifrok & Johnston (Anal. Quant. Cytol. Histol. 2001) measured the H&E vectors used here and gave the
inverse, colour deconvolution, that ``pretextlab.profile.noise`` uses to measure stain spread. Stain
variation between labs, batches and scanners moves those vectors and scales the concentrations
(Macenko et al., ISBI 2009; Tellez et al., Med. Image Anal. 2019, whose "HED jitter" augmentation
perturbs exactly these quantities), so ``noise`` in [0, 1] sets how far each item's vectors,
concentrations and illumination are perturbed.

The tissue: eosin-stained stroma with a fibre texture and sparse spindle nuclei and lymphocytes,
around one epithelial nest (paler cytoplasm, packed round haematoxylin nuclei with chromatin
texture). The label: a lobulated vs smooth nest outline (global) or two or three atypical nuclei
(enlarged 1.6-1.8x, irregular, mildly hyperchromatic: features a pathologist grades) among the normal ones
(local), each replacing as many neighbours as its area ratio so the tile's total haematoxylin does
not change. Nuisance factors drawn per item, independent of the label: nest position, size and aspect,
nuclear size and density, fibre orientation, lymphocyte count, focus blur, stain and illumination.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from pretextlab.phantoms.base import LOCAL, ItemSpec, PhantomItem, register_generator
from pretextlab.phantoms.shapes import (
    boundary_band,
    oriented_field,
    random_region,
    smooth_field,
)

#: Ruifrok & Johnston (2001) optical-density vectors (R, G, B), unit length.
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105])
DAB = np.array([0.268, 0.570, 0.776])
HED = np.stack([v / np.linalg.norm(v) for v in (HEMATOXYLIN, EOSIN, DAB)])


def _nucleus(
    od: np.ndarray,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    angle: float,
    density: float,
    ripple: float = 0.0,
    rng: np.random.Generator | None = None,
    mask: np.ndarray | None = None,
) -> None:
    """Add one antialiased elliptical nucleus of haematoxylin OD ``density`` to ``od`` (in place)."""
    h, w = od.shape
    reach = max(ry, rx) * (1 + ripple) + 2
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 2)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
    rho = np.hypot(u, v)
    outline = np.ones_like(rho)
    if ripple and rng is not None:
        for k in (2, 3, 5):
            outline = outline + ripple * rng.uniform(0.3, 1.0) * np.cos(k * np.arctan2(v, u) + rng.uniform(0, 6.3))
    r_px = min(ry, rx)
    cover = np.clip((outline - rho) * r_px + 0.5, 0.0, 1.0)  # ~1 px antialiased edge
    od[y0:y1, x0:x1] = np.maximum(od[y0:y1, x0:x1], density * cover)
    if mask is not None:
        mask[y0:y1, x0:x1] |= cover > 0.25


def _stains(rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-item H and E vectors, concentration scales and illumination, perturbed by ``noise``."""
    vectors = HED[:2].copy()
    vectors = vectors + 0.12 * noise * rng.standard_normal(vectors.shape)
    vectors = np.clip(vectors, 0.02, None)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scales = np.exp(0.3 * noise * rng.standard_normal(2))
    illum = 1.0 - 0.08 * noise * rng.random(3)
    return vectors, scales, illum


@register_generator("histology")
def histology_item(rng: np.random.Generator, spec: ItemSpec, options: dict[str, Any]) -> PhantomItem:
    """One H&E-like tile (H, W, 3) uint8 with its ROI mask. Cine loops do not apply to histology."""
    if spec.frames:
        from pretextlab.core.errors import UserError

        raise UserError("histology phantoms are still tiles: frames applies to ultrasound only")
    s = spec.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    nest = random_region(rng, s, lobulated=spec.label == 1 and spec.channel != LOCAL, radius=(0.22, 0.32), margin=0.05)
    inside = nest.inside(yy, xx)
    fibre_angle = float(rng.uniform(0, np.pi))
    fibres = oriented_field(rng, (s, s), along=s / 8, across=s / 80, angle=fibre_angle)
    eosin = np.where(inside, 0.13 + 0.03 * smooth_field(rng, (s, s), s / 16), 0.28 + 0.06 * fibres)
    hema = np.zeros((s, s))
    r_n = s / 32 * rng.uniform(0.85, 1.15)
    spacing = r_n * rng.uniform(2.8, 3.4)
    # epithelial nuclei: a jittered hexagonal lattice, kept where it falls inside the nest
    centres = []
    for row, y in enumerate(np.arange(-spacing, s + spacing, spacing * 0.866)):
        for x in np.arange(-spacing, s + spacing, spacing) + (row % 2) * spacing / 2:
            cy, cx = y + rng.normal(0, 0.18 * spacing), x + rng.normal(0, 0.18 * spacing)
            if 0 <= cy < s and 0 <= cx < s and inside[int(cy), int(cx)]:
                centres.append((cy, cx))
    order = rng.permutation(len(centres))
    n_atypical = int(rng.integers(2, 4)) if (spec.channel == LOCAL and spec.label == 1) else 0
    roi = np.zeros((s, s), bool)
    atypical = [int(i) for i in order[:n_atypical]]
    # an atypical nucleus takes the place of its nearest neighbours, as many as its area ratio, so the
    # tile's total haematoxylin (and cell count per area) matches a normal tile: only the local
    # arrangement (one large irregular nucleus instead of a few small ones) carries the label
    pts = np.array(centres) if centres else np.zeros((0, 2))
    dropped: set[int] = set()
    sizes: dict[int, float] = {}
    for i in atypical:
        factor = rng.uniform(1.6, 1.8)
        sizes[i] = factor
        d = np.hypot(*(pts - pts[i]).T)
        near = [int(j) for j in np.argsort(d)[1:] if int(j) not in atypical and int(j) not in dropped]
        dropped.update(near[: round(factor**2 / 1.15) - 1])
    for i, (cy, cx) in enumerate(centres):
        if i in dropped:
            continue
        if i in sizes:
            r = r_n * sizes[i]
            _nucleus(
                hema,
                cy,
                cx,
                r * rng.uniform(0.8, 1.0),
                r,
                rng.uniform(0, np.pi),
                rng.uniform(0.55, 0.8) * 1.15,
                ripple=0.12,
                rng=rng,
                mask=roi,
            )
        else:
            r = r_n * rng.uniform(0.9, 1.1)
            _nucleus(hema, cy, cx, r * rng.uniform(0.85, 1.0), r, rng.uniform(0, np.pi), rng.uniform(0.55, 0.8))
    # stroma: spindle (fibroblast) nuclei along the fibres and small dark lymphocytes
    n_spindle = int(rng.poisson(0.012 * (~inside).sum() / (s / 32) ** 2 / 8))
    n_lymph = int(rng.integers(0, 8))
    for kind, count in (("spindle", n_spindle), ("lymph", n_lymph)):
        for _ in range(count):
            cy, cx = rng.uniform(0, s, 2)
            if inside[int(cy), int(cx)]:
                continue
            if kind == "spindle":
                _nucleus(hema, cy, cx, r_n * 0.5, r_n * 1.8, fibre_angle + rng.normal(0, 0.2), rng.uniform(0.5, 0.7))
            else:
                _nucleus(hema, cy, cx, r_n * 0.65, r_n * 0.65, 0.0, rng.uniform(0.9, 1.1))
    chromatin = 1.0 + 0.15 * smooth_field(rng, (s, s), 0.7)
    hema = hema * chromatin
    if spec.channel == LOCAL:
        roi = ndimage.binary_dilation(roi, iterations=1)
    else:
        roi = boundary_band(inside, max(1, round(s / 32)))
    vectors, scales, illum = _stains(rng, spec.noise)
    od = (hema * scales[0])[..., None] * vectors[0] + (eosin * scales[1])[..., None] * vectors[1]
    rgb = 255.0 * illum * 10.0 ** (-od)
    blur = float(rng.uniform(0.4, 1.0))
    rgb = ndimage.gaussian_filter(rgb, (blur, blur, 0))
    rgb = rgb + rng.normal(0, 2.0, rgb.shape)
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    meta = {
        "stain_vectors": vectors.round(4).tolist(),
        "stain_scales": scales.round(4).tolist(),
        "illumination": illum.round(4).tolist(),
        "blur_px": blur,
        "nuclear_radius_px": float(r_n),
        "nest_centre": [nest.cy, nest.cx],
        "lobulation": nest.harmonics[0][1],
        "atypical_nuclei": n_atypical,
        "fibre_angle": fibre_angle,
    }
    return PhantomItem(image, roi, meta)
