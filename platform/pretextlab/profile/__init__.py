"""Dataset profiles for the objective recommender: noise statistics from raw pixels (pure NumPy / SciPy).

from pretextlab.profile.noise import speckle_profile, stain_profile
"""

from pretextlab.profile.noise import (
    RAYLEIGH_SNR,
    SpeckleProfile,
    StainProfile,
    correlation_length,
    envelope_snr,
    hed_concentrations,
    homogeneous_windows,
    nakagami_m,
    rayleigh_fit,
    speckle_profile,
    stain_profile,
)

__all__ = [
    "RAYLEIGH_SNR",
    "SpeckleProfile",
    "StainProfile",
    "correlation_length",
    "envelope_snr",
    "hed_concentrations",
    "homogeneous_windows",
    "nakagami_m",
    "rayleigh_fit",
    "speckle_profile",
    "stain_profile",
]
