"""Typed, validated view configurations: one pydantic model per modality plus the cine (clip) settings.

Every default says where it comes from in its ``description``; docs/views.md tabulates them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Range = tuple[float, float]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_range(name: str, value: Range, low: float, high: float) -> None:
    """Raise a ValueError naming ``name`` unless ``low <= value[0] <= value[1] <= high``."""
    if not (low <= value[0] <= value[1] <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {tuple(value)}")


class ViewsConfig(BaseModel):
    """Fields every modality shares: output sizes, crop counts, blur and normalisation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: How many channels the views emit (and mean/std must have).
    channels: ClassVar[int] = 3

    size: int = Field(
        224,
        ge=1,
        description=(
            "Output side S of the 'pair', 'single' and 'clip' recipes: the ViT input size of "
            "SimCLR/VICReg/I-JEPA/MAE (224, as BackboneConfig.img_size)."
        ),
    )
    global_size: int = Field(224, ge=1, description="Side G of DINO's global crops (DINO/DINOv2: 224).")
    local_size: int = Field(96, ge=1, description="Side L of DINO's local crops (DINO: 96; DINOv2 uses 98).")
    n_global: int = Field(2, ge=1, description="Number of global crops (DINO/DINOv2: 2).")
    n_local: int = Field(8, ge=0, description="Number of local crops (DINO's local_crops_number default: 8).")
    blur_prob: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Probability of a Gaussian blur per view (SimCLR: 0.5; DINO uses 1.0/0.1 on its two global "
            "crops and 0.5 on local crops, 0.5 is their mean)."
        ),
    )
    blur_sigma: Range = Field((0.1, 2.0), description="Blur sigma range in output pixels (SimCLR/DINO: 0.1-2.0).")
    mean: tuple[float, ...] = Field(IMAGENET_MEAN, description="Per-channel mean subtracted after augmentation.")
    std: tuple[float, ...] = Field(IMAGENET_STD, description="Per-channel std divided by after augmentation.")

    @model_validator(mode="after")
    def _check_shared(self) -> ViewsConfig:
        if self.local_size > self.global_size:
            raise ValueError(f"local_size ({self.local_size}) must not exceed global_size ({self.global_size})")
        _check_range("blur_sigma", self.blur_sigma, 1e-3, 100.0)
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.channels:
                raise ValueError(f"{name} needs {self.channels} value(s), one per channel, got {getattr(self, name)}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        return self


class HistopathologyViews(ViewsConfig):
    """RGB tissue patches read at a fixed µm/px: near-1 crops, dihedral flips, HED stain jitter, blur."""

    channels: ClassVar[int] = 3

    scale: Range = Field(
        (0.8, 1.0),
        description=(
            "Crop area fraction of the input patch for global, pair, single and clip views. DINO's (0.4, 1) "
            "zooms up to 1.6x on natural images; the patch was already read at the target µm/px, so crops "
            "stay near 1 (at most ~1.12x zoom) and cell sizes keep their meaning."
        ),
    )
    local_scale: Range | None = Field(
        None,
        description=(
            "Crop area fraction for local crops. None (default) = scale * (local_size / global_size)**2, i.e. "
            "(0.147, 0.184) for 96/224: local crops have the same magnification as global crops, instead of "
            "DINO's (0.05, 0.4) zoom-in on natural images."
        ),
    )
    ratio: Range = Field(
        (1.0, 1.0),
        description=(
            "Crop aspect-ratio range (log-uniform). DINO/torchvision use (3/4, 4/3); default 1 because "
            "nuclear shape is diagnostic and must not be stretched."
        ),
    )
    dihedral: bool = Field(
        True,
        description=(
            "Random element of the 8 flips/90-degree rotations per view: tissue has no canonical orientation "
            "(standard in pathology, e.g. Tellez et al. 2019 'basic' augmentation)."
        ),
    )
    hed_sigma: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description=(
            "HED stain jitter: per stain alpha ~ U(1-s, 1+s), beta ~ U(-s, s) in optical density (Tellez et "
            "al. 2018; 0.05 = 'HED-light' of Tellez et al. 2019). 0 disables it."
        ),
    )
    brightness: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Optional brightness factor jitter U(1-b, 1+b) (torchvision ColorJitter semantics). Off by default: "
            "HED jitter already models stain and scanner colour variation; 0.1 is a mild setting."
        ),
    )
    contrast: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Optional contrast factor jitter U(1-c, 1+c) around the grey mean (torchvision semantics). Off by default."
        ),
    )

    @model_validator(mode="after")
    def _check_histopathology(self) -> HistopathologyViews:
        _check_range("scale", self.scale, 1e-4, 1.0)
        if self.local_scale is not None:
            _check_range("local_scale", self.local_scale, 1e-4, 1.0)
        _check_range("ratio", self.ratio, 1e-2, 100.0)
        return self

    @property
    def resolved_local_scale(self) -> Range:
        """Local crop area range: explicit, or the global range shrunk by (local_size/global_size)**2."""
        if self.local_scale is not None:
            return self.local_scale
        f = (self.local_size / self.global_size) ** 2
        return (self.scale[0] * f, self.scale[1] * f)


