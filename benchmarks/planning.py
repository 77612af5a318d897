"""The cost of planning a training stream over a large catalog, before a single pixel is read.

    .venv/bin/python benchmarks/planning.py                    # 10,000 slides, 3 repeats
    .venv/bin/python benchmarks/planning.py --slides 1000 --repeats 1

The store holds ``--slides`` metadata-only copies of one ingested 2048^2 synthetic H&E slide: every
item's ``zarr.json`` files and its tissue mask (what planning reads), no level-0 pixels (which it never
reads). Made once under ``.bench/planning-data``.

Figures (medians of --repeats, each step in this process, one after the other):
- ``plan_stream``: list every patch of every slide, opening each item once, with the item opens spread
  over threads (the default), against the same with one thread (items opened one after another);
- building the stream of a 10-epoch run: with epochs planned lazily (the default: the first epoch is
  planned when the stream is built, each later one when its first read task runs), against every epoch
  planned up front (``read_stream(..., lazy=False)``, what the stream did before). Planning cost of one
  epoch (``epoch_groups``) is reported on its own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, PeakPss, compare, print_figures, write_results

DATA = BENCH / "planning-data"


def metadata_store(n: int, size: int = 2048) -> str:
    """``n`` metadata-only copies of one ingested slide (zarr.json files and the tissue mask)."""
    from pipeline import _base_store, copy_item
    from pretextlab.storage.catalog import rebuild_catalog

    dest = DATA / f"store-{n}x{size}"
    if (dest / "catalog.parquet").exists():
        return str(dest)
    base = _base_store(size) / "items" / "seed-0.zarr"

    def keep(folder: str, names: list[str]) -> list[str]:
        # level arrays keep their zarr.json, not their chunk folders; the tissue mask keeps everything
        return ["c"] if Path(folder).name.isdigit() else []

    print(f"writing {n} metadata-only slide items into {dest} (once)", flush=True)
    for i in range(n):
        copy_item(base, dest / "items" / f"slide-{i:05d}.zarr", ignore=keep)
    rebuild_catalog(str(dest))
    return str(dest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the run whose stream is built")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import ray

    from pretextlab.storage import stream as st
    from pretextlab.storage.datasource import read_stream

    store = metadata_store(args.slides)
    spec = st.StreamSpec(sources=[store], kind="patches", patch={"patch_size": 256, "min_tissue": 0.5}, seed=0)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    times: dict[str, list[float]] = {k: [] for k in ("plan_threads", "plan_serial", "lazy", "eager", "epoch")}
    peaks: dict[str, list[float]] = {k: [] for k in ("lazy", "eager")}
    plan = st.plan_stream(spec)
    read_stream(plan, [0], lazy=False).take(1)  # warm-up, not timed: Ray's first read workers start
    for _ in range(args.repeats):
        for key, threads in (("plan_threads", None), ("plan_serial", 1)):
            t0 = time.perf_counter()
            plan = st.plan_stream(spec, open_threads=threads)
            times[key].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plan.epoch_groups(1)
        times["epoch"].append(time.perf_counter() - t0)
        for key, lazy in (("lazy", True), ("eager", False)):
            with PeakPss(interval_s=0.1) as mem:
                t0 = time.perf_counter()
                ds = read_stream(plan, list(range(args.epochs)), lazy=lazy)
                ds.take(1)  # the executor has started and the first block is read
                times[key].append(time.perf_counter() - t0)
            peaks[key].append(mem.peak_mib)
            del ds
    ray.shutdown()
    refs = sum(len(s.refs) for s in plan.sources)
    print(
        f"{args.slides} slides, {refs} patches per epoch; one epoch's planning (epoch_groups): "
        f"{statistics.median(times['epoch']):.2f} s",
        flush=True,
    )
    figures = [
        compare(
            f"plan_stream of {args.slides} slides, item opens over threads",
            "s",
            times["plan_threads"],
            "the same, items opened one after another",
            times["plan_serial"],
            better="lower",
        ),
        compare(
            f"stream of a {args.epochs}-epoch run built and first block read, epochs planned lazily",
            "s",
            times["lazy"],
            "every epoch planned up front",
            times["eager"],
            better="lower",
        ),
        compare(
            f"peak PSS building a {args.epochs}-epoch stream, epochs planned lazily",
            "MiB",
            peaks["lazy"],
            "every epoch planned up front",
            peaks["eager"],
            better="lower",
        ),
    ]
    print_figures(figures)
    write_results(
        "planning",
        figures,
        slides=args.slides,
        patches_per_epoch=refs,
        epoch_groups_s=statistics.median(times["epoch"]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
