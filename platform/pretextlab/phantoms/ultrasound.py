"""B-mode ultrasound phantoms: scatterers, a point-spread function, the envelope, log compression, scan conversion.

The image model follows the standard linear convolution model of B-mode imaging (Bamber & Dickinson
1980; Jensen, *Estimation of Blood Velocities Using Ultrasound*, 1996, ch. 2; the same model as
Field II's, without its spatial impulse responses):

1. **Tissue** is a field of sub-resolution scatterers with complex Gaussian amplitudes whose variance
   is the local echogenicity (backscatter intensity): background parenchyma with a smooth texture,
   one large organ region (hypo- or hyperechoic), anechoic vessels and, for local abnormal items, a
   small focal lesion. The scatterers live in tissue coordinates, so in a cine loop the speckle moves
   with the tissue, as real speckle does for small motions.
2. **Beam space**: the tissue is sampled along the beams (depth x lateral line; a fan for a phased /
   curvilinear "sector" probe, parallel lines for a "linear" probe) and convolved with a separable
   Gaussian PSF (axial x lateral) in baseband, i.e. on the demodulated I/Q signal. The envelope is the
   modulus of the complex field: with many scatterers per resolution cell it is Rayleigh distributed,
   fully developed speckle (Goodman, *Speckle Phenomena in Optics*, 2007; Wagner et al., IEEE SU 1983:
   envelope SNR = mean/std = 1.91).
3. **Noise knob**: ``noise`` sets the number of incoherently compounded looks, L = 1 + round(3 (1 -
   noise)), 1 to 4 (spatial / frequency compounding averages independent speckle patterns: SNR grows as
   sqrt(L); Trahey et al., Ultrason. Imaging 1986). noise = 1 is single-look, fully developed speckle.
4. **Depth**: two-way attenuation 2 alpha f0 z (alpha = 0.5 dB/cm/MHz, f0 = 3.5 MHz) and receiver
   noise, then time-gain compensation with a per-item mismatch (the sonographer's TGC sliders), so
   a residual depth trend remains, as in real scans.
5. **Display**: log compression to a per-item dynamic range with a per-item gain, then scan conversion
   to a Cartesian image (bilinear, zero outside the fan).

Nuisance factors drawn per item, independent of the label: imaging depth (which also sets the speckle
size in pixels), gain, dynamic range, TGC mismatch, organ position / size / aspect / contrast sign and
magnitude, background texture, vessels, and in cine loops breathing (axial sinusoid) and probe drift.
The label: a lobulated vs smooth organ outline (global) or a small round hypo- or hyperechoic lesion
vs none (local), whose ROI mask is returned per frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from pretextlab.phantoms.base import LOCAL, ItemSpec, PhantomItem, register_generator
from pretextlab.phantoms.shapes import boundary_band, random_region, smooth_field

ALPHA_DB_CM_MHZ = 0.5
F0_MHZ = 3.5
OVERSAMPLE = 2  # tissue grid points per output pixel
HALF_ANGLE = 0.6  # sector half-opening, radians


def _segment_distance(yy: np.ndarray, xx: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    d = p1 - p0
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return np.hypot(yy - (p0[0] + t * d[0]), xx - (p0[1] + t * d[1]))


def _complex_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Circular complex Gaussian samples of unit variance (scatterer amplitudes, receiver noise)."""
    z = rng.standard_normal((2, *shape), dtype=np.float32)
    return (z[0] + 1j * z[1]) * np.float32(np.sqrt(0.5))


