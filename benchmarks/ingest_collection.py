"""Collection ingest: images/s of a folder of 224 px JPEG tiles against a plain decode loop of the same files.

    .venv/bin/python benchmarks/ingest.py --part collection                 # 3,000 tiles
    .venv/bin/python benchmarks/ingest_collection.py --images 5000 --cpus 2  # the same part alone

    .venv/bin/python benchmarks/ingest_collection.py --images 20000 --codecs zstd,jpeg,jpegxl --repeats 3

Each measurement runs in a fresh subprocess (``benchmarks/ingest.py`` ``_child`` modes), anchors and
ingests alternating per repeat:
  1. plain loop: one process, ``open().read()`` + Pillow decode to a NumPy array per file, nothing kept:
     the anchor (what any loader must at least do);
  2. the same loop split over ``--cpus`` processes (no Ray): the most the CPUs can decode;
  3. pretextlab, once per store codec (``--codecs``): ``run_ingest`` of the folder on a local Ray
     cluster of ``--cpus`` CPUs (cluster start excluded; discovery, shard tasks, catalog included),
     ``--shard-size`` images per shard item; first with cold workers, then again into a new store with
     warm ones (what every shard after the first few sees in a 100k-image ingest).
Store size (items/ on disk) is stated against the JPEG source for each codec. Figures go to
.bench/ingest-collection.json.
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


def collection_ingest(folder: str, dest: str, cpus: int, shard_size: int, codec: str = "zstd") -> dict:
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
            IngestConfig(
                sources=[folder],
                dest=target,
                shard_size=shard_size,
                labels_from_folders=True,
                zarr={"compressor": codec},
            ),
            progress=False,
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


def plain_loop_processes(folder: str, processes: int) -> dict:
    """The plain loop split over ``processes`` processes (every CPU the ingest gets, no Ray)."""
    from concurrent.futures import ProcessPoolExecutor

    files = sorted(str(p) for p in Path(folder).rglob("*.jpg"))
    parts = [files[i::processes] for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_decode_files, [[]] * processes))  # processes up: not counted
        t0 = time.perf_counter()
        list(pool.map(_decode_files, parts))
        return {"seconds": time.perf_counter() - t0, "images": len(files)}


def _decode_files(files: list[str]) -> int:
    import io

    import numpy as np
    from PIL import Image

    for p in files:
        with open(p, "rb") as fh:
            data = fh.read()
        with Image.open(io.BytesIO(data)) as im:
            np.asarray(im)
    return len(files)


CODEC_NOTES = {
    "zstd": "zstd level 1, lossless (the default)",
    "lz4": "lz4, lossless",
    "jpeg": "JPEG: each source JPEG kept as it is, metadata dropped",
    "jpegxl": "JPEG-XL quality 90 (effort 3), lossy re-encode",
}


def run_part(
    images: int, cpus: int, shard_size: int, repeats: int, measure, codecs: tuple[str, ...] = ("zstd", "jpeg")
) -> dict:
    """The collection part; ``measure`` runs a ``_child`` mode in a fresh process (benchmarks/ingest.py)."""
    BENCH.mkdir(exist_ok=True)
    folder = make_tiles(BENCH / f"tiles-224x{images}", images)
    source_bytes = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
    plain: list[dict] = []
    plain_n: list[dict] = []
    ours: dict[str, list[dict]] = {c: [] for c in codecs}
    for _ in range(repeats):  # the anchors and the ingests alternate per repeat
        plain.append(measure(["plain_loop", str(folder)]))
        plain_n.append(measure(["plain_loop_processes", str(folder), str(cpus)]))
        for codec in codecs:
            with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
                ours[codec].append(
                    measure(["collection", str(folder), tmp + "/store", str(cpus), str(shard_size), codec])
                )
    p_s = statistics.median(r["seconds"] for r in plain)
    pn_s = statistics.median(r["seconds"] for r in plain_n)
    res: dict = {
        "images": images,
        "cpus": cpus,
        "shard_size": shard_size,
        "source_bytes": source_bytes,
        "plain_loop": {"seconds": p_s, "images_per_s": images / p_s, "runs": plain},
        f"plain_loop_{cpus}_processes": {"seconds": pn_s, "images_per_s": images / pn_s, "runs": plain_n},
        "codecs": {},
        "load_average_1min": os.getloadavg()[0],
    }
    figures = []
    for codec, runs in ours.items():
        c: dict = {
            "seconds": statistics.median(r["seconds"] for r in runs),
            "store_bytes": runs[0]["store_bytes"],
            "store_files": runs[0]["store_files"],
            "shards": runs[0]["shards"],
            "runs": runs,
        }
        for key in ("warm_seconds", "warm_cpu_seconds", "cold_cpu_seconds"):
            c[key] = statistics.median(r[key] for r in runs)
        c["images_per_s"] = images / c["seconds"]
        c["warm_images_per_s"] = images / c["warm_seconds"]
        c["ratio_vs_plain_loop"] = c["images_per_s"] / res["plain_loop"]["images_per_s"]
        c["warm_ratio_vs_plain_loop"] = c["warm_images_per_s"] / res["plain_loop"]["images_per_s"]
        c["store_vs_source"] = c["store_bytes"] / source_bytes
        res["codecs"][codec] = c
        figures += [
            compare(
                f"collection ingest ({codec}) of {images} JPEG tiles on {cpus} CPUs (cold Ray workers), images/s",
                "images/s",
                [images / r["seconds"] for r in runs],
                "plain decode loop (1 process)",
                [images / r["seconds"] for r in plain],
            ),
            compare(
                f"collection ingest ({codec}) of {images} JPEG tiles, warm Ray workers, images/s",
                "images/s",
                [images / r["warm_seconds"] for r in runs],
                "plain decode loop (1 process)",
                [images / r["seconds"] for r in plain],
            ),
            compare(
                f"collection ingest ({codec}) of {images} JPEG tiles, warm, vs the loop on {cpus} processes",
                "images/s",
                [images / r["warm_seconds"] for r in runs],
                f"plain decode loop ({cpus} processes)",
                [images / r["seconds"] for r in plain_n],
            ),
            compare(
                f"collection ingest ({codec}) of {images} JPEG tiles, store size",
                "MB",
                [r["store_bytes"] / 1e6 for r in runs],
                "the JPEG source",
                [source_bytes / 1e6],
                better="lower",
            ),
            compare(
                f"collection ingest ({codec}) of {images} JPEG tiles, peak PSS",
                "MiB",
                [r["peak_mib"] for r in runs],
                "plain decode loop (1 process)",
                [r["peak_mib"] for r in plain],
                better="lower",
            ),
        ]
    res["figures"] = figures
    write_results("ingest-collection", figures, **{k: v for k, v in res.items() if k != "figures"})
    print(
        f"\ncollection: {images:,} JPEG tiles 224x224 q90 ({source_bytes / 1e6:.1f} MB), {cpus} CPUs, "
        f"median of {repeats}; load average {res['load_average_1min']:.1f}"
    )
    print(f"  plain decode loop (1 process):  {p_s:6.2f} s  {images / p_s:8.0f} images/s")
    print(f"  plain decode loop ({cpus} processes): {pn_s:6.2f} s  {images / pn_s:8.0f} images/s")
    for codec, c in res["codecs"].items():
        print(
            f"  ingest, {CODEC_NOTES.get(codec, codec)}: cold {c['seconds']:.2f} s = {c['images_per_s']:.0f} images/s "
            f"({c['ratio_vs_plain_loop']:.2f}x the 1-process loop); warm {c['warm_seconds']:.2f} s = "
            f"{c['warm_images_per_s']:.0f} images/s ({c['warm_ratio_vs_plain_loop']:.2f}x, "
            f"{c['warm_images_per_s'] / (images / pn_s):.2f}x the {cpus}-process loop); Ray-tree CPU warm "
            f"{c['warm_cpu_seconds']:.1f} s; store {c['store_bytes'] / 1e6:.1f} MB in {c['store_files']} files = "
            f"{c['store_vs_source']:.2f}x the source, {c['shards']} shards"
        )
    return res


def child(argv: list[str]) -> dict:
    mode = argv[0]
    if mode == "plain_loop":
        return plain_loop(argv[1])
    if mode == "plain_loop_processes":
        return plain_loop_processes(argv[1], int(argv[2]))
    if mode == "collection":
        return collection_ingest(argv[1], argv[2], int(argv[3]), int(argv[4]), *argv[5:6])
    raise SystemExit(f"unknown mode {mode}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--codecs", default="zstd,jpeg", help="store codecs to measure (zstd,lz4,jpeg,jpegxl)")
    args = ap.parse_args()
    res = run_part(
        args.images,
        args.cpus,
        args.shard_size,
        args.repeats,
        lambda a: measure_child(HERE.parent / "ingest.py", a),
        tuple(c for c in args.codecs.split(",") if c),
    )
    print_figures(res["figures"])


if __name__ == "__main__":
    main()
