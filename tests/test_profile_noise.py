"""Noise statistics recover known parameters: Rayleigh / Nakagami speckle, PSF width, injected stain spread."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pretextlab.core.errors import UserError
from pretextlab.phantoms import generate
from pretextlab.profile.noise import (
    HED_VECTORS,
    RAYLEIGH_SNR,
    correlation_length,
    envelope_snr,
    homogeneous_windows,
    nakagami_m,
    optical_density,
    rayleigh_fit,
    speckle_profile,
    stain_profile,
)


def _speckle(shape: tuple[int, int], sigma: tuple[float, float], seed: int = 0) -> np.ndarray:
    """Envelope of a Gaussian-PSF-filtered circular complex Gaussian scatterer field: Rayleigh speckle."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return np.abs(ndimage.gaussian_filter(z.real, sigma) + 1j * ndimage.gaussian_filter(z.imag, sigma))


def test_rayleigh_speckle_statistics():
    a = _speckle((256, 256), (1.0, 1.5))
    assert RAYLEIGH_SNR == pytest.approx(1.913, abs=1e-3)
    assert envelope_snr(a) == pytest.approx(RAYLEIGH_SNR, rel=0.05)
    assert nakagami_m(a) == pytest.approx(1.0, abs=0.08)
    fit = rayleigh_fit(a)
    assert fit["ks"] < 0.03
    assert fit["sigma"] == pytest.approx(np.sqrt(np.mean(a**2) / 2))
    # a clearly non-Rayleigh envelope (uniform) is rejected by the fit
    assert rayleigh_fit(np.random.default_rng(1).uniform(0.5, 1.5, 20000))["ks"] > 0.1


@pytest.mark.parametrize("m", [0.5, 2.0, 4.0])
def test_nakagami_shape_recovered(m: float):
    rng = np.random.default_rng(3)
    omega = 2.0
    a = np.sqrt(rng.gamma(m, omega / m, 40000))  # Nakagami(m, omega)
    assert nakagami_m(a) == pytest.approx(m, rel=0.08)
    expected_snr = envelope_snr(np.sqrt(rng.gamma(m, omega / m, 200000)))
    assert envelope_snr(a) == pytest.approx(expected_snr, rel=0.05)


def test_correlation_length_tracks_psf_width():
    # Gaussian PSF of std s: intensity correlation exp(-d^2 / 2 s^2), FWHM = 2.355 s (envelope: the same within ~5 %)
    for sax, slat in ((1.0, 2.0), (2.0, 1.0), (1.5, 3.0)):
        a = _speckle((256, 256), (sax, slat), seed=7)
        ax, lat = correlation_length(a)
        assert ax == pytest.approx(2.355 * sax, rel=0.15)
        assert lat == pytest.approx(2.355 * slat, rel=0.15)
    assert correlation_length(np.ones((16, 16))) == (0.0, 0.0)


def test_homogeneous_windows_avoid_edges_and_background():
    a = _speckle((96, 96), (1.0, 1.0), seed=2)
    a[:, 48:] *= 6.0  # a strong boundary at x = 48
    a[:24, :] = 0.0  # outside the fan
    wins = homogeneous_windows(a, 16, 6)
    assert len(wins) == 6
    for y, x in wins:
        assert y >= 24, "a window reaches the zero background"
        assert x + 16 <= 48 - 2 or x >= 48 + 2, f"window at x={x} straddles the boundary"
    prof = speckle_profile(a[None], win=16, per_image=6)
    assert prof.envelope_snr == pytest.approx(RAYLEIGH_SNR, rel=0.15)
    assert prof.windows == 6 and prof.notes  # says the pixels were taken as linear


