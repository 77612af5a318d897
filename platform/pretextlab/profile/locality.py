"""Signal-locality profile: how much of a label can be read from an image seen only through small windows.

**What it measures.** Images are brought to a working side of at most 64 px (area averaging; the
index is about fractions of the image, not pixels) and normalised per image and channel (median,
interquartile range: gain and illumination carry no locality). For each window size s (a fraction of
the image side: 1/8, 1/4, 1/2) every image is described *only* by statistics of s x s windows tiling
it (stride s / 2): per window, the mean and standard deviation of a fixed bank of filter responses
(Gaussian smoothing, scale-normalised Laplacian-of-Gaussian blob responses and gradient magnitude, at
scales no larger than s / 4 so that a filter cannot reach far outside its window), then over all
windows of the image their median and how far the max, 95th and 5th percentiles and min stand out
from it. Spatial layout is discarded: nothing in these features can see a structure larger than the
window or where windows lie relative to each other. A focal lesion or a few atypical nuclei fit in a
small window (an extreme window finds them); the outline of an organ does not. The *whole-image* probe
gets global statistics of the filter bank (scales up to 8 px) and an 8 x 8 thumbnail (the layout).

The probe is a ridge classifier (standardised features, penalty chosen by leave-one-out inside each
training fold) scored by grouped, stratified 5-fold cross-validation (items of one patient never
straddle folds); the out-of-fold predictions give the balanced accuracy and its bootstrap CI
(resampling patients or cine loops when the catalog has them, else items).

**The index.** Each balanced accuracy b (K classes) becomes the *informedness* (Youden's J)
J = (b - 1/K) / (1 - 1/K): 0 at chance, 1 when perfect. The locality index is J of the 1/4-side
windows, clipped to [0, 1]. Why this and not a ratio to the whole-image accuracy: with a perfect local
detector, a two-class set where a share L of the abnormal items carries its label in a small structure
(the rest in global structure) gives TNR = 1 and TPR = L, so J = L exactly: the index *is* the share
of label information that is local. A ratio to the whole-image J would need the cheap probe to read
global structure (organ outlines), which it cannot (the benchmark's random-init ceiling shows that
such signal is invisible to untrained features by design), and would call a mixed set fully local.
The price: faint local signal also lowers the index; the card reports the whole-image J and the curve
over window sizes beside it, and ``--pilot`` checks the recommendation by pretraining.

**Why hand-built filters, not a random-init network.** The controlled benchmark is built so that a
randomly initialised ViT is near chance (docs/benchmark.md, the random-init ceiling), so its features
would show no signal at any scale; a fixed multi-scale filter bank is cheap (no torch, milliseconds per
image), its receptive field is known exactly (which is the whole point here), and it is the classic
texture/blob descriptor (Leung & Malik, IJCV 2001; Lindeberg, IJCV 1998 for the scale-normalised LoG).

Pure NumPy / SciPy / scikit-learn; no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage

from pretextlab.core.errors import UserError
from pretextlab.evaluate.stats import bootstrap_ci

#: window sizes as fractions of the shorter image side; the index reads INDEX_FRACTION
CROP_FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.5)
INDEX_FRACTION = 0.25
#: smallest window in pixels (a window must hold at least a few speckle cells / nuclei)
MIN_WINDOW_PX = 8
#: images are profiled at this working side at most (area downsampling): the index is about fractions
WORK_SIDE = 64
MIN_PER_CLASS = 5
FOLDS = 5
RIDGE_ALPHAS = (1.0, 10.0, 100.0, 1000.0)


class ScaleScore(BaseModel):
    """The probe's score at one window size (``fraction`` of the image side; 1.0 = the whole image)."""

    model_config = ConfigDict(extra="forbid")

    fraction: float
    window_px: int
    balanced_accuracy: float
    balanced_accuracy_ci: tuple[float, float]
    informedness: float
    informedness_ci: tuple[float, float]


class LocalityProfile(BaseModel):
    """The locality index (0 = label only in global structure ... 1 = fully readable from small windows)."""

    model_config = ConfigDict(extra="forbid")

    index: float
    index_ci: tuple[float, float]
    index_fraction: float
    whole_image: ScaleScore
    scales: list[ScaleScore]
    items: int
    classes: list[str]
    class_counts: dict[str, int]
    bootstrap_unit: str
    bootstrap_units: int
    work_side_px: int
    probe: str
    notes: list[str]