class _Geometry:
    """Beam sample positions (in output pixel coordinates) and the scan-conversion map back to pixels."""

    def __init__(self, size: int, kind: str):
        s = size
        self.kind = kind
        self.n_r = self.n_l = 2 * s
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
        if kind == "sector":
            self.apex = (-0.15 * s, (s - 1) / 2)
            self.r0, self.r1 = 0.15 * s, 1.2 * s
            r = np.linspace(self.r0, self.r1, self.n_r)[:, None]
            th = np.linspace(-HALF_ANGLE, HALF_ANGLE, self.n_l)[None, :]
            self.by = self.apex[0] + r * np.cos(th)
            self.bx = self.apex[1] + r * np.sin(th)
            pr = np.hypot(yy - self.apex[0], xx - self.apex[1])
            pth = np.arctan2(xx - self.apex[1], yy - self.apex[0])
            self.k = (pr - self.r0) / (self.r1 - self.r0) * (self.n_r - 1)
            self.l = (pth + HALF_ANGLE) / (2 * HALF_ANGLE) * (self.n_l - 1)
            self.fan = (pr >= self.r0) & (pr <= self.r1) & (np.abs(pth) <= HALF_ANGLE)
        elif kind == "linear":
            self.r0, self.r1 = 0.0, float(s - 1)
            self.by = np.repeat(np.linspace(0, s - 1, self.n_r)[:, None], self.n_l, axis=1)
            self.bx = np.repeat(np.linspace(0, s - 1, self.n_l)[None, :], self.n_r, axis=0)
            self.k = yy * (self.n_r - 1) / (s - 1)
            self.l = xx * (self.n_l - 1) / (s - 1)
            self.fan = np.ones((s, s), bool)
        else:  # validated by the options check
            raise ValueError(f"unknown geometry {kind!r}")
        self.depth_frac = np.linspace(0.0, 1.0, self.n_r)[:, None]

    def holds(self, cy: float, cx: float, reach: float) -> bool:
        """Whether a disc of radius ``reach`` at (cy, cx) lies inside the field of view."""
        if self.kind == "linear":
            return True
        d = float(np.hypot(cy - self.apex[0], cx - self.apex[1]))
        th = float(np.arctan2(cx - self.apex[1], cy - self.apex[0]))
        return d - reach >= self.r0 and d + reach <= self.r1 and d * np.sin(HALF_ANGLE - abs(th)) >= reach

    def scan_convert(self, beam: np.ndarray) -> np.ndarray:
        out = ndimage.map_coordinates(beam, [self.k, self.l], order=1, mode="nearest")
        return np.where(self.fan, out, 0.0)


_GEOMETRIES: dict[tuple[int, str], _Geometry] = {}


def _geometry(size: int, kind: str) -> _Geometry:
    key = (size, kind)
    if key not in _GEOMETRIES:
        _GEOMETRIES[key] = _Geometry(size, kind)
    return _GEOMETRIES[key]