def test_speckle_profile_on_bmode_phantoms_follows_the_noise_knob():
    """Log-compressed B-mode phantoms: single-look speckle is near the Rayleigh log-std (5.57 dB in beam space;
    bilinear scan conversion averages neighbouring correlated samples, which lowers it to ~4.5 dB), and
    compounding lowers it much further."""
    single = generate("ultrasound", n=6, size=96, locality=0.0, noise=1.0, seed=0)
    compounded = generate("ultrasound", n=6, size=96, locality=0.0, noise=0.0, seed=0)
    dr = float(np.mean([m["dynamic_range_db"] for m in single.meta["items"]]))
    p1 = speckle_profile(single.images, dynamic_range_db=dr)
    p0 = speckle_profile(compounded.images, dynamic_range_db=dr)
    assert 3.5 < p1.log_std_db < 6.0
    assert p0.log_std_db < 0.6 * p1.log_std_db
    assert p0.envelope_snr > 1.5 * p1.envelope_snr


def test_speckle_profile_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="no homogeneous"):
        speckle_profile(np.zeros((2, 8, 8), np.uint8))


def _rescale_stains(rgb: np.ndarray, h: float, e: float) -> np.ndarray:
    c = optical_density(rgb) @ np.linalg.inv(HED_VECTORS)
    c[..., 0] *= h
    c[..., 1] *= e
    return np.clip(np.round(255.0 * 10 ** (-(c @ HED_VECTORS))), 0, 255).astype(np.uint8)


def test_stain_spread_recovers_injected_concentration_spread():
    """Copies of one tile with known log-normal H and E scalings: the measured CV is the injected one."""
    tile = generate("histology", n=2, size=64, locality=0.0, noise=0.0, seed=0).images[0]
    z = np.random.default_rng(0).standard_normal((40, 2))
    for s in (0.1, 0.3):
        factors = np.exp(s * z)
        prof = stain_profile(np.stack([_rescale_stains(tile, h, e) for h, e in factors]))
        true_cv = factors.std(axis=0) / factors.mean(axis=0)
        assert prof.h_cv == pytest.approx(true_cv[0], rel=0.25)
        assert prof.e_cv == pytest.approx(true_cv[1], rel=0.25)
    assert stain_profile(np.stack([tile] * 4)).h_cv == pytest.approx(0.0, abs=1e-9)


def test_stain_spread_grows_with_injected_variation():
    """On varied tissue (nuclear density, blur differ per item) the spread still grows monotonically."""
    base = generate("histology", n=24, size=64, locality=0.0, noise=0.0, seed=0).images
    z = np.random.default_rng(0).standard_normal((len(base), 2))
    spreads = []
    for s in (0.0, 0.2, 0.4, 0.8):
        scaled = [_rescale_stains(img, *np.exp(s * z[i])) for i, img in enumerate(base)]
        spreads.append(stain_profile(np.stack(scaled)))
    h_cv = [p.h_cv for p in spreads]
    e_cv = [p.e_cv for p in spreads]
    assert h_cv == sorted(h_cv) and e_cv == sorted(e_cv), (h_cv, e_cv)
    assert h_cv[-1] > 2 * h_cv[0] and e_cv[-1] > 2 * e_cv[0]
    # deconvolution separates the stains: scaling eosin alone leaves the haematoxylin spread unchanged
    e_only = stain_profile(np.stack([_rescale_stains(img, 1.0, np.exp(0.4 * z[i, 1])) for i, img in enumerate(base)]))
    assert e_only.h_cv == pytest.approx(spreads[0].h_cv, rel=0.25)
    assert e_only.e_cv > 2 * spreads[0].e_cv


def test_stain_spread_follows_the_generator_noise_knob():
    spreads = [stain_profile(generate("histology", n=24, size=64, noise=nz, seed=1).images) for nz in (0.0, 0.5, 1.0)]
    angles = [p.od_angle_spread_deg for p in spreads]
    cvs = [p.h_cv + p.e_cv for p in spreads]
    assert angles == sorted(angles) and cvs == sorted(cvs), (angles, cvs)


def test_stain_profile_needs_rgb():
    with pytest.raises(UserError, match="RGB"):
        stain_profile(np.zeros((3, 8, 8), np.uint8))
