"""Profile a store and recommend a pretext objective family, with the evidence (docs/recommend.md).

    pretextlab recommend STORE [--out DIR] [--sample N] [--seed S] [--modality M] [--label-column C]
                         [--dynamic-range-db DB] [--pilot [--pilot-steps N] [--pilot-set KEY=VALUE ...]]

Reads a seeded random sample of images (stack images) or frames (cine loops) straight from the Zarr
store, local or s3://, chunk by chunk (never the whole store), and measures the noise profile (speckle
statistics or stain spread) and, when the sample has labels, the signal-locality profile (how much of
the label a probe reads from small windows vs the whole image). The rule of pretextlab.profile.recommend
turns both into an objective family, an objective and its starting config, each reason tied to a
measured number. Writes recommendation.json, recommendation.md and a self-contained recommendation.html
to --out. --pilot runs a tiny study (one objective per family + random init, pretextlab study's runner
on Ray) on the store and says whether its verdict agrees. An empty store, one class, images too small
for the windows or an unknown modality: one line, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pretextlab.core.errors import UserError

DEFAULT_SAMPLE = 512
NOISE_IMAGES = 64
DEFAULT_DYNAMIC_RANGE_DB = 50.0
#: tissue patches a slide offers the sample (drawn like cine frames), and their side at level 0
SLIDE_PATCHES = 64
SLIDE_PATCH = 224


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="an ingested store (folder or s3://bucket/prefix)")
    parser.add_argument("--out", metavar="DIR", help="where the card goes (default: ./recommend-<store name>)")
    parser.add_argument("--sample", type=_positive, default=DEFAULT_SAMPLE, help="images/frames to profile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modality", help="profile this modality's rows (default: the store's only/most common)")
    parser.add_argument("--label-column", default="label", help="catalog column with the labels (default: label)")
    parser.add_argument(
        "--dynamic-range-db",
        type=float,
        help=f"log-compression dynamic range of B-mode pixels (default: {DEFAULT_DYNAMIC_RANGE_DB:g}, assumed)",
    )
    parser.add_argument("--pilot", action="store_true", help="also run a tiny study and check the recommendation")
    parser.add_argument("--pilot-steps", type=_positive, default=30, help="pilot pretraining steps per arm")
    parser.add_argument(
        "--pilot-set", nargs="*", default=[], metavar="KEY=VALUE", help="override pilot study fields (dotted paths)"
    )
    parser.add_argument("--address", help="Ray cluster address for --pilot (default: a local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster for --pilot")


# --------------------------------------------------------------------------- sampling


def choose_rows(cat: Any, store: str, modality: str | None, seed: int) -> tuple[Any, str]:
    """The catalog rows to sample from (stack images and cine loops of one modality) and that modality."""
    from pretextlab.modalities import get_modality

    if len(cat) == 0:
        raise UserError(f"{store}: empty store (the catalog has no items)")
    usable = cat[cat["kind"].isin(["image", "cine", "slide"])]
    if "roi" in cat.columns:  # bench-data's mask rows carry no label and are not images
        masks = set(cat["roi"].dropna())
        usable = usable[~usable["item_id"].isin(masks)]
    if len(usable) == 0:
        kinds = ", ".join(sorted(set(cat["kind"].astype(str))))
        raise UserError(f"{store}: no slides, stack images or cine loops to profile (items: {kinds})")
    if modality is not None:
        modality = get_modality(modality).name
        usable = usable[usable["modality"] == modality]
        if len(usable) == 0:
            raise UserError(f"{store}: no {modality} slides, images or cine loops (--modality {modality})")
    else:
        counts = Counter(usable["modality"].astype(str))
        modality = counts.most_common(1)[0][0]
        get_modality(modality)
        usable = usable[usable["modality"] == modality]
    return usable, modality


def plan_sample(rows: Any, n: int, seed: int) -> list[tuple[int, int]]:
    """(row position, k) pairs: n draws without replacement over every image, every cine frame and
    ``SLIDE_PATCHES`` tissue patches of every slide (k: the frame, or the slide's k-th patch)."""
    rng = np.random.default_rng([seed, 0x7EC])
    kind = rows["kind"].to_numpy()
    frames = np.where(kind == "cine", rows["frames"].fillna(1).astype(int).to_numpy(), 1)
    frames = np.where(kind == "slide", SLIDE_PATCHES, frames)
    total = int(frames.sum())
    picks = np.sort(rng.choice(total, size=min(n, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(frames)[:-1]])
    pos = np.searchsorted(starts, picks, side="right") - 1
    return [(int(p), int(k - starts[p])) for p, k in zip(pos, picks, strict=True)]


def read_sample(
    store: str,
    rows: Any,
    picks: list[tuple[int, int]],
    storage_options: dict[str, Any] | None,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[int]]:
    """Read the picked images / frames / slide patches: one orthogonal selection per stack array and per
    cine loop, so only the chunks that hold them are fetched; a slide's patches are ``SLIDE_PATCH``-pixel
    level-0 windows centred on tissue (as evaluation places them). Returns (H, W, C) arrays and their
    row positions."""
    from pretextlab.storage import open_item

    by_source: dict[tuple[str, str | None], list[tuple[int, int, int]]] = {}
    slides: dict[str, list[tuple[int, int, int]]] = {}
    for k, (p, frame) in enumerate(picks):
        row = rows.iloc[p]
        if row["kind"] == "slide":
            slides.setdefault(str(row["item_id"]), []).append((k, frame, p))
        elif row["kind"] == "image":
            key = (str(row["group"]), str(row["split"]) if row["split"] is not None else "all")
            by_source.setdefault(key, []).append((k, int(row["index"]), p))
        else:
            by_source.setdefault((str(row["item_id"]), None), []).append((k, frame, p))
    images: list[np.ndarray | None] = [None] * len(picks)
    where = [0] * len(picks)
    for (item_id, split), wanted in by_source.items():
        item = open_item(store, item_id, storage_options)
        idx = sorted({w[1] for w in wanted})
        arr = item.level(0) if split is None else item._array(f"{split}/images")
        block = np.asarray(arr.get_orthogonal_selection((idx,)))  # (n, C, Y, X) either way
        at = {j: i for i, j in enumerate(idx)}
        for k, j, p in wanted:
            images[k] = np.ascontiguousarray(block[at[j]].transpose(1, 2, 0))
            where[k] = p
    if slides:
        from pretextlab.evaluate.dataset import read_level0_patch, tissue_patch_origins

        for item_id, wanted in slides.items():
            item = open_item(store, item_id, storage_options)
            # the slide's SLIDE_PATCHES candidate patches, fixed by the seed and the slide: the k-th is drawn
            rng = np.random.default_rng([seed, int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16)])
            origins, _ = tissue_patch_origins(item, SLIDE_PATCHES, SLIDE_PATCH, rng)
            for k, j, p in wanted:
                if j < len(origins):  # a slide smaller than SLIDE_PATCHES patches offers fewer
                    x0, y0 = origins[j]
                    images[k] = read_level0_patch(item, x0, y0, SLIDE_PATCH)
                    where[k] = p
    kept = [k for k, im in enumerate(images) if im is not None]
    return [images[k] for k in kept], [where[k] for k in kept]  # type: ignore[misc]


# --------------------------------------------------------------------------- profiles


def noise_summary(modality: str, images: list[np.ndarray], dynamic_range_db: float | None) -> Any:
    """The modality's noise model measured on up to NOISE_IMAGES images, or a labelled gap."""
    from pretextlab.modalities import get_modality
    from pretextlab.profile import speckle_profile, stain_profile
    from pretextlab.profile.recommend import DEFAULT_DYNAMIC_RANGE_NOTE, NoiseSummary, speckle_summary, stain_summary

    model = get_modality(modality).noise
    sub = images[:NOISE_IMAGES]
    try:
        if model == "speckle":
            dr = dynamic_range_db if dynamic_range_db is not None else DEFAULT_DYNAMIC_RANGE_DB
            s = speckle_summary(speckle_profile(sub, dynamic_range_db=dr).to_dict())
            if dynamic_range_db is None:
                s.note = DEFAULT_DYNAMIC_RANGE_NOTE.format(dr=dr)
            return s
        if model == "stain":
            if sub[0].shape[-1] < 3:
                return NoiseSummary(model=model, measured=False, note="stain profile needs RGB images")
            return stain_summary(stain_profile(sub).to_dict())
    except UserError as exc:
        return NoiseSummary(model=model, measured=False, note=str(exc))
    return NoiseSummary(
        model=model,
        measured=False,
        note=f"no profile for the {model!r} noise model of {modality} yet (noise not assessed)",
    )


def _labels(rows: Any, where: list[int], column: str) -> list[str | None]:
    if column not in rows.columns:
        return [None] * len(where)
    vals = rows[column].to_numpy()
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in (vals[p] for p in where)]


