"""`pretextlab recommend` benchmarks: profiling time vs store size, and the validation grid.

    python benchmarks/recommend.py scaling [--sizes 1000,10000] [--sample 512]
    python benchmarks/recommend.py grid [--localities 0,0.5,1] [--noises 0,0.5,1] [--items 400] [--pilot-steps 200]

``scaling`` writes stores of N frames (200 distinct ultrasound phantoms tiled to N: the profile reads a
fixed-size sample, so what grows with N is the catalog and the chunk look-ups, not the pixels) with the
ingest writer and times ``profile_store`` (target: 10,000 frames in < 2 min on 2 cores).

``grid`` is the validation of the rule where the answer is known: for every (modality, locality, noise)
setting it writes a bench-data store, runs ``recommend`` and, with ``--pilot-steps`` > 0, the pilot
study, and prints the confusion table "recommended family x pilot's best family" (ties counted apart).
Without --pilot-steps only the recommendation column is filled (the cheap part). Results go to
.bench/recommend-*.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import PeakPss, compare, print_figures, write_results  # noqa: E402


def _store(base: Path, name: str, images: np.ndarray, labels: np.ndarray, modality: str) -> Path:
    from pretextlab.storage import rebuild_catalog
    from pretextlab.storage.writer import ItemPlan, write_item

    raw = base / f"raw-{name}"
    raw.mkdir(parents=True, exist_ok=True)
    np.savez(raw / f"{name}.npz", train_images=images, train_labels=labels.reshape(-1, 1).astype(np.uint8))
    r = write_item(
        ItemPlan(item_id=name, sources=[str(raw / f"{name}.npz")], reader="npz", fingerprint=name, modality=modality),
        str(base / name),
    )
    assert r.status == "ingested", r
    rebuild_catalog(str(base / name))
    return base / name


def scaling(sizes: list[int], sample: int) -> list[dict]:
    from pretextlab.jobs.recommend import profile_store
    from pretextlab.phantoms import generate

    ps = generate("ultrasound", n=200, size=64, locality=1.0, noise=0.5, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            reps = -(-n // 200)
            store = _store(
                Path(tmp), f"us{n}", np.tile(ps.images, (reps, 1, 1, 1))[:n], np.tile(ps.labels, reps)[:n], "ultrasound"
            )
            with PeakPss() as mem:
                t0 = time.perf_counter()
                rep = profile_store(str(store), sample=sample)
                dt = time.perf_counter() - t0
            rows.append(
                {
                    "frames": n,
                    "sample": sample,
                    "seconds": round(dt, 1),
                    "read_seconds": rep["sample"]["read_seconds"],
                    "index": rep["locality"]["index"],
                    "peak_mib": round(mem.peak_mib, 1),
                }
            )
            print(f"| {n} | {sample} | {dt:.1f} | {rep['sample']['read_seconds']:.1f} |", flush=True)
    return rows


def grid(localities: list[float], noises: list[float], items: int, pilot_steps: int, modalities: list[str]) -> dict:
    from pretextlab.jobs.bench_data import write_sources
    from pretextlab.jobs.recommend import profile_store
    from pretextlab.phantoms import generate
    from pretextlab.storage import rebuild_catalog
    from pretextlab.storage.writer import ItemPlan, write_item

    cells: list[dict] = []
    confusion: Counter[tuple[str, str]] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for modality in modalities:
            gen = "histology" if modality == "histopathology" else modality
            for loc in localities:
                for noise in noises:
                    ps = generate(gen, n=items, size=64, locality=loc, noise=noise, seed=0)
                    base = Path(tmp) / f"{gen}-{loc:g}-{noise:g}"
                    npz, roi, csv, _ = write_sources(ps, base / "raw", f"phantom-{modality}", 0)
                    for src in (npz, roi):
                        write_item(
                            ItemPlan(
                                item_id=src.stem,
                                sources=[str(src)],
                                reader="npz",
                                fingerprint=src.stem,
                                modality=modality,
                            ),
                            str(base / "store"),
                        )
                    rebuild_catalog(str(base / "store"), str(csv))
                    rep = profile_store(str(base / "store"), sample=items)
                    rec = rep["recommendation"]
                    pilot_family = pilot_verdict = None
                    pilot_arms: list[dict] = []
                    if pilot_steps > 0:
                        from pretextlab.jobs.recommend import run_pilot

                        args = argparse.Namespace(
                            store=str(base / "store"),
                            label_column="label",
                            pilot_steps=pilot_steps,
                            pilot_set=[],
                            address=None,
                            num_cpus=None,
                        )
                        pilot = run_pilot(rep, base, args)
                        # a family, "tie" (no single winner) or "random-init" (no pretrained arm beat it)
                        pilot_family = pilot["winner_family"] or ("tie" if pilot["winner"] is None else pilot["winner"])
                        pilot_verdict = pilot["verdict"]
                        pilot_arms = pilot["arms"]  # each arm's score and CI: how a tie looked
                        confusion[(rec["family"], pilot_family)] += 1
                    cell = {
                        "modality": modality,
                        "locality": loc,
                        "noise": noise,
                        "index": rep["locality"]["index"],
                        "index_ci": rep["locality"]["index_ci"],
                        "noise_value": rep["noise"].get("value"),
                        "family": rec["family"],
                        "borderline": rec["borderline"],
                        "avoid": rec["avoid"],
                        "pilot_family": pilot_family,
                        "pilot_verdict": pilot_verdict,
                        "pilot_arms": pilot_arms,
                    }
                    cells.append(cell)
                    print(
                        f"| {modality} | {loc:g} | {noise:g} | {cell['index']:.2f} ({cell['index_ci'][0]:.2f}-"
                        f"{cell['index_ci'][1]:.2f}) | {cell['noise_value']} | {rec['family']}"
                        f"{' (borderline)' if rec['borderline'] else ''} | {', '.join(rec['avoid']) or '-'} "
                        f"| {pilot_family or 'not run'} |",
                        flush=True,
                    )
    return {"cells": cells, "confusion": {f"{a} x {b}": n for (a, b), n in confusion.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scaling")
    s.add_argument("--sizes", default="1000,10000")
    s.add_argument("--sample", type=int, default=512)
    g = sub.add_parser("grid")
    g.add_argument("--localities", default="0,0.5,1")
    g.add_argument("--noises", default="0,0.5,1")
    g.add_argument("--items", type=int, default=400)
    g.add_argument("--pilot-steps", type=int, default=0)
    g.add_argument("--modalities", default="ultrasound,histopathology")
    a = p.parse_args()
    out = ROOT / ".bench"
    out.mkdir(exist_ok=True)
    if a.what == "scaling":
        print("| frames in store | sampled | profile s | of which read s |\n|---|---|---|---|")
        res: object = scaling([int(v) for v in a.sizes.split(",")], a.sample)
    else:
        print("| modality | locality | noise | index (95 % CI) | noise stat | recommended | avoid | pilot best |")
        print("|---|---|---|---|---|---|---|---|")
        res = grid(
            [float(v) for v in a.localities.split(",")],
            [float(v) for v in a.noises.split(",")],
            a.items,
            a.pilot_steps,
            a.modalities.split(","),
        )
    figures = []
    if a.what == "scaling" and isinstance(res, list) and len(res) > 1:
        small, large = res[0], res[-1]
        figures.append(
            compare(
                f"recommend profile of {large['frames']} frames (sample {a.sample}): seconds",
                "s",
                [large["seconds"]],
                f"the same with {small['frames']} frames",
                [small["seconds"]],
                better="lower",
                note="flat (ratio ~1) is the goal: the profile reads a fixed-size sample",
            )
        )
    write_results(f"recommend-{a.what}", figures, out / f"recommend-{a.what}.json", results=res)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
