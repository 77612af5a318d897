"""Shared geometry for the phantoms: lobulated regions, smooth random fields, discs and boundary bands.

All lengths are in output pixels; a phantom's geometry scales with the image size, so ``size`` sets
the resolution, not what is imaged. The global label of both modalities is the boundary of one large
region (an organ, an epithelial nest): smooth (an ellipse with faint low-order ripples) or lobulated
(added radial harmonics of order 3-5). Lobulated regions are rescaled to the area of the ellipse
they perturb, so area and mean intensity carry no label; only the outline's shape does, which is
visible across the whole image and not in a small crop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Region:
    """A star-shaped region: an ellipse (centre, semi-axes, rotation) with radial harmonics on its outline."""

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float
    harmonics: tuple[tuple[int, float, float], ...]  # (order k, amplitude a, phase)

    def level(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """rho / r(theta): < 1 inside, 1 on the outline, > 1 outside (an implicit function of the region)."""
        dy, dx = yy - self.cy, xx - self.cx
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (dx * c + dy * s) / self.rx
        v = (-dx * s + dy * c) / self.ry
        rho = np.hypot(u, v)
        theta = np.arctan2(v, u)
        outline = np.ones_like(rho)
        for k, a, ph in self.harmonics:
            outline = outline + a * np.cos(k * theta + ph)
        return rho / outline

    def inside(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Boolean mask of the points inside the region."""
        return self.level(yy, xx) < 1.0


def random_region(
    rng: np.random.Generator,
    size: int,
    lobulated: bool,
    radius: tuple[float, float] = (0.2, 0.3),
    margin: float = 0.08,
    fits: Callable[[float, float, float], bool] | None = None,
) -> Region:
    """A region of random position, size, aspect and rotation; ``lobulated`` adds order 3-5 harmonics.

    Smooth regions get faint ripples (amplitude <= 0.04) so "smooth" is not "a perfect ellipse";
    lobulated ones get one strong harmonic (0.2-0.3). Either way the semi-axes are rescaled so the
    area equals that of the unperturbed ellipse: the area of r(theta)^2/2 grows by (1 + sum a^2 / 2).
    ``fits(cy, cx, reach)`` restricts the centre (e.g. to keep the whole outline inside a sector's fan);
    centres are redrawn up to 100 times until it holds.
    """
    r = rng.uniform(*radius) * size
    aspect = rng.uniform(0.7, 1.0)
    ry, rx = r * aspect, r / aspect
    k = int(rng.integers(3, 6))
    amp = rng.uniform(0.2, 0.3) if lobulated else rng.uniform(0.0, 0.04)
    harmonics = ((k, float(amp), float(rng.uniform(0, 2 * np.pi))),)
    scale = 1.0 / np.sqrt(1.0 + sum(a * a for _, a, _ in harmonics) / 2.0)
    ry, rx = ry * scale, rx * scale
    reach = max(ry, rx) * (1.0 + amp)
    lo, hi = margin * size + reach, (1 - margin) * size - reach
    for _ in range(100):
        cy = rng.uniform(lo, hi) if hi > lo else size / 2
        cx = rng.uniform(lo, hi) if hi > lo else size / 2
        if fits is None or fits(cy, cx, reach):
            break
    return Region(float(cy), float(cx), float(ry), float(rx), float(rng.uniform(0, np.pi)), harmonics)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean and unit standard deviation (a smooth texture)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def oriented_field(
    rng: np.random.Generator, shape: tuple[int, int], along: float, across: float, angle: float
) -> np.ndarray:
    """Smooth noise elongated along ``angle`` (fibres): anisotropic Gaussian filtering in Fourier space."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    c, s = np.cos(angle), np.sin(angle)
    fu, fv = fx * c + fy * s, -fx * s + fy * c
    h = np.exp(-2 * np.pi**2 * ((fu * along) ** 2 + (fv * across) ** 2))
    f = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * h))
    return (f - f.mean()) / (f.std() + 1e-12)


def disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean disc of radius ``r`` at (cy, cx)."""
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def boundary_band(inside: np.ndarray, width: int) -> np.ndarray:
    """The pixels within ``width`` of a region's outline, on both sides (where the outline's shape is seen)."""
    width = max(1, int(width))
    grown = ndimage.binary_dilation(inside, iterations=width)
    shrunk = ndimage.binary_erosion(inside, iterations=width, border_value=1)
    return grown & ~shrunk