# --------------------------------------------------------------------------- features


def to_channels(image: np.ndarray) -> np.ndarray:
    """(H, W[, C]) pixels -> (H, W, K) float maps: grayscale in [0, 1]; RGB as optical density per channel
    (Beer-Lambert: stain amounts add in OD, so a dark nucleus is a bright blob whatever the illumination)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise UserError(f"locality profile: expected (H, W) or (H, W, C) images, got shape {a.shape}")
    scale = 255.0 if a.dtype == np.uint8 else max(float(np.abs(a).max()), 1e-9)
    x = a.astype(np.float32) / scale
    if x.shape[-1] >= 3:
        return -np.log10(np.clip(x[..., :3], 1.0 / 255.0, 1.0))
    return x[..., :1]


def work_resolution(image: np.ndarray, side: int = WORK_SIDE, at_most: bool = False) -> np.ndarray:
    """Area-downsample (H, W, K) maps by integer block means: by the largest factor that keeps the
    shorter side at least ``side`` (the work side is then ``side`` .. 2 * ``side`` - 1, or the image's
    own side when shorter), or with ``at_most`` by the smallest factor that brings it to ``side`` or
    under (thumbnails). Rounding the work factor up instead left 224 px tiles at 56 px, too small
    for the 1/8 windows."""
    h, w = image.shape[:2]
    f = int(np.ceil(min(h, w) / side)) if at_most else max(1, min(h, w) // side)
    if f <= 1:
        return image
    h2, w2 = (h // f) * f, (w // f) * f
    return image[:h2, :w2].reshape(h2 // f, f, w2 // f, f, -1).mean(axis=(1, 3))


def response_maps(ch: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """(N, H, W, K) -> (N, H, W, K * 3 * len(sigmas)): smoothed intensity, scale-normalised LoG (blobs),
    gradient magnitude, filtered over the whole batch at once."""
    out = []
    for k in range(ch.shape[-1]):
        x = ch[..., k]
        for s in sigmas:
            sig = (0.0, s, s)
            out.append(ndimage.gaussian_filter(x, sig, truncate=3.0))
            out.append(-(s**2) * ndimage.gaussian_laplace(x, sig, truncate=3.0))
            out.append(s * ndimage.gaussian_gradient_magnitude(x, sig, truncate=3.0))
    return np.stack(out, axis=-1).astype(np.float32)


def sigmas_for(window: int) -> list[float]:
    """Filter scales that stay inside a window: 1, 2, 4 ... px up to window / 4."""
    out, s = [], 1.0
    while s <= window / 4:
        out.append(s)
        s *= 2
    return out or [1.0]


def window_features(maps: np.ndarray, window: int) -> np.ndarray:
    """Bag-of-windows features of (N, H, W, F) maps: per window (stride window / 2) the mean and sd of
    every map; then, over the windows of each image, the median and the max and min relative to that
    median (how far the most extreme window stands out from the image's typical window, which is what
    a focal structure does and gain or depth do not). Nothing here depends on where a window lies."""
    n, h, w, f = maps.shape
    m = ndimage.uniform_filter(maps, size=(1, window, window, 1), mode="reflect")
    m2 = ndimage.uniform_filter(maps * maps, size=(1, window, window, 1), mode="reflect")
    half, step = window // 2, max(1, window // 2)
    ys = np.arange(half, h - (window - half) + 1, step)
    xs = np.arange(half, w - (window - half) + 1, step)
    if len(ys) == 0 or len(xs) == 0:
        ys, xs = np.array([h // 2]), np.array([w // 2])
    mean = m[:, ys][:, :, xs].reshape(n, -1, f)
    sd = np.sqrt(np.maximum(m2[:, ys][:, :, xs].reshape(n, -1, f) - mean**2, 0.0))
    stats = np.concatenate([mean, sd], axis=2)
    q = np.percentile(stats, [0, 5, 50, 95, 100], axis=1)
    med = q[2]
    return np.concatenate([med, q[4] - med, q[3] - med, q[1] - med, q[0] - med], axis=1)


def whole_features(ch: np.ndarray) -> np.ndarray:
    """Whole-image features of (N, H, W, K): global statistics of the filter bank up to 1/4 of the side,
    plus an 8 x 8 thumbnail of every channel (the layout)."""
    n, h, w, _ = ch.shape
    maps = response_maps(ch, [s for s in sigmas_for(min(h, w)) if s <= 8])
    flat = maps.reshape(n, -1, maps.shape[-1])
    thumb = np.stack([work_resolution(c, 8, at_most=True) for c in ch])
    if thumb.shape[1:3] != (8, 8):
        thumb = ndimage.zoom(thumb, (1, 8 / thumb.shape[1], 8 / thumb.shape[2], 1), order=1)
    q = np.percentile(flat, [5, 50, 95], axis=1)
    return np.concatenate([flat.mean(1), flat.std(1), q[0], q[1], q[2], thumb.reshape(n, -1)], axis=1)


def normalise(ch: np.ndarray) -> np.ndarray:
    """Per image and channel: subtract the median, divide by the interquartile range (removes gain,
    illumination and overall stain strength, which say nothing about where the label lives)."""
    flat = ch.reshape(ch.shape[0], -1, ch.shape[-1])
    q1, med, q3 = np.percentile(flat, [25, 50, 75], axis=1)
    scale = np.maximum(q3 - q1, 1e-3)
    return ((ch - med[:, None, None, :]) / scale[:, None, None, :]).astype(np.float32)


def batch_features(images: Sequence[np.ndarray] | np.ndarray, windows: Sequence[int]) -> list[np.ndarray]:
    """(N, D) feature matrices, one per window size (work-resolution pixels) and, last, the whole image."""
    ch = normalise(np.stack([work_resolution(to_channels(np.asarray(im))) for im in images]))
    out = []
    for win in windows:
        out.append(window_features(response_maps(ch, sigmas_for(win)), win))
    out.append(whole_features(ch))
    return out


# --------------------------------------------------------------------------- the probe


def _folds(y: np.ndarray, groups: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = min(FOLDS, int(np.bincount(y).min()), len(np.unique(groups)))
    cv = StratifiedGroupKFold(n_splits=max(2, n_splits), shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, groups))


def probe_predictions(x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Out-of-fold predictions of a ridge classifier on standardised features; its penalty is chosen
    inside each training fold by efficient leave-one-out (closed form: no iterative solver, milliseconds)."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty(len(y), dtype=np.int64)
    for train, test in folds:
        clf = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=RIDGE_ALPHAS))
        clf.fit(x[train], y[train])
        pred[test] = clf.predict(x[test])
    return pred


def _score(
    fraction: float, window: int, y: np.ndarray, pred: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int
) -> tuple[ScaleScore, Any]:
    k = int(y.max()) + 1
    ci = bootstrap_ci(pred, groups, metric="balanced_accuracy", y_true=y, num_classes=k, n_boot=n_boot, seed=seed)

    def inf(b: float) -> float:
        return (b - 1.0 / k) / (1.0 - 1.0 / k)

    score = ScaleScore(
        fraction=fraction,
        window_px=window,
        balanced_accuracy=round(ci.value, 4),
        balanced_accuracy_ci=(round(ci.low, 4), round(ci.high, 4)),
        informedness=round(inf(ci.value), 4),
        informedness_ci=(round(inf(ci.low), 4), round(inf(ci.high), 4)),
    )
    return score, ci


def check_labels(labels: Sequence[Any]) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Labels -> integer codes, class names, counts; a UserError for one class or too few items per class."""
    names = np.asarray([str(v) for v in labels])
    classes, y = np.unique(names, return_inverse=True)
    counts = {str(c): int((names == c).sum()) for c in classes}
    if len(classes) < 2:
        raise UserError(
            f"locality profile: every sampled item has the label {classes[0]!r}: "
            "a one-class store carries no label signal to localise"
            if len(classes)
            else "locality profile: no labelled items"
        )
    small = {c: n for c, n in counts.items() if n < MIN_PER_CLASS}
    if small:
        raise UserError(f"locality profile: needs >= {MIN_PER_CLASS} sampled items per class, got {small}")
    return y.astype(np.int64), [str(c) for c in classes], counts