class UltrasoundViews(ViewsConfig):
    """Grayscale B-mode frames: native-resolution crops, horizontal flips, gain/TGC/contrast jitter."""

    channels: ClassVar[int] = 1

    zoom: Range = Field(
        (1.0, 1.0),
        description=(
            "Zoom range; (1, 1) (default) crops at native resolution with NO resampling, so the speckle grain "
            "keeps its size in pixels (the frame was already read at the target mm/px). Inputs smaller than "
            "the output are zero-padded (bottom rows, both sides), never stretched. Other values crop a "
            "window of size/zoom px and resize it with `interpolation`."
        ),
    )
    interpolation: Literal["nearest", "bilinear"] = Field(
        "nearest",
        description=(
            "Resampling used only when zoom != 1; nearest keeps speckle grains sharp instead of smoothing them."
        ),
    )
    hflip_prob: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Horizontal (lateral) flip probability. Never vertical: depth (rows) is physical, attenuation "
            "and shadows run downwards."
        ),
    )
    gain: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description=(
            "Overall gain: intensity x U(1-g, 1+g), like the scanner's gain knob (multiplicative, so the "
            "black background outside the sector stays black)."
        ),
    )
    tgc: float = Field(
        0.2,
        ge=0.0,
        le=2.0,
        description=(
            "Time-gain-compensation jitter: intensity x exp(c(depth)), c a smooth (bicubic) curve through "
            "`tgc_knots` values ~ U(-t, t) spaced over the full frame depth (rows), read at each crop's rows."
        ),
    )
    tgc_knots: int = Field(
        4,
        ge=2,
        le=64,
        description=(
            "Control points of the TGC curve along depth; scanners have 6-8 sliders, 4 keeps the curve smooth."
        ),
    )
    gamma: float = Field(
        0.2,
        ge=0.0,
        le=2.0,
        description=(
            "Contrast (dynamic range / log-compression) jitter: intensity ** exp(U(-k, k)); keeps 0 and 1 fixed."
        ),
    )
    blur_prob: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Gaussian blur probability; 0 by default: blur would erase the speckle texture the encoder must see."
        ),
    )
    mean: tuple[float, ...] = Field(
        (0.5,),
        description=(
            "Grayscale mean 0.5: B-mode intensities fill [0, 1] with a mid-grey average (a dataset-free "
            "choice; ImageNet statistics do not apply to one channel)."
        ),
    )
    std: tuple[float, ...] = Field(
        (0.25,),
        description=("Grayscale std 0.25: maps [0, 1] to [-2, 2], the range ImageNet normalisation gives RGB images."),
    )

    @model_validator(mode="after")
    def _check_ultrasound(self) -> UltrasoundViews:
        _check_range("zoom", self.zoom, 1e-2, 100.0)
        return self

    @property
    def native(self) -> bool:
        """True when crops are taken at native resolution (no resampling)."""
        return self.zoom == (1.0, 1.0)


class CineViews(BaseModel):
    """Temporal sampling for the 'clip' recipe (cine loops): how many frames, at which strides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: int = Field(16, ge=1, description="Frames T' per clip (V-JEPA and VideoMAE: 16).")
    strides: tuple[int, ...] = Field(
        (1, 2, 4),
        description=(
            "Temporal strides drawn uniformly per clip (V-JEPA/VideoMAE use 4 on 25-30 fps video; 1 and 2 "
            "are added because cine loops are short, 1-3 s). Only strides whose span fits the clip are "
            "drawn; if none fits, stride 1 is used and the last frame is repeated."
        ),
    )

    @model_validator(mode="after")
    def _check_strides(self) -> CineViews:
        if not self.strides or min(self.strides) < 1:
            raise ValueError(f"strides must be a non-empty list of integers >= 1, got {self.strides}")
        return self
