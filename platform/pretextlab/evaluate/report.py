"""Evaluate a saved encoder on a labelled catalog: kNN, linear probe, few-shot and label-free diagnostics.

One call loads the encoder (safetensors + card), turns the catalog into an evaluation set, splits it
without leaking patients, embeds every image once, and scores each protocol on the same test rows
with bootstrap confidence intervals. When test rows share a group (patient, else the slide / cine
loop they came from) the CIs are cluster-bootstrap CIs over those groups; ``result["bootstrap"]``
says which. Collapse is judged from several signals (``diagnostics.collapse_verdict``), the card's
final training loss included when the objective has a uniform-output value (DINO: ln(out_dim)).
The result is a JSON-able dict; ``render_table`` prints it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pretextlab.core.config import ConfigError, format_validation_error
from pretextlab.core.errors import UserError
from pretextlab.evaluate.dataset import EvalSet, load_eval_set
from pretextlab.evaluate.diagnostics import alignment, diagnostics, uniform_loss
from pretextlab.evaluate.feature_maps import save_feature_maps
from pretextlab.evaluate.features import embed_images
from pretextlab.evaluate.fewshot import few_shot
from pretextlab.evaluate.images import join_images
from pretextlab.evaluate.knn import knn_predict
from pretextlab.evaluate.linear import DEFAULT_CS, linear_probe
from pretextlab.evaluate.localisation import localise_encoder
from pretextlab.evaluate.metrics import METRICS, classification_metrics
from pretextlab.evaluate.resample import group_index
from pretextlab.evaluate.roi import read_roi_masks
from pretextlab.evaluate.splits import make_split
from pretextlab.modalities import ModalityName
from pretextlab.models import load_encoder
from pretextlab.models.encoder_io import preprocess

PositiveInt = Annotated[int, Field(ge=1)]


class EvaluateConfig(BaseModel):
    """How to evaluate (CLI flags, or a YAML file plus overrides); validated once, at the edge."""

    model_config = ConfigDict(extra="forbid")

    label_column: str = Field("label", min_length=1, description="catalog column holding the class")
    modality: ModalityName | None = Field(None, description="only rows of this modality")
    k: PositiveInt = Field(20, description="neighbours of the weighted kNN")
    temperature: float = Field(0.07, gt=0, description="kNN vote weight exp(sim / temperature)")
    linear_Cs: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: list(DEFAULT_CS), min_length=1, description="C grid of the linear probe"
    )
    shots: list[PositiveInt] = Field(default_factory=lambda: [1, 5, 10], description="few-shot n per class")
    fewshot_repeats: PositiveInt = Field(5, description="repeats (seeds) per shot count")
    fewshot_method: Literal["linear", "knn"] = "linear"
    fewshot_C: float = Field(1.0, gt=0, description="fixed C of the few-shot linear probe")
    n_bootstrap: PositiveInt = Field(1000, description="bootstrap resamples for the CIs")
    ci: float = Field(0.95, gt=0, lt=1)
    test_size: float = Field(0.3, gt=0, lt=1, description="held-out fraction when the catalog has no split")
    patches_per_slide: PositiveInt = 16
    patch_size: PositiveInt | None = Field(None, description="slide patch side at level 0 (default: encoder img_size)")
    cine_frame_step: PositiveInt | None = Field(None, description="every k-th cine frame (default: the middle frame)")
    alignment_images: int = Field(256, ge=0, description="test images for alignment under a horizontal flip (0: off)")
    batch_size: PositiveInt = 256
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ... (default: cuda when available)")
    seed: int = 0
    feature_maps: str | None = Field(None, description="folder for attention / PCA / similarity PNGs of one test image")
    localisation: bool = Field(
        True,
        description="score feature maps against the test rows' ROI masks (catalog column 'roi') when there are any",
    )
    localisation_images: int = Field(256, ge=1, description="at most this many test images with a mask are scored")
    keep_predictions: bool = Field(
        False,
        description="add each test row's label, group and kNN / linear predictions "
        "(for paired comparisons between encoders, evaluate.compare)",
    )


def _jsonable(obj: Any) -> Any:
    """Turn NaN/inf into None and NumPy scalars/arrays into Python values, recursively."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _config(cfg: EvaluateConfig | dict[str, Any] | None) -> EvaluateConfig:
    if isinstance(cfg, EvaluateConfig):
        return cfg
    try:
        return EvaluateConfig.model_validate(cfg or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "evaluate config")) from None


