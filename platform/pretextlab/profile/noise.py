"""Noise profile of a dataset from its raw pixels: speckle statistics (ultrasound) and stain spread (H&E).

**Speckle.** In fully developed speckle the envelope A is Rayleigh distributed, so its SNR
mean/std is sqrt(pi / (4 - pi)) = 1.913 whatever the echogenicity (Burckhardt, IEEE SU 1978;
Wagner et al., IEEE SU 1983). Fewer scatterers per resolution cell (or coherent structure) depart
from it; the Nakagami distribution captures both sides with its shape m (Shankar, IEEE UFFC 2000):
m = 1 is Rayleigh, m < 1 pre-Rayleigh (sparse scatterers), m > 1 towards Rician (resolved or
compounded). m is estimated by the inverse normalised variance of the intensity,
m = E[A^2]^2 / Var(A^2). The speckle correlation length, the full width at half maximum of the
autocorrelation of the envelope along each axis, measures the resolution cell (PSF size) in pixels
(Wagner et al. 1983). Statistics are taken on automatically found homogeneous windows: windows whose
smoothed intensity has the smallest relative gradient (no organ boundary or vessel inside) and no
zero (outside-the-fan) pixels. Clinical images are log-compressed: pass ``dynamic_range_db`` to map
8-bit pixels back to an envelope (A = 10^(p / 255 * DR / 20)); the log-domain standard deviation in
dB, 5.57 dB for Rayleigh speckle, needs the same assumption and is reported alongside.

**Stain.** Colour deconvolution (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 2001) turns RGB into
optical density OD = -log10(I / I0) and solves OD = c M for the haematoxylin, eosin and DAB
concentrations c, with M the stain vectors. Across items, the spread of the per-item
haematoxylin of the nuclei (95th percentile: the median tissue pixel has almost none, so its spread
would follow cellularity, not staining) and median eosin (coefficients of variation), and of the
per-item mean OD colour direction (degrees)
measure stain variation between slides, batches or scanners.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pretextlab.core.errors import UserError

#: Ruifrok & Johnston (2001) H, E, DAB optical-density vectors (R, G, B), rows normalised.
HED_VECTORS = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
HED_VECTORS = HED_VECTORS / np.linalg.norm(HED_VECTORS, axis=1, keepdims=True)
RAYLEIGH_SNR = float(np.sqrt(np.pi / (4 - np.pi)))  # 1.913
RAYLEIGH_LOG_STD_DB = 5.57  # std of 20 log10(A) for a Rayleigh envelope A


def envelope_snr(values: np.ndarray) -> float:
    """mean / std of envelope samples: 1.91 for fully developed (Rayleigh) speckle."""
    v = np.asarray(values, np.float64).ravel()
    sd = v.std()
    return float(v.mean() / sd) if sd > 0 else float("inf")


def nakagami_m(values: np.ndarray) -> float:
    """Nakagami shape by the inverse normalised variance of the intensity: E[A^2]^2 / Var(A^2) (1 = Rayleigh)."""
    i = np.asarray(values, np.float64).ravel() ** 2
    var = i.var()
    return float(i.mean() ** 2 / var) if var > 0 else float("inf")


def rayleigh_fit(values: np.ndarray) -> dict[str, float]:
    """Maximum-likelihood Rayleigh scale sigma (sigma^2 = E[A^2] / 2) and the Kolmogorov-Smirnov distance of the fit."""
    a = np.sort(np.asarray(values, np.float64).ravel())
    sigma = float(np.sqrt(np.mean(a**2) / 2))
    cdf = 1.0 - np.exp(-(a**2) / (2 * sigma**2))
    n = len(a)
    ks = float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))
    return {"sigma": sigma, "ks": ks}


def _fwhm(acf: np.ndarray) -> float:
    """Full width at half maximum of a one-sided autocorrelation profile (acf[0] = 1), linearly interpolated."""
    below = np.nonzero(acf < 0.5)[0]
    if len(below) == 0:
        return float(2 * len(acf))
    j = int(below[0])
    lag = j - 1 + (acf[j - 1] - 0.5) / (acf[j - 1] - acf[j])
    return float(2 * lag)


def correlation_length(window: np.ndarray) -> tuple[float, float]:
    """(axial, lateral) speckle correlation length in pixels: FWHM of the window's normalised autocorrelation.

    Axis 0 is axial (depth), axis 1 lateral. The mean is removed first; a flat window gives (0, 0).
    """
    w = np.asarray(window, np.float64)
    w = w - w.mean()
    if not np.any(w):
        return 0.0, 0.0
    h, wd = w.shape
    f = np.fft.rfft2(w, s=(2 * h, 2 * wd))
    acf = np.fft.irfft2(f * np.conj(f), s=(2 * h, 2 * wd))
    acf = acf / acf[0, 0]
    return _fwhm(acf[: h // 2, 0]), _fwhm(acf[0, : wd // 2])


def homogeneous_windows(image: np.ndarray, win: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of up to ``count`` non-overlapping ``win`` x ``win`` windows with the least structure.

    Structure is the gradient magnitude of the image smoothed beyond the speckle (sigma = win / 4),
    relative to its local mean; windows containing zero pixels (outside a sector fan) are skipped.
    """
    img = np.asarray(image, np.float64)
    h, w = img.shape
    if h < win or w < win:
        return []
    smooth = ndimage.gaussian_filter(img, win / 4)
    grad = np.hypot(*np.gradient(smooth)) / (np.abs(smooth) + 1e-6)
    cands = []
    step = max(1, win // 2)
    for y in range(0, h - win + 1, step):
        for x in range(0, w - win + 1, step):
            patch = img[y : y + win, x : x + win]
            if np.any(patch <= 0):
                continue
            cands.append((float(grad[y : y + win, x : x + win].mean()), y, x))
    chosen: list[tuple[int, int]] = []
    for _, y, x in sorted(cands):
        if all(abs(y - cy) >= win or abs(x - cx) >= win for cy, cx in chosen):
            chosen.append((y, x))
            if len(chosen) == count:
                break
    return chosen


@dataclass
class SpeckleProfile:
    """Speckle statistics pooled over the homogeneous windows of a sample of images."""

    envelope_snr: float
    nakagami_m: float
    rayleigh_ks: float
    log_std_db: float | None
    corr_axial_px: float
    corr_lateral_px: float
    windows: int
    window_px: int
    dynamic_range_db: float | None
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gray(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[..., 0] if a.shape[-1] == 1 else a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return a.astype(np.float64)


def speckle_profile(
    images: np.ndarray | list[np.ndarray], dynamic_range_db: float | None = None, win: int = 12, per_image: int = 4
) -> SpeckleProfile:
    """Speckle statistics of (N, H, W[, C]) images on up to ``per_image`` homogeneous windows each.

    Without ``dynamic_range_db`` pixels are taken as envelope samples (linear data); with it, 8-bit
    log-compressed pixels are first mapped back to an envelope. Each window is normalised by its
    mean, so echogenicity differences between windows do not inflate the spread.
    """
    notes: list[str] = []
    samples, logs, axial, lateral = [], [], [], []
    for image in images:
        img = _gray(image)
        for y, x in homogeneous_windows(img, win, per_image):
            patch = img[y : y + win, x : x + win]
            if dynamic_range_db is not None:
                logs.append(patch.std() * dynamic_range_db / 255.0)
                patch = 10.0 ** (patch / 255.0 * dynamic_range_db / 20.0)
            samples.append((patch / patch.mean()).ravel())
            a, lat = correlation_length(patch)
            axial.append(a)
            lateral.append(lat)
    if not samples:
        raise UserError(
            f"speckle profile: no homogeneous {win}x{win} window without zero pixels in "
            f"{len(images)} image(s); images too small or mostly background"
        )
    pooled = np.concatenate(samples)
    if dynamic_range_db is None:
        notes.append("pixels taken as linear envelope samples (no dynamic_range_db given)")
    fit = rayleigh_fit(pooled)
    return SpeckleProfile(
        envelope_snr=float(np.mean([envelope_snr(s) for s in samples])),
        nakagami_m=float(np.mean([nakagami_m(s) for s in samples])),
        rayleigh_ks=fit["ks"],
        log_std_db=float(np.mean(logs)) if logs else None,
        corr_axial_px=float(np.median(axial)),
        corr_lateral_px=float(np.median(lateral)),
        windows=len(samples),
        window_px=win,
        dynamic_range_db=dynamic_range_db,
        notes=notes,
    )


def optical_density(rgb: np.ndarray, background: float = 255.0) -> np.ndarray:
    """(..., 3) uint8 RGB -> optical density -log10(I / I0), I clipped to [1, I0]."""
    i = np.clip(np.asarray(rgb, np.float64)[..., :3], 1.0, background)
    return -np.log10(i / background)


def hed_concentrations(rgb: np.ndarray, vectors: np.ndarray = HED_VECTORS) -> np.ndarray:
    """(..., 3) RGB -> (..., 3) haematoxylin, eosin, DAB concentrations by colour deconvolution (OD = c M)."""
    return optical_density(rgb) @ np.linalg.inv(vectors)


@dataclass
class StainProfile:
    """Stain variation across items: spread of per-item H (95th percentile: nuclei), E (median) and OD direction."""

    h_median: float
    e_median: float
    h_cv: float
    e_cv: float
    od_angle_spread_deg: float
    items: int
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stain_profile(images: np.ndarray | list[np.ndarray], tissue_od: float = 0.15) -> StainProfile:
    """Stain spread across (N, H, W, 3) RGB items; tissue pixels are those with summed OD above ``tissue_od``."""
    hs, es, dirs = [], [], []
    notes: list[str] = []
    for image in images:
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[-1] < 3:
            raise UserError(f"stain profile needs RGB images (H, W, 3), got shape {a.shape}")
        od = optical_density(a).reshape(-1, 3)
        tissue = od.sum(axis=1) > tissue_od
        if tissue.sum() < 16:
            continue
        c = od[tissue] @ np.linalg.inv(HED_VECTORS)
        hs.append(float(np.percentile(c[:, 0], 95)))  # nuclear staining: the H-rich tail, not the median pixel
        es.append(float(np.median(c[:, 1])))
        mean_od = od[tissue].mean(axis=0)
        dirs.append(mean_od / np.linalg.norm(mean_od))
    if len(hs) < 2:
        raise UserError(f"stain profile: fewer than 2 of {len(images)} items have tissue (OD > {tissue_od})")
    if len(hs) < len(images):
        notes.append(f"{len(images) - len(hs)} item(s) without tissue skipped")
    d = np.stack(dirs)
    centre = d.mean(axis=0)
    centre /= np.linalg.norm(centre)
    angles = np.degrees(np.arccos(np.clip(d @ centre, -1.0, 1.0)))
    h, e = np.array(hs), np.array(es)
    return StainProfile(
        h_median=float(np.median(h)),
        e_median=float(np.median(e)),
        h_cv=float(h.std() / max(abs(h.mean()), 1e-9)),
        e_cv=float(e.std() / max(abs(e.mean()), 1e-9)),
        od_angle_spread_deg=float(np.sqrt(np.mean(angles**2))),
        items=len(hs),
        notes=notes,
    )