def window_sizes(shape: tuple[int, ...], fractions: Sequence[float] = CROP_FRACTIONS) -> list[int]:
    """Window sizes in work-resolution pixels for images of ``shape`` (H, W, ...); a UserError when the
    smallest would be under MIN_WINDOW_PX."""
    h, w = shape[0], shape[1]
    side = min(h, w)
    f = max(1, side // WORK_SIDE)  # as work_resolution
    work = side // f
    sizes = [int(round(fr * work)) for fr in fractions]
    if min(sizes) < MIN_WINDOW_PX:
        need = int(np.ceil(MIN_WINDOW_PX / min(fractions)))
        raise UserError(
            f"locality profile: images of {h}x{w} px are too small for windows of "
            f"{', '.join(f'{fr:g}' for fr in fractions)} of the side (need >= {need} px so the smallest window "
            f"holds {MIN_WINDOW_PX} px)"
        )
    return sizes


def locality_profile(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[Any],
    groups: Sequence[Any] | None = None,
    fractions: Sequence[float] = CROP_FRACTIONS,
    index_fraction: float = INDEX_FRACTION,
    n_boot: int = 1000,
    seed: int = 0,
) -> LocalityProfile:
    """The locality profile of labelled images (all of one shape; (H, W) / (H, W, C)).

    ``groups`` (patients, slides, loops) keep correlated items in one fold and are what the bootstrap
    resamples. Raises a one-line UserError for one class, too few items per class, or images too small.
    """
    if index_fraction not in fractions:
        raise ValueError(f"index_fraction {index_fraction} must be one of {tuple(fractions)}")
    if len(images) == 0:
        raise UserError("locality profile: no images")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    shape = np.asarray(images[0]).shape
    if any(np.asarray(im).shape != shape for im in images):
        raise UserError("locality profile: sampled images differ in shape; profile one image size at a time")
    y, classes, counts = check_labels(labels)
    sizes = window_sizes(shape, fractions)
    feats = batch_features(images, sizes)
    g = np.asarray([str(v) for v in groups]) if groups is not None else np.asarray([str(i) for i in range(len(y))])
    folds = _folds(y, g, seed)
    boot_groups = g if groups is not None else None
    scores: list[ScaleScore] = []
    unit, units = "sample", len(y)
    for j, (fr, win) in enumerate([*zip(fractions, sizes, strict=True), (1.0, -1)]):
        x = feats[j]
        pred = probe_predictions(x, y, folds)
        score, ci = _score(fr, win if win > 0 else min(shape[:2]), y, pred, boot_groups, n_boot, seed)
        scores.append(score)
        unit, units = ci.unit, ci.n_units
    whole = scores.pop()
    idx = scores[list(fractions).index(index_fraction)]

    def clip(v: float) -> float:
        return float(min(1.0, max(0.0, v)))

    notes = []
    if whole.informedness_ci[0] <= 0 and idx.informedness_ci[0] <= 0:
        notes.append(
            "the cheap probe reads no label signal above chance at any window size: the label is either in "
            "global structure the probe cannot see or faint; the index then rests on the absence of local evidence"
        )
    if shape[0] != shape[1]:
        notes.append(f"non-square images ({shape[0]}x{shape[1]}): window fractions refer to the shorter side")
    return LocalityProfile(
        index=round(clip(idx.informedness), 4),
        index_ci=(round(clip(idx.informedness_ci[0]), 4), round(clip(idx.informedness_ci[1]), 4)),
        index_fraction=index_fraction,
        whole_image=whole,
        scales=scores,
        items=len(y),
        classes=classes,
        class_counts=counts,
        bootstrap_unit=unit,
        bootstrap_units=units,
        work_side_px=min(shape[:2]) // max(1, min(shape[:2]) // WORK_SIDE),
        probe=(
            "ridge classifier (penalty by leave-one-out) on bag-of-windows filter-bank statistics "
            f"(Gaussian, LoG, gradient; scales <= window/4), grouped stratified {FOLDS}-fold CV"
        ),
        notes=notes,
    )