def _groups(rows: Any, where: list[int]) -> list[str] | None:
    """Patients when the catalog names them; else cine loops / slides (their frames / patches are
    correlated); else None."""
    if "patient_id" in rows.columns and rows["patient_id"].notna().any():
        pid = rows["patient_id"].astype(object).where(rows["patient_id"].notna(), rows["item_id"]).to_numpy()
        return [str(pid[p]) for p in where]
    if rows["kind"].isin(["cine", "slide"]).any():  # frames of a loop, patches of a slide: correlated
        ids = rows["item_id"].to_numpy()
        return [str(ids[p]) for p in where]
    return None


def profile_store(
    store: str,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    modality: str | None = None,
    label_column: str = "label",
    dynamic_range_db: float | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample the store, profile it, apply the rule. Returns the report dict (also what the card renders)."""
    from pretextlab.profile.locality import locality_profile
    from pretextlab.profile.recommend import recommend
    from pretextlab.storage import read_catalog

    t0 = time.perf_counter()
    cat = read_catalog(store, storage_options)
    rows, modality = choose_rows(cat, store, modality, seed)
    picks = plan_sample(rows, sample, seed)
    images, where = read_sample(store, rows, picks, storage_options, seed)
    t_read = time.perf_counter() - t0
    shapes = Counter(im.shape for im in images)
    shape = shapes.most_common(1)[0][0]
    keep = [i for i, im in enumerate(images) if im.shape == shape]
    notes: list[str] = []
    if len(keep) < len(images):
        notes.append(f"{len(images) - len(keep)} sampled image(s) of another shape than {shape} skipped")
    images = [images[i] for i in keep]
    where = [where[i] for i in keep]
    noise = noise_summary(modality, images, dynamic_range_db)
    labels = _labels(rows, where, label_column)
    labelled = [i for i, v in enumerate(labels) if v is not None]
    locality = None
    if not labelled:
        notes.append(
            f"no labels in column {label_column!r} of the sampled rows: "
            "signal locality not measured, noise profile only"
        )
    else:
        if len(labelled) < len(labels):
            notes.append(f"{len(labels) - len(labelled)} unlabelled sampled image(s) left out of the locality profile")
        groups = _groups(rows, where)
        locality = locality_profile(
            [images[i] for i in labelled],
            [labels[i] for i in labelled],
            None if groups is None else [groups[i] for i in labelled],
            seed=seed,
        )
    rec = recommend(locality, noise, modality)
    return {
        "store": store,
        "modality": modality,
        "sample": {
            "requested": sample,
            "profiled": len(images),
            "labelled": len(labelled),
            "rows_in_store": int(len(rows)),
            "seed": seed,
            "image_shape": list(shape),
            "kinds": sorted(set(rows["kind"].astype(str))),
            **_slide_scale(rows),
            "read_seconds": round(t_read, 2),
        },
        "noise": noise.model_dump(mode="json"),
        "locality": None if locality is None else locality.model_dump(mode="json"),
        "recommendation": rec.model_dump(mode="json"),
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 2),
        "_examples": _examples(images, labels),
    }


def _slide_scale(rows: Any) -> dict[str, Any]:
    """For slides: the patch side and the pixel size (the catalog's level-0 mpp, median) the profile used."""
    slides = rows[rows["kind"] == "slide"]
    if len(slides) == 0:
        return {}
    mpps = slides["mpp"].dropna().astype(float) if "mpp" in slides.columns else slides["kind"].iloc[:0]
    return {
        "slide_patch_px": SLIDE_PATCH,
        "slide_patches_per_slide": SLIDE_PATCHES,
        "slide_mpp": round(float(mpps.median()), 4) if len(mpps) else None,
    }


def _examples(images: list[np.ndarray], labels: list[str | None], per_class: int = 2) -> list[tuple[str, np.ndarray]]:
    out: list[tuple[str, np.ndarray]] = []
    seen: Counter[str] = Counter()
    for im, lab in zip(images, labels, strict=True):
        key = "unlabelled" if lab is None else f"label {lab}"
        if seen[key] < per_class:
            seen[key] += 1
            out.append((key, im))
    return out[:6]


# --------------------------------------------------------------------------- pilot


def family_of(arm: str, objective: str) -> str:
    from pretextlab.objectives import get_objective_class
    from pretextlab.profile.recommend import REGISTRY_FAMILY

    back = {v: k for k, v in REGISTRY_FAMILY.items()}
    return back.get(get_objective_class(objective).family, objective)


def pilot_config(report: dict[str, Any], out: Path, args: argparse.Namespace) -> Any:
    """The pilot's StudyConfig: the study's default arms (one per family) + random init, a 2-block ViT-Tiny,
    ``--pilot-steps`` steps, tiny evaluation; ``--pilot-set`` overrides any field."""
    from pretextlab.study import load_study

    # stills and tiles (image stacks) stream as frames whatever the modality's default sampling
    kind = ", kind: frames" if "image" in (report["sample"].get("kinds") or []) else ""
    side = int(min(report["sample"]["image_shape"][:2]))
    img = 32 if side < 64 else 64
    overrides = [
        "name=pilot",
        f"steps={args.pilot_steps}",
        f"datasets=[{{name: pilot, store: {json.dumps(args.store)}, modality: {report['modality']}, "
        f"label_column: {args.label_column}{kind}}}]",
        f"backbone={{arch: vit_tiny, img_size: {img}, patch_size: 8, depth: 2}}",
        f"pretrain={{data: {{clip: {{size: {img}}}}}, train: {{batch_size: 16, num_workers: 1, cpus_per_worker: 1}}}}",
        "evaluate={n_bootstrap: 500, shots: [1], fewshot_repeats: 1, alignment_images: 0}",
        f"storage={json.dumps(str(out / 'pilot'))}",
        f"registry={json.dumps(str(out / 'pilot' / 'registry'))}",
        *args.pilot_set,
    ]
    return load_study(None, overrides)


def pilot_arms(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each finished pilot cell as the card shows it: arm, family, the study's metric (linear-probe
    balanced accuracy) with its 95 % CI (None when the evaluation gave none), and the collapse flag.
    Why: a verdict alone ("a tie") does not say whether the arms sat together at chance or apart with
    wide intervals; these rows do, and they are what a validation grid needs to tell the two apart.
    Random init under each readout is a row; a cell without the metric is none."""
    import math

    from pretextlab.study.results import is_baseline, results_table

    def num(x: Any) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    rows = []
    for r in results_table(records).to_dict("records"):
        value, low, high = num(r["linear_bal_acc"]), num(r["linear_bal_acc_low"]), num(r["linear_bal_acc_high"])
        if r["status"] != "complete" or value is None:
            continue
        rows.append(
            {
                "arm": r["arm"],
                "family": r["family"],
                "linear_bal_acc": value,
                "ci95": None if low is None or high is None else [low, high],
                "collapse": r["collapse"] if isinstance(r["collapse"], str) else None,
            }
        )
    return sorted(rows, key=lambda r: (not is_baseline(r["arm"]), r["arm"]))  # random init first, then by name


def run_pilot(report: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A tiny study on the store (one objective per family + random init); does its winner's family agree?"""
    from pretextlab.cluster import init_ray
    from pretextlab.jobs.study import plan_study, run_study

    cfg = pilot_config(report, out, args)
    plan = plan_study(cfg, "recommend --pilot")
    init_ray(args.address, num_cpus=args.num_cpus)
    result = run_study(plan)
    verdict = result.verdicts["pilot"]
    winner = verdict.winner
    arms = {a.name or a.objective: a.objective for a in cfg.arms}
    fam = None if winner is None or winner not in arms else family_of(winner, arms[winner])
    rec_family = report["recommendation"]["family"]
    agrees = None if fam is None else fam == rec_family
    if winner is None:
        outcome = "no single winner (a tie at this budget): the pilot neither confirms nor contradicts"
    elif fam is None:
        outcome = f"{winner} wins: no pretrained arm beats it at this budget, too small to judge"
    else:
        outcome = ("agrees with" if agrees else "DISAGREES with") + f" the recommendation ({rec_family})"
    return {
        "steps": args.pilot_steps,
        "winner": winner,
        "winner_family": fam,
        "verdict": verdict.sentence,
        "agrees": agrees,
        "summary": f"pilot study {verdict.sentence} -> {outcome}",
        "arms": pilot_arms(result.records),
        "report": result.files["report.html"],
    }


# --------------------------------------------------------------------------- run


def default_out(store: str) -> Path:
    name = store.rstrip("/").rsplit("/", 1)[-1] or "store"
    return Path(f"recommend-{name}")


def write_outputs(report: dict[str, Any], out: Path) -> dict[str, Path]:
    from pretextlab.profile.card import html_card, markdown_card
    from pretextlab.storage import fs as sfs

    examples = report.pop("_examples", [])
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "recommendation.json", "md": out / "recommendation.md", "html": out / "recommendation.html"}
    sfs.atomic_write_bytes(str(files["json"]), json.dumps(report, indent=1).encode())
    sfs.atomic_write_bytes(str(files["md"]), markdown_card(report).encode())
    sfs.atomic_write_bytes(str(files["html"]), html_card(report, examples).encode())
    return files


def run(args: argparse.Namespace) -> int:
    from pretextlab.profile.card import summary_lines
    from pretextlab.storage import fs as sfs

    so = sfs.storage_options_for(args.store) or None
    report = profile_store(
        args.store, args.sample, args.seed, args.modality, args.label_column, args.dynamic_range_db, so
    )
    out = Path(args.out) if args.out else default_out(args.store)
    argv = sys.argv[sys.argv.index("recommend") + 1 :] if "recommend" in sys.argv else sys.argv[1:]
    report["command"] = " ".join(["pretextlab", "recommend", *(shlex.quote(a) for a in argv)])
    report["sample"]["sha256"] = hashlib.sha256(json.dumps(report["sample"], sort_keys=True).encode()).hexdigest()[:12]
    print("\n".join(summary_lines(report)), flush=True)
    if args.pilot:
        if report["locality"] is None:
            raise UserError(f"{args.store}: --pilot needs labels (column {args.label_column!r}) to compare arms")
        report["pilot"] = run_pilot(report, out, args)
        print(report["pilot"]["summary"])
    files = write_outputs(report, out)
    print(f"card: {files['html']}  (also {files['md'].name}, {files['json'].name})")
    return 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.recommend"))
