"""Slide ingest throughput and peak memory, side by side with tifffile's raw decode and with ngff-zarr.

    .venv/bin/python benchmarks/ingest.py --part slide --repeats 3      # 40,000 x 40,000 RGB slide (generated once)
    .venv/bin/python benchmarks/ingest.py --part slide --size 8192      # quick run

Measures, each in a fresh subprocess whose whole process tree's PSS is sampled every 50 ms
(benchmarks/harness.py: ``peak_mib``), the anchors and pretextlab alternating per repeat:
  1. tifffile: decode every level-0 tile of the slide (``TiffPage.segments``, 2 threads), nothing
     kept: the anchor of goal 1 (issue 18).
  2. pretextlab: ``write_item`` of the same slide, once per store codec (``--codecs``, default
     ``auto,zstd,jpeg``): every source level copied, 2x levels below the last down to 512 px, and the
     tissue mask. ``auto`` is the default (Blosc-lz4 for slide levels); ``jpeg`` keeps the source's
     JPEG tiles as they are (the generated slide's tiles are the chunk size, 512 px).
  3. ngff-zarr (the peer converter): ``to_multiscales`` of level 0 (``DASK_BIN_SHRINK``, the same 2x
     box mean, 512 px chunks, down to 512 px) and ``to_ngff_zarr`` (OME-Zarr 0.5) with the codec
     ``auto`` gives slide levels (Blosc-lz4 level 5), dask's threaded scheduler on every core.
  4. Ray scaling: ``run_ingest`` of N smaller slides on a local Ray cluster with 1 and with 2 CPUs,
     one thread per item, so the figure is Ray's task parallelism alone.
MB/s counts level-0 RGB pixel bytes (height * width * 3, MB = 10**6 bytes). Per-stage CPU seconds of
each pretextlab run (read, decode, copy, encode, downsample, write, mask: the item card's
``write.cpu_seconds``) go to the JSON, so the limiting stage is visible. Medians of --repeats runs;
figures go to stdout and to .bench/ingest.json (ratios per repeat, then the median).

    .venv/bin/python benchmarks/ingest.py --part collection   # 224 px JPEG folder vs a plain decode loop
(the collection part: benchmarks/ingest_collection.py, figures in .bench/ingest-collection.json)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, compare, measure_child, median, print_figures, write_results

HERE = Path(__file__).resolve()


def measure(args: list[str]) -> dict:
    """Run ``this_script _child ARGS`` in a fresh process (benchmarks/harness.py: ``peak_mib``, ``cpu_s``)."""
    return measure_child(HERE, args, interval_s=0.05)


def child(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    if mode in ("plain_loop", "plain_loop_processes", "collection"):
        sys.path.insert(0, str(HERE.parent))
        from ingest_collection import child as collection_child

        print(json.dumps(collection_child(argv)))
        return
    import warnings

    warnings.filterwarnings("ignore")
    if mode == "baseline":
        import dask.array  # noqa: F401
        import tifffile
        import zarr  # noqa: F401

        import pretextlab.storage  # noqa: F401

        print(json.dumps({"seconds": 0.0}))
        return
    if mode == "tifffile":
        import tifffile

        t0 = time.perf_counter()
        with tifffile.TiffFile(path) as tf:
            page = tf.series[0].levels[0].pages[0]
            n = 0
            for _segment in page.segments(maxworkers=2):
                n += 1
        print(json.dumps({"seconds": time.perf_counter() - t0, "tiles": n}))
        return
    if mode == "write_item":
        from pretextlab.storage import discover, open_item, write_item
        from pretextlab.storage.options import ZarrOptions

        dest, codec = argv[2], argv[3]
        t0 = time.perf_counter()
        plan = discover([path]).plans[0]
        res = write_item(plan, dest, ZarrOptions(compressor=codec))
        seconds = time.perf_counter() - t0
        assert res.status == "ingested", res.reason
        card = open_item(dest, plan.item_id).card
        print(json.dumps({"seconds": seconds, "stages": card["write"]["cpu_seconds"], "bytes": _tree_bytes(dest)}))
        return
    if mode == "ngff_zarr":
        print(json.dumps(_ngff_zarr(path, argv[2])))
        return
    if mode == "ray":
        import ray

        from pretextlab.jobs.ingest import IngestConfig, run_ingest

        cpus, dest = int(argv[2]), argv[3]
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
        t0 = time.perf_counter()
        cfg = IngestConfig(sources=[path], dest=dest, zarr={"threads": 1})  # one core per item
        rep = run_ingest(cfg, progress=False)
        assert rep.ok and rep.count("ingested") > 0, rep.render()
        print(json.dumps({"seconds": time.perf_counter() - t0, "items": rep.count("ingested")}))
        return
    raise SystemExit(f"unknown mode {mode}")


def _tree_bytes(root: str) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def _ngff_zarr(path: str, dest: str) -> dict:
    """The peer: ngff-zarr's multiscales of level 0 written as OME-Zarr 0.5 with the slide codec of ``auto``."""
    import dask.array as da
    import ngff_zarr as nz
    import tifffile
    import zarr
    from zarr.codecs import BloscCodec

    t0 = time.perf_counter()
    with tifffile.TiffFile(path) as tf:
        level0 = da.from_zarr(zarr.open(tf.series[0].aszarr(level=0), mode="r"))
        image = nz.to_ngff_image(level0, dims=["y", "x", "c"])
        factors, edge = [], max(level0.shape[:2])
        while edge > 512:
            edge //= 2
            factors.append(2 ** len(factors) * 2)
        multiscales = nz.to_multiscales(image, scale_factors=factors, method=nz.Methods.DASK_BIN_SHRINK, chunks=512)
        nz.to_ngff_zarr(
            dest, multiscales, version="0.5", compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")]
        )
    return {"seconds": time.perf_counter() - t0, "levels": len(factors) + 1, "bytes": _tree_bytes(dest)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=40000, help="edge of the big square slide (pixels)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per big-slide measurement (median)")
    ap.add_argument("--scaling-slides", type=int, default=4, help="slides for the 1 vs 2 worker run")
    ap.add_argument("--scaling-size", type=int, default=8192)
    ap.add_argument("--scaling-repeats", type=int, default=3)
    ap.add_argument("--part", choices=["all", "slide", "collection"], default="all")
    ap.add_argument("--codecs", default="auto,zstd,jpeg", help="store codecs of the pretextlab slide runs")
    ap.add_argument("--collection-images", type=int, default=3000)
    ap.add_argument("--collection-cpus", type=int, default=2)
    ap.add_argument("--collection-shard-size", type=int, default=1024)
    args = ap.parse_args()
    collection = None
    if args.part in ("all", "collection"):
        from ingest_collection import run_part

        collection = run_part(
            args.collection_images, args.collection_cpus, args.collection_shard_size, args.repeats, measure
        )
        if args.part == "collection":
            return

    from pretextlab.storage.synthetic import write_slide_tiff

    BENCH.mkdir(exist_ok=True)
    big = BENCH / f"slide-{args.size}.tif"
    if not big.exists():
        t0 = time.perf_counter()
        print(f"generating {big} ...", flush=True)
        write_slide_tiff(big.with_suffix(".tmp.tif"), args.size, args.size, tile=512, levels=3, seed=1)
        big.with_suffix(".tmp.tif").rename(big)
        print(f"  {time.perf_counter() - t0:.0f} s, {big.stat().st_size / 1e6:.0f} MB on disk", flush=True)
    raw_mb = args.size * args.size * 3 / 1e6

    results: dict = {"size": args.size, "raw_mb": raw_mb, "file_mb": big.stat().st_size / 1e6}
    base = measure(["baseline", str(big)])
    results["baseline_peak_mib"] = base["peak_mib"]

    def one(make_args) -> dict:
        with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
            return measure(make_args(tmp))

    # the anchors and pretextlab alternate per repeat: each repeat's runs saw the same machine load
    codecs = [c for c in args.codecs.split(",") if c]
    names = ["tifffile", "ngff-zarr", *codecs]
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for _ in range(args.repeats):
        runs["tifffile"].append(one(lambda tmp: ["tifffile", str(big)]))
        runs["ngff-zarr"].append(one(lambda tmp: ["ngff_zarr", str(big), tmp + "/peer.zarr"]))
        for codec in codecs:
            runs[codec].append(one(lambda tmp, c=codec: ["write_item", str(big), tmp + "/store", c]))
    for key, rs in runs.items():
        results[key] = {
            "seconds": median([r["seconds"] for r in rs]),
            "mb_per_s": median([raw_mb / r["seconds"] for r in rs]),
            "peak_mib": median([r["peak_mib"] for r in rs]),
            "runs": rs,
        }
        if "stages" in rs[0]:
            results[key]["cpu_seconds"] = {k: median([r["stages"].get(k, 0.0) for r in rs]) for k in rs[0]["stages"]}
        if "bytes" in rs[0]:
            results[key]["store_mb"] = median([r["bytes"] / 1e6 for r in rs])

    def rate(key: str) -> list[float]:
        return [raw_mb / r["seconds"] for r in runs[key]]

    figures = []
    for codec in codecs:
        label = f"ingest write_item {args.size}^2 RGB, codec {codec} (all levels + mask), level-0 MB/s"
        figures.append(compare(label, "MB/s", rate(codec), "tifffile raw decode of level 0", rate("tifffile")))
        figures.append(
            compare(label, "MB/s", rate(codec), "ngff-zarr to_ngff_zarr (same codec as auto)", rate("ngff-zarr"))
        )
        figures.append(
            compare(
                f"ingest write_item {args.size}^2, codec {codec}, peak PSS",
                "MiB",
                [r["peak_mib"] for r in runs[codec]],
                "tifffile raw decode of level 0",
                [r["peak_mib"] for r in runs["tifffile"]],
                better="lower",
            )
        )
    results["ratio_vs_tifffile"] = {c: figures[3 * i]["ratio"] for i, c in enumerate(codecs)}
    results["ratio_vs_ngff_zarr"] = {c: figures[3 * i + 1]["ratio"] for i, c in enumerate(codecs)}

    scale_dir = BENCH / f"scaling-{args.scaling_size}x{args.scaling_slides}"
    scale_dir.mkdir(exist_ok=True)
    for i in range(args.scaling_slides):
        p = scale_dir / f"s{i}.tif"
        if not p.exists():
            write_slide_tiff(p, args.scaling_size, args.scaling_size, tile=512, levels=1, seed=10 + i)
    scale_mb = args.scaling_slides * args.scaling_size**2 * 3 / 1e6
    scaling: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.scaling_repeats):  # 1 and 2 CPUs alternate per repeat
        for cpus in (1, 2):
            scaling[cpus].append(one(lambda tmp, c=cpus: ["ray", str(scale_dir), str(c), tmp + "/store"]))
    for cpus, rs in scaling.items():
        results[f"ray_{cpus}_workers"] = {
            "seconds": median([r["seconds"] for r in rs]),
            "mb_per_s": median([scale_mb / r["seconds"] for r in rs]),
            "peak_mib": median([r["peak_mib"] for r in rs]),
            "runs": rs,
        }
    figures.append(
        compare(
            f"Ray ingest of {args.scaling_slides} slides {args.scaling_size}^2 on 2 CPUs, MB/s",
            "MB/s",
            [scale_mb / r["seconds"] for r in scaling[2]],
            "the same on 1 CPU",
            [scale_mb / r["seconds"] for r in scaling[1]],
        )
    )
    results["ray_2_vs_1"] = figures[-1]["ratio"]
    if collection:
        figures += collection["figures"]
    write_results("ingest", figures, **results)
    print(
        f"\nslide {args.size}x{args.size} RGB: {raw_mb:.0f} MB of pixels, {results['file_mb']:.0f} MB JPEG-tiled TIFF"
    )
    print(f"{'':30}{'seconds':>9}{'MB/s':>8}{'peak MiB':>10}{'store MB':>10}  CPU s per stage")
    for key in names:
        r = results[key]
        stages = " ".join(f"{k} {v:.2f}" for k, v in r.get("cpu_seconds", {}).items())
        label = key if key in ("tifffile", "ngff-zarr") else f"pretextlab ({key})"
        print(
            f"{label:30}{r['seconds']:9.1f}{r['mb_per_s']:8.0f}{r['peak_mib']:10.0f}"
            f"{r.get('store_mb', float('nan')):10.0f}  {stages}"
        )
    for c in codecs:
        print(
            f"pretextlab ({c}) / tifffile {results['ratio_vs_tifffile'][c]:.2f}x, "
            f"/ ngff-zarr {results['ratio_vs_ngff_zarr'][c]:.2f}x"
        )
    print(f"(interpreter + imports alone: {results['baseline_peak_mib']:.0f} MiB)")
    print(
        f"\nRay ingest of {args.scaling_slides} slides {args.scaling_size}^2 ({scale_mb:.0f} MB), "
        f"median of {args.scaling_repeats}:"
    )
    for cpus in (1, 2):
        r = results[f"ray_{cpus}_workers"]
        print(
            f"  {cpus} worker(s): {r['seconds']:6.1f} s  {r['mb_per_s']:6.1f} MB/s  "
            f"peak PSS (tree) {r['peak_mib']:.0f} MiB"
        )
    print(f"  2 vs 1 workers: {results['ray_2_vs_1']:.2f}x")
    print_figures(figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2:])
    else:
        main()
