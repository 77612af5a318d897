"""The two controls that make a benchmark trustworthy: the random-init ceiling and the supervised floor.

A benchmark for self-supervised pretraining must not be solvable without learning: a randomly
initialised encoder's frozen features, classified by kNN, should sit near chance (else the data leak
the label through low-level statistics that any encoder sees, as the old generated demo set did at
kNN accuracy 1.000). And the label must be learnable from the pixels: a small CNN trained on the
labels should score high on held-out items (else no pretraining can be expected to find it).

Both run in process on in-memory uint8 images (no store, no Ray), so tests, ``benchmarks/`` and the
recommender can call them on generated or sampled data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from pretextlab.evaluate.features import embed_images
from pretextlab.evaluate.knn import knn_predict
from pretextlab.evaluate.metrics import Estimate, classification_metrics

#: Labelled training items the supervised floor is trained on per benchmark modality (20 epochs,
#: scored on 200 held-out items). The ultrasound outline under speckle needs more of them than the
#: histology nest: the CNN overfits 800 (docs/benchmark.md, "supervised floor", has the measurements).
FLOOR_TRAIN_ITEMS: dict[str, int] = {"histology": 800, "ultrasound": 4000}
FLOOR_EPOCHS = 20

Augment = Literal["square", "hflip"]
AUGMENTS: tuple[str, ...] = get_args(Augment)


def augment_for(modality: str) -> Augment:
    """The flips under which a modality's images stay images it could produce.

    An ultrasound scan has an up and down: the probe sits at the top of the fan and depth grows
    downwards (attenuation, time-gain compensation, the fan's outline), so only a left-right mirror
    gives a scan that exists; up-down flips and transposes make images no probe produces, and
    measured on the benchmark's global setting they cost the supervised control accuracy (3,000
    items, width 16: 0.865 with the 8 symmetries against 0.905 with left-right only). A histology
    tile has no orientation, so all 8 symmetries of the square apply.
    """
    return "hflip" if modality == "ultrasound" else "square"


@dataclass(frozen=True)
class _Card:
    img_size: int
    in_chans: int
    mean: list[float]
    std: list[float]


def _balanced(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray | None, n_boot: int, seed: int) -> Estimate:
    return classification_metrics(labels, preds, probs, num_classes=int(labels.max()) + 1, n_boot=n_boot, seed=seed)[
        "balanced_accuracy"
    ]


def random_init_knn(
    images: np.ndarray,
    labels: np.ndarray,
    img_size: int = 64,
    patch_size: int = 8,
    depth: int | None = None,
    global_pool: str = "token",
    folds: int = 5,
    k: int = 20,
    seed: int = 0,
    n_boot: int = 500,
) -> Estimate:
    """Balanced accuracy (bootstrap CI) of kNN on a random-init timm ViT-Tiny's frozen features.

    Every item is predicted once, from the other folds (``folds``-fold cross-validation in a seeded
    order), so the estimate uses all items. ``depth`` None is the full 12-block ViT-Tiny.
    """
    from pretextlab.models.vit import BackboneConfig, create_backbone

    torch.manual_seed(seed)
    chans = int(images.shape[-1])
    cfg = BackboneConfig(
        arch="vit_tiny",
        img_size=img_size,
        patch_size=patch_size,
        in_chans=1 if chans == 1 else 3,
        global_pool=global_pool,
        depth=depth,
    )  # type: ignore[arg-type]
    model = create_backbone(cfg)
    card = _Card(img_size, cfg.in_chans, [0.5], [0.5])
    feats = embed_images(model, card, images, batch_size=128, device="cpu").numpy()
    y = np.asarray(labels, np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    preds = np.zeros(len(y), np.int64)
    probs = np.zeros((len(y), int(y.max()) + 1))
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        p, pr = knn_predict(feats[train], y[train], feats[test], k=k, num_classes=int(y.max()) + 1)
        preds[test], probs[test] = p, pr
    return _balanced(y, preds, probs, n_boot, seed)


class SmallCNN(nn.Module):
    """A stride-2 3x3 stem and four 3x3 conv blocks (BN, ReLU, 2x max-pool), a linear head on global average pooling.

    About 28 M multiply-adds per 64 px image at width 24 (12.5 M at 16; counted with torch's
    FlopCounterMode); the receptive field spans most of a 64 px image, so a region's outline can be
    judged as a whole.
    """

    def __init__(self, in_chans: int, num_classes: int, width: int = 24):
        super().__init__()
        widths = (width, 2 * width, 4 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c, w in itertools.pairwise(widths):
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.25


def supervised_cnn(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    width: int = 24,
    augment: Augment = "square",
    seed: int = 0,
    n_boot: int = 500,
) -> Estimate:
    """Balanced accuracy (bootstrap CI) on the test items of a small CNN trained from scratch on the train items.

    AdamW with a one-cycle schedule; flips as the only augmentation, which stretch a small training
    set for an outline-shape label: ``augment="square"`` draws from the 8 symmetries of the square
    (left-right, up-down, transpose), ``"hflip"`` only mirrors left-right, for images with an up and
    down (see :func:`augment_for`). CPU, deterministic given ``seed``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ytr = torch.as_tensor(np.asarray(train_labels, np.int64))
    xtr = _tensor(train_images)
    n_classes = int(max(ytr.max().item(), int(np.max(test_labels)))) + 1
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    model = SmallCNN(xtr.shape[1], n_classes, width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(xtr) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for start in range(0, len(xtr), batch_size):
            idx = perm[start : start + batch_size]
            xb, yb = xtr[idx], ytr[idx]
            if torch.rand(1, generator=gen).item() < 0.5:
                xb = xb.flip(3)
            if augment == "square" and torch.rand(1, generator=gen).item() < 0.5:
                xb = xb.flip(2)
            if augment == "square" and torch.rand(1, generator=gen).item() < 0.5:
                xb = xb.transpose(2, 3)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(_tensor(test_images[i : i + 256])) for i in range(0, len(test_images), 256)])
    probs = logits.softmax(dim=1).numpy()
    return _balanced(np.asarray(test_labels, np.int64), probs.argmax(1), probs, n_boot, seed)