def _tissue(
    rng: np.random.Generator, spec: ItemSpec, grid: tuple[np.ndarray, np.ndarray], geo: _Geometry
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Echogenicity in dB on the tissue grid, the ROI mask on the same grid, and the nuisance values."""
    s = spec.size
    yy, xx = grid
    db = 1.5 * smooth_field(rng, yy.shape, OVERSAMPLE * s / 10)
    slack = 0.06 * s if spec.frames else 0.0  # room for breathing and drift
    organ = random_region(
        rng,
        s,
        lobulated=spec.label == 1 and spec.channel != LOCAL,
        radius=(0.18, 0.26),
        fits=lambda cy, cx, reach: geo.holds(cy, cx, reach + slack),
    )
    contrast = float(rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 9.0))
    inside = organ.inside(yy, xx)
    db = np.where(inside, db + contrast, db)
    n_vessels = int(rng.integers(0, 4))
    for _ in range(n_vessels):
        p0 = rng.uniform(0.15 * s, 0.85 * s, 2)
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.15, 0.35) * s
        p1 = p0 + length * np.array([np.sin(ang), np.cos(ang)])
        width = rng.uniform(0.012, 0.025) * s
        db = np.where(_segment_distance(yy, xx, p0, p1) < width, -25.0, db)
    lesion = None
    if spec.channel == LOCAL and spec.label == 1:
        r = rng.uniform(0.045, 0.065) * s
        cy, cx = rng.uniform(0.25 * s, 0.8 * s), rng.uniform(0.3 * s, 0.7 * s)
        kind = "hypoechoic" if rng.random() < 0.5 else "hyperechoic"
        lesion = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
        db = np.where(lesion, -18.0 if kind == "hypoechoic" else 12.0, db)
        roi = ndimage.binary_dilation(lesion, iterations=OVERSAMPLE)
        lesion_meta = {"lesion": kind, "lesion_radius_px": float(r), "lesion_centre": [float(cy), float(cx)]}
    elif spec.channel == LOCAL:
        roi = np.zeros(yy.shape, bool)
        lesion_meta = {}
    else:
        roi = boundary_band(inside, max(1, round(OVERSAMPLE * s / 32)))
        lesion_meta = {}
    meta = {
        "organ_contrast_db": contrast,
        "organ_centre": [organ.cy, organ.cx],
        "vessels": n_vessels,
        "lobulation": organ.harmonics[0][1],
        **lesion_meta,
    }
    return db, roi, meta


@register_generator("ultrasound", {"geometry": "sector"})
def ultrasound_item(rng: np.random.Generator, spec: ItemSpec, options: dict[str, Any]) -> PhantomItem:
    """One B-mode still (1, H, W) -> (H, W, 1), or a cine loop (T, H, W, 1), with its ROI mask."""
    if options["geometry"] not in ("sector", "linear"):
        from pretextlab.core.errors import UserError

        raise UserError(f"ultrasound option geometry must be 'sector' or 'linear', got {options['geometry']!r}")
    s = spec.size
    geo = _geometry(s, options["geometry"])
    margin = 0.15 * s
    axis = np.arange(-margin, s + margin, 1.0 / OVERSAMPLE)
    grid = np.meshgrid(axis, axis, indexing="ij")
    db, roi, tissue_meta = _tissue(rng, spec, grid, geo)
    looks = 1 + int(np.floor(3 * (1.0 - spec.noise) + 0.5))
    amp = np.sqrt(10.0 ** (db / 10.0)).astype(np.float32)
    depth_cm = float(rng.uniform(8.0, 16.0))
    gain_db = float(rng.uniform(-6.0, 6.0))
    dyn_db = float(rng.uniform(45.0, 60.0))
    tgc_ratio = float(rng.uniform(0.85, 1.1))
    speckle_scale = 12.0 / depth_cm  # the PSF has a fixed physical size: a deeper field of view shrinks it in pixels
    sig_ax, sig_lat = 1.0 * speckle_scale, 1.6 * speckle_scale
    atten_db = 2 * ALPHA_DB_CM_MHZ * F0_MHZ * depth_cm * geo.depth_frac
    tgc_db = 2 * ALPHA_DB_CM_MHZ * tgc_ratio * F0_MHZ * depth_cm * geo.depth_frac
    frames = spec.frames or 1
    t = np.arange(frames, dtype=np.float64)
    if spec.frames:
        breath_amp = rng.uniform(0.02, 0.05) * s
        period = rng.uniform(0.6, 1.2) * frames
        phase = rng.uniform(0, 2 * np.pi)
        drift = rng.uniform(-0.03, 0.03) * s
        dy = breath_amp * np.sin(2 * np.pi * t / period + phase)
        dx = drift * t / max(frames - 1, 1)
        motion = {"breath_amp_px": float(breath_amp), "breath_period_frames": float(period), "drift_px": float(drift)}
        # scatterers fixed in tissue coordinates, so the speckle moves with the tissue
        scat = _complex_normal(rng, (looks, *amp.shape))
    else:
        dy = dx = np.zeros(1)
        motion = {}
        scat = None  # a still: independent scatterers at the beam samples are the same statistics, 4x cheaper
    to_grid = lambda y, x: [(y + margin) * OVERSAMPLE, (x + margin) * OVERSAMPLE]
    out_y, out_x = np.mgrid[0:s, 0:s].astype(np.float64)
    psf_gain = 1.0 / np.sqrt(4 * np.pi * sig_ax * sig_lat)  # mean envelope of unit echogenicity: sqrt(pi)/2 * this
    images, masks = [], []
    for f in range(frames):
        by, bx = geo.by - dy[f], geo.bx - dx[f]
        beam_amp = ndimage.map_coordinates(amp, to_grid(by, bx), order=1, mode="nearest")
        if scat is None:
            field = _complex_normal(rng, (looks, *beam_amp.shape))
        else:
            gy, gx = (np.clip(np.rint(c), 0, n - 1).astype(np.intp) for c, n in zip(to_grid(by, bx), amp.shape))
            field = scat[:, gy, gx]
        field = field * beam_amp
        iq = ndimage.gaussian_filter(field.real, (0, sig_ax, sig_lat)) + 1j * ndimage.gaussian_filter(
            field.imag, (0, sig_ax, sig_lat)
        )
        iq = iq * 10 ** (-atten_db / 20) + 10 ** (-50 / 20) * _complex_normal(rng, iq.shape)  # receiver noise
        env = np.abs(iq).mean(axis=0) / (np.sqrt(np.pi) / 2 * psf_gain) * 10 ** (tgc_db / 20)
        level = 20 * np.log10(env + 1e-12) + gain_db
        beam = np.clip((level + 0.6 * dyn_db) / dyn_db, 0.0, 1.0) * 255.0
        images.append(np.round(geo.scan_convert(beam)).astype(np.uint8))
        m = ndimage.map_coordinates(roi.astype(np.float32), to_grid(out_y - dy[f], out_x - dx[f]), order=0)
        masks.append((m > 0.5) & geo.fan)
    image = np.stack(images)[..., None]
    mask = np.stack(masks)
    if not spec.frames:
        image, mask = image[0], mask[0]
    meta = {
        "depth_cm": depth_cm,
        "gain_db": gain_db,
        "dynamic_range_db": dyn_db,
        "tgc_ratio": tgc_ratio,
        "looks": looks,
        "pixel_spacing_mm": depth_cm * 10.0 / (geo.r1 - geo.r0),
        **tissue_meta,
        **motion,
    }
    return PhantomItem(image, mask, meta)