def dataset_name(dest: str) -> str:
    """The last path component of a store (``/data/stores/liver/`` -> ``liver``)."""
    return str(dest).rstrip("/").rsplit("/", 1)[-1] or "dataset"


def _metrics(
    y: np.ndarray,
    preds: Any,
    probs: Any,
    nc: int,
    cfg: EvaluateConfig,
    seed_offset: int,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    est = classification_metrics(
        y,
        np.asarray(preds),
        np.asarray(probs),
        nc,
        n_boot=cfg.n_bootstrap,
        ci=cfg.ci,
        seed=cfg.seed + seed_offset,
        groups=groups,
    )
    return {name: e.to_dict() for name, e in est.items()}


def bootstrap_unit(groups: np.ndarray, item_ids: np.ndarray) -> dict[str, Any]:
    """What the CIs resample for these test rows: whole groups (patients, or the items the rows came from) or rows.

    A row's group is its patient id, else its item (slide, cine loop, image stack entry): the same
    column the split keeps on one side. When every test row is its own group the bootstrap is the
    plain row bootstrap.
    """
    grp = group_index(groups, len(groups))
    by_item = bool(np.array_equal(np.asarray(groups, dtype=str), np.asarray(item_ids, dtype=str)))
    return {
        "unit": grp.unit,
        "group_by": "item_id" if by_item else "patient_id",
        "n_groups": grp.count,
        "n_test": int(len(groups)),
        "method": (
            "cluster bootstrap: whole groups resampled with replacement"
            if grp.resampled
            else "row bootstrap: every test row is its own group"
        ),
    }


def external_split(train: EvalSet, test: EvalSet) -> EvalSet:
    """One eval set whose catalog split is ``train``'s rows for fitting and ``test``'s rows for scoring
    (external transfer: probes fitted on one dataset, scored on another). Labels are mapped onto the
    union of class names; groups and item ids are prefixed so two stores' patients never merge."""
    names = sorted(set(train.class_names) | set(test.class_names))
    index = {n: i for i, n in enumerate(names)}

    def remap(es: EvalSet) -> np.ndarray:
        return np.array([index[es.class_names[int(y)]] for y in es.labels], dtype=np.int64)

    def tag(values: np.ndarray, prefix: str) -> np.ndarray:
        return np.array([f"{prefix}:{v}" for v in values], dtype=object)

    return EvalSet(
        images=join_images([train.images, test.images]),
        labels=np.concatenate([remap(train), remap(test)]),
        class_names=names,
        groups=np.concatenate([tag(train.groups, "train"), tag(test.groups, "test")]),
        item_ids=np.concatenate([tag(train.item_ids, "train"), tag(test.item_ids, "test")]),
        splits=np.array(["train"] * len(train) + ["test"] * len(test), dtype=object),
        kinds=np.concatenate([train.kinds, test.kinds]),
        notes=[
            *train.notes,
            *test.notes,
            f"external transfer: probes fitted on {len(train)} rows, scored on {len(test)} rows of another store",
        ],
    )


def evaluate_encoder(
    encoder_folder: str | Path,
    dest: str,
    cfg: EvaluateConfig | dict[str, Any] | None = None,
    test_dest: str | None = None,
) -> dict[str, Any]:
    """Score a saved encoder's frozen features on the labelled catalog at ``dest``; returns a JSON-able dict.

    With ``test_dest`` (external transfer) every row of ``dest`` fits the probes and every row of
    ``test_dest`` scores them; the labels of ``test_dest`` are never seen at fit time.
    """
    cfg = _config(cfg)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model, card = load_encoder(encoder_folder)

    def load(store: str) -> EvalSet:
        return load_eval_set(
            store,
            cfg.label_column,
            cfg.patches_per_slide,
            cfg.patch_size or card.img_size,
            cfg.seed,
            size=card.img_size,
            cine_frame_step=cfg.cine_frame_step,
            modality=cfg.modality,
            resolution=card.resolution,
        )

    data = load(dest) if test_dest is None else external_split(load(dest), load(test_dest))
    timings["load"] = time.perf_counter() - t0
    notes = list(data.notes)
    nc = data.num_classes
    split = make_split(data.labels, data.groups, data.splits, test_size=cfg.test_size, seed=cfg.seed)
    notes += split.notes
    if len(split.train) == 0 or len(split.test) == 0:
        raise UserError(
            f"catalog at {dest}: the split ({split.strategy}) leaves {len(split.train)} train and "
            f"{len(split.test)} test rows; label more items or change the split column"
        )
    if len(np.unique(data.labels[split.train])) < 2:
        raise UserError(
            f"catalog at {dest}: after the split ({split.strategy}) the training rows hold only one "
            "class; label more items or patients"
        )

    t = time.perf_counter()
    feats = embed_images(model, card, data.images, cfg.batch_size, cfg.device)
    timings["embed"] = time.perf_counter() - t
    x = feats.numpy()
    y = data.labels
    tr, va, te = split.train, split.val, split.test
    ytest = y[te]
    gtest = data.groups[te]
    boot = bootstrap_unit(gtest, data.item_ids[te])

    t = time.perf_counter()
    k = min(cfg.k, len(tr))
    knn_preds, knn_probs = knn_predict(x[tr], y[tr], x[te], k=k, temperature=cfg.temperature, num_classes=nc)
    knn = {"k": k, "temperature": cfg.temperature, "metrics": _metrics(ytest, knn_preds, knn_probs, nc, cfg, 0, gtest)}
    timings["knn"] = time.perf_counter() - t

    t = time.perf_counter()
    lin = linear_probe(
        x[tr],
        y[tr],
        x[te],
        x[va] if len(va) else None,
        y[va] if len(va) else None,
        Cs=cfg.linear_Cs,
        num_classes=nc,
        groups=data.groups[tr],
        seed=cfg.seed,
    )
    notes += lin.notes
    linear = {
        "C": lin.C,
        "selection": lin.selection,
        "val_scores": {f"{c:g}": s for c, s in lin.val_scores.items()},
        "metrics": _metrics(ytest, lin.preds, lin.probs, nc, cfg, 1, gtest),
    }
    timings["linear"] = time.perf_counter() - t

    t = time.perf_counter()
    fs = few_shot(
        x[tr],
        y[tr],
        x[te],
        ytest,
        cfg.shots,
        cfg.fewshot_repeats,
        cfg.fewshot_method,
        nc,
        k=cfg.k,
        temperature=cfg.temperature,
        C=cfg.fewshot_C,
        seed=cfg.seed,
        groups=gtest,
        n_boot=cfg.n_bootstrap,
        ci=cfg.ci,
    )
    notes += [f"{r.shots}-shot: {n}" for r in fs for n in r.notes]
    fewshot = {"method": cfg.fewshot_method, "repeats": cfg.fewshot_repeats, "results": [r.to_dict() for r in fs]}
    timings["fewshot"] = time.perf_counter() - t

    t = time.perf_counter()
    final = uniform_loss(card.objective, card.objective_config, card.metrics)
    diag: dict[str, Any] = dict(
        diagnostics(
            feats, seed=cfg.seed, loss=final[0] if final else None, uniform_loss_value=final[1] if final else None
        )
    )
    if cfg.alignment_images:
        sub = te[: cfg.alignment_images]
        mirrored = np.ascontiguousarray(data.images[sub][:, :, ::-1])
        flipped = embed_images(model, card, mirrored, cfg.batch_size, cfg.device)
        diag["alignment_hflip"] = alignment(feats[sub], flipped)
    if diag["collapse"] != "no":
        notes.append(f"{diag['collapse']} collapse: " + "; ".join(diag["collapse_reasons"]))
    timings["diagnostics"] = time.perf_counter() - t

    localisation: dict[str, Any] | None = None
    if cfg.localisation:
        t = time.perf_counter()
        localisation = _localise(model, card, data, te, test_dest or dest, cfg, notes)
        timings["localisation"] = time.perf_counter() - t

    maps: list[str] = []
    if cfg.feature_maps:
        image = preprocess(data.images[te[:1]], card)
        maps = [str(p) for p in save_feature_maps(model, image, cfg.feature_maps, mean=card.mean, std=card.std)]
    timings["total"] = time.perf_counter() - t0

    counts_test = np.bincount(ytest, minlength=nc)
    result = {
        "encoder": {
            "folder": str(encoder_folder),
            "name": card.name,
            "objective": card.objective,
            "timm_name": card.timm_name,
            "embed_dim": card.embed_dim,
            "img_size": card.img_size,
            "in_chans": card.in_chans,
            "global_pool": card.global_pool,  # the embedding evaluated: CLS token ("token") or mean ("avg")
            "weights_sha256": card.weights_sha256,
        },
        "dataset": {
            "dest": str(dest),
            "test_dest": test_dest,
            "name": dataset_name(dest),
            "label_column": cfg.label_column,
            "class_names": data.class_names,
            "n_samples": len(data),
            "n_items": int(len(set(data.item_ids))),
            "kinds": sorted(set(data.kinds.tolist())),
            "test_class_counts": {n: int(c) for n, c in zip(data.class_names, counts_test, strict=True)},
        },
        "split": {
            "strategy": split.strategy,
            "n_train": len(tr),
            "n_val": len(va),
            "n_test": len(te),
            "n_groups": int(len(set(data.groups.tolist()))),
        },
        "bootstrap": boot,
        "knn": knn,
        "linear": linear,
        "fewshot": fewshot,
        "diagnostics": diag,
        "feature_maps": maps,
        "localisation": localisation,
        **(
            {
                "predictions": {
                    "rows": te,
                    "item_ids": data.item_ids[te],
                    "groups": gtest,
                    "y_true": ytest,
                    "knn": {"preds": knn_preds, "probs": knn_probs},
                    "linear": {"preds": lin.preds, "probs": lin.probs},
                }
            }
            if cfg.keep_predictions
            else {}
        ),
        "device": str(next(model.parameters()).device),
        "config": cfg.model_dump(),
        "notes": notes,
        "timings_s": {k_: round(v, 3) for k_, v in timings.items()},
    }
    return _jsonable(result)


def _localise(
    model: Any, card: Any, data: EvalSet, test_rows: np.ndarray, store: str, cfg: EvaluateConfig, notes: list[str]
) -> dict[str, Any] | None:
    """Pointing game and AUROC of the feature maps on the test rows that have an ROI mask (None: no masks)."""
    rows = [int(i) for i in test_rows if data.kinds[i] == "image"]
    found = read_roi_masks(store, [str(data.item_ids[i]) for i in rows])
    notes += found.notes
    pairs = [(i, m) for i, m in zip(rows, found.masks, strict=True) if m is not None][: cfg.localisation_images]
    if not pairs:
        return None
    idx = np.array([i for i, _ in pairs])
    res = localise_encoder(
        model,
        card,
        data.images[idx],
        [m for _, m in pairs],
        data.groups[idx],
        n_boot=cfg.n_bootstrap,
        ci=cfg.ci,
        seed=cfg.seed,
    )
    out = res.to_dict()
    out["with_mask"] = len(pairs)
    return out


def _cell(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    lo, hi = metric.get("low"), metric.get("high")
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{metric['value']:.3f}{ci}"


def _collapse(diag: dict[str, Any]) -> str:
    level = diag.get("collapse") or ("complete" if diag.get("collapsed") else "no")
    return level if level == "no" else level.upper()


def _resampled(boot: dict[str, Any] | None) -> str:
    if not boot or boot.get("unit") != "group":
        return ""
    what = "patients" if boot.get("group_by") == "patient_id" else "items"
    return f", resampling {boot['n_groups']} {what}"


def render_table(result: dict[str, Any]) -> str:
    """The result as an aligned text table: one row per protocol, one column per metric (95% CIs in brackets)."""
    enc, ds, sp = result["encoder"], result["dataset"], result["split"]
    head = ["method", "accuracy", "balanced acc", "macro-F1", "AUROC"]
    rows: list[list[str]] = []
    knn, lin = result["knn"], result["linear"]
    rows.append([f"kNN (k={knn['k']})"] + [_cell(knn["metrics"].get(m)) for m in METRICS])
    rows.append([f"linear (C={lin['C']:g})"] + [_cell(lin["metrics"].get(m)) for m in METRICS])
    for r in result["fewshot"]["results"]:
        cells = [
            f"{r['mean'][m]:.3f} ± {r['std'][m]:.3f}" if r["mean"].get(m) is not None else "n/a"
            for m in ("accuracy", "balanced_accuracy", "macro_f1")
        ]
        rows.append([f"{r['shots']}-shot {r['method']} (x{r['repeats']})", *cells, "-"])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    ci = int(round(100 * result["config"].get("ci", 0.95)))
    lines = [
        f"encoder {enc['name']} (objective: {enc['objective'] or '-'}, {enc['timm_name']}, D={enc['embed_dim']}) "
        f"on {ds['name']}: {len(ds['class_names'])} classes, {ds['n_samples']} samples",
        f"split: {sp['strategy']}; train {sp['n_train']}, val {sp['n_val']}, test {sp['n_test']} "
        f"({ci}% bootstrap CIs in brackets{_resampled(result.get('bootstrap'))})",
        fmt.format(*head),
        "  ".join("-" * w for w in widths),
        *(fmt.format(*row) for row in rows),
    ]
    d = result["diagnostics"]
    diag = (
        f"diagnostics: rankme {d['rankme']:.1f} of D={d['dim']}, embedding std {d['embedding_std']:.4f} "
        f"(healthy ~{d['healthy_std']:.4f}), collapsed: {_collapse(d)}, "
        f"uniformity {d['uniformity']:.3f}"
    )
    if d.get("alignment_hflip") is not None:
        diag += f", alignment (h-flip) {d['alignment_hflip']:.3f}"
    lines.append(diag)
    lines += render_localisation(result.get("localisation"))
    for label, block in (("kNN", knn), ("linear", lin)):
        lines += [f"note: {label} {name}: {m['note']}" for name, m in block["metrics"].items() if m.get("note")]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def render_localisation(loc: dict[str, Any] | None) -> list[str]:
    """Lines for the ROI localisation scores (pointing game, AUROC) of the mean attention and anchor maps."""
    if not loc:
        return []

    def ci(block: dict[str, Any]) -> str:
        return f"{block['value']:.3f} [{block['low']:.3f}, {block['high']:.3f}]"

    skipped = len(loc["skipped"])
    out = [f"localisation on {loc['n_images']} test images with an ROI ({skipped} empty or full masks skipped):"]
    for name in ("attention-mean", "anchor-similarity"):
        if name in loc["pointing_game"]:
            out.append(f"  {name}: pointing game {ci(loc['pointing_game'][name])}, AUROC {ci(loc['auroc'][name])}")
    return out
