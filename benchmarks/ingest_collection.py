"""Collection ingest: images/s of a folder of 224 px JPEG tiles against a plain decode loop of the same files.

    .venv/bin/python benchmarks/ingest.py --part collection                 # 3,000 tiles
    .venv/bin/python benchmarks/ingest_collection.py --images 5000 --cpus 2  # the same part alone

Each measurement runs in a fresh subprocess (``benchmarks/ingest.py`` ``_child`` modes):
  1. plain loop: one process, ``open().read()`` + Pillow decode to a NumPy array per file, nothing kept:
     the anchor (what any loader must at least do).
  2. pretextlab: ``run_ingest`` of the folder on a local Ray cluster of ``--cpus`` CPUs (cluster start
     excluded, discovery, shard tasks, catalog included), ``--shard-size`` images per shard item.
Store size (items/ on disk) is stated against the JPEG source, and the pixels are also encoded with
imagecodecs JPEG (quality 90) and JPEG-XL (effort 3, distance 1) to show what a lossy store codec
would save (not a store option yet: see docs/storage.md). Figures go to .bench/ingest-collection.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, compare, measure_child, print_figures, tree_cpu_seconds, write_results

HERE = Path(__file__).resolve()


def make_tiles(folder: Path, n: int, size: int = 224) -> Path:
    """``n`` H&E-like JPEG tiles (quality 90) in two class folders; generated once."""
    import numpy as np
    from PIL import Image

    from pretextlab.storage.synthetic import he_region

    done = folder / ".complete"
    if done.exists():
        return folder
    big = he_region(0, 0, 2048, 2048, 1.0, 7)
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = "tumour" if i % 2 else "normal"
        (folder / cls).mkdir(parents=True, exist_ok=True)
        y, x = rng.integers(0, 2048 - size, 2)
        tile = np.ascontiguousarray(big[y : y + size, x : x + size])
        Image.fromarray(tile).save(folder / cls / f"tile{i:06d}.jpg", quality=90)
    done.write_text("ok\n")
    return folder


def plain_loop(folder: str) -> dict:
    import numpy as np
    from PIL import Image

    files = sorted(p for p in Path(folder).rglob("*.jpg"))
    t0 = time.perf_counter()
    for p in files:
        with open(p, "rb") as fh:
            data = fh.read()
        import io

        with Image.open(io.BytesIO(data)) as im:
            np.asarray(im)
    return {"seconds": time.perf_counter() - t0, "images": len(files)}


def collection_ingest(folder: str, dest: str, cpus: int, shard_size: int) -> dict:
    import psutil
    import ray

    from pretextlab.jobs.ingest import IngestConfig, run_ingest

    tree_cpu = lambda: tree_cpu_seconds(psutil.Process())

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    ray.get([ray.remote(lambda: 0).remote() for _ in range(cpus)])  # workers up: not counted
    out = {}
    # first run: cold workers (they import zarr, Pillow, pretextlab); second run into a new store:
    # warm workers, what every shard after the first few sees in a 100k-image ingest
    for key, target in (("cold", dest), ("warm", dest + "-warm")):
        c0, t0 = tree_cpu(), time.perf_counter()
        rep = run_ingest(
            IngestConfig(sources=[folder], dest=target, shard_size=shard_size, labels_from_folders=True), progress=False
        )
        out[f"{key}_seconds"], out[f"{key}_cpu_seconds"] = time.perf_counter() - t0, tree_cpu() - c0
        assert rep.ok, rep.render()
    store = sum(p.stat().st_size for p in Path(dest, "items").rglob("*") if p.is_file())
    files = sum(1 for p in Path(dest).rglob("*") if p.is_file())
    return {
        "seconds": out["cold_seconds"],
        **out,
        "images": rep.images,
        "shards": rep.shards,
        "store_bytes": store,
        "store_files": files,
    }


def lossy_sizes(folder: str, sample: int = 300) -> dict:
    """Bytes per image when the decoded pixels are re-encoded as JPEG q90 / JPEG-XL d1 (imagecodecs)."""
    import imagecodecs
    import numpy as np
    from PIL import Image

    files = sorted(Path(folder).rglob("*.jpg"))[:sample]
    out = {"jpeg_q90": 0, "jpegxl_d1": 0, "raw": 0, "source": 0}
    secs = {"jpeg_q90": 0.0, "jpegxl_d1": 0.0}
    err = {"jpeg_q90": 0.0, "jpegxl_d1": 0.0}
    for p in files:
        arr = np.asarray(Image.open(p))
        out["raw"] += arr.nbytes
        out["source"] += p.stat().st_size
        for key, enc, dec in (
            ("jpeg_q90", lambda a: imagecodecs.jpeg8_encode(a, level=90), imagecodecs.jpeg8_decode),
            ("jpegxl_d1", lambda a: imagecodecs.jpegxl_encode(a, distance=1.0, effort=3), imagecodecs.jpegxl_decode),
        ):
            t0 = time.perf_counter()
            blob = enc(arr)
            back = dec(blob)
            secs[key] += time.perf_counter() - t0
            out[key] += len(blob)
            err[key] += float(np.abs(back.astype(np.int16) - arr).mean())
    n = len(files)
    return {
        "images": n,
        "bytes_per_image": {k: v / n for k, v in out.items()},
        "encode_decode_ms_per_image": {k: 1000 * v / n for k, v in secs.items()},
        "mean_abs_error_grey_levels": {k: v / n for k, v in err.items()},
    }


def run_part(images: int, cpus: int, shard_size: int, repeats: int, measure) -> dict:
    """The collection part; ``measure`` runs a ``_child`` mode in a fresh process (benchmarks/ingest.py)."""
    BENCH.mkdir(exist_ok=True)
    folder = make_tiles(BENCH / f"tiles-224x{images}", images)
    source_bytes = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
    plain, ours = [], []
    for _ in range(repeats):  # the anchor and the ingest alternate per repeat
        plain.append(measure(["plain_loop", str(folder)]))
        with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
            ours.append(measure(["collection", str(folder), tmp + "/store", str(cpus), str(shard_size)]))
    p_s = statistics.median(r["seconds"] for r in plain)
    o_s = statistics.median(r["seconds"] for r in ours)
    res = {
        "images": images,
        "cpus": cpus,
        "shard_size": shard_size,
        "source_bytes": source_bytes,
        "plain_loop": {"seconds": p_s, "images_per_s": images / p_s, "runs": plain},
        "collection": {
            "seconds": o_s,
            "images_per_s": images / o_s,
            "runs": ours,
            "store_bytes": ours[0]["store_bytes"],
            "store_files": ours[0]["store_files"],
        },
        "load_average_1min": os.getloadavg()[0],
    }
    res["ratio_vs_plain_loop"] = res["collection"]["images_per_s"] / res["plain_loop"]["images_per_s"]
    for key in ("warm_seconds", "warm_cpu_seconds", "cold_cpu_seconds"):
        res["collection"][key] = statistics.median(r[key] for r in ours)
    res["collection"]["warm_images_per_s"] = images / res["collection"]["warm_seconds"]
    res["warm_ratio_vs_plain_loop"] = res["collection"]["warm_images_per_s"] / res["plain_loop"]["images_per_s"]
    # CPU time of each process tree: on a shared (loaded) machine wall time says little; CPU time per
    # image says what the same work costs on idle cores. The Ray tree's includes cluster start-up.
    for key, runs in (("plain_loop", plain), ("collection", ours)):
        cpu = statistics.median(r["cpu_s"] for r in runs)
        res[key]["cpu_seconds"] = cpu
        res[key]["images_per_cpu_s"] = images / cpu if cpu else None
    res["store_vs_source"] = res["collection"]["store_bytes"] / source_bytes
    res["lossy"] = lossy_sizes(str(folder))
    res["figures"] = [
        compare(
            f"collection ingest of {images} JPEG tiles on {cpus} CPUs (cold Ray workers), images/s",
            "images/s",
            [images / r["seconds"] for r in ours],
            "plain decode loop (1 process)",
            [images / r["seconds"] for r in plain],
        ),
        compare(
            f"collection ingest of {images} JPEG tiles, peak PSS",
            "MiB",
            [r["peak_mib"] for r in ours],
            "plain decode loop (1 process)",
            [r["peak_mib"] for r in plain],
            better="lower",
        ),
    ]
    write_results("ingest-collection", res["figures"], **{k: v for k, v in res.items() if k != "figures"})
    lossy = res["lossy"]["bytes_per_image"]
    print(
        f"\ncollection: {images:,} JPEG tiles 224x224 q90 ({source_bytes / 1e6:.1f} MB), {cpus} CPUs, "
        f"median of {repeats}; load average {res['load_average_1min']:.1f}"
    )
    print(f"  plain decode loop (1 process): {p_s:6.2f} s  {images / p_s:8.0f} images/s")
    print(
        f"  pretextlab collection ingest:  {o_s:6.2f} s  {images / o_s:8.0f} images/s  "
        f"({res['ratio_vs_plain_loop']:.2f}x the plain loop; {res['collection']['runs'][0]['shards']} shard(s))"
    )
    c = res["collection"]
    print(
        f"  again, warm Ray workers:        {c['warm_seconds']:6.2f} s  {c['warm_images_per_s']:8.0f} images/s  "
        f"({res['warm_ratio_vs_plain_loop']:.2f}x); CPU of the Ray tree during the ingest: cold "
        f"{c['cold_cpu_seconds']:.1f} s, warm {c['warm_cpu_seconds']:.1f} s = {images / c['warm_cpu_seconds']:.0f} "
        f"images per CPU-second"
    )
    print(
        f"  CPU time of the process tree: plain loop {res['plain_loop']['cpu_seconds']:.1f} s "
        f"({res['plain_loop']['images_per_cpu_s'] or 0:.0f} images per CPU-second), collection ingest "
        f"{res['collection']['cpu_seconds']:.1f} s ({res['collection']['images_per_cpu_s'] or 0:.0f} images per "
        f"CPU-second, Ray start-up included)"
    )
    print(
        f"  store: {res['collection']['store_bytes'] / 1e6:.1f} MB in {res['collection']['store_files']} files = "
        f"{res['store_vs_source']:.1f}x the JPEG source (zstd level 1, lossless)"
    )
    print(
        f"  per image: source {lossy['source'] / 1e3:.1f} kB, raw {lossy['raw'] / 1e3:.1f} kB, "
        f"JPEG q90 {lossy['jpeg_q90'] / 1e3:.1f} kB, JPEG-XL d1 {lossy['jpegxl_d1'] / 1e3:.1f} kB; "
        f"mean abs error {res['lossy']['mean_abs_error_grey_levels']}"
    )
    return res


def child(argv: list[str]) -> dict:
    mode = argv[0]
    if mode == "plain_loop":
        return plain_loop(argv[1])
    if mode == "collection":
        return collection_ingest(argv[1], argv[2], int(argv[3]), int(argv[4]))
    raise SystemExit(f"unknown mode {mode}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    res = run_part(
        args.images, args.cpus, args.shard_size, args.repeats, lambda a: measure_child(HERE.parent / "ingest.py", a)
    )
    print_figures(res["figures"])


if __name__ == "__main__":
    main()
