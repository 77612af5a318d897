"""The training data path, each figure against its anchor in the same run.

    .venv/bin/python benchmarks/pipeline.py                  # parts a and b (generates data once, ~4 min)
    .venv/bin/python benchmarks/pipeline.py --parts a --repeats 5
    .venv/bin/python benchmarks/pipeline.py --parts c --repeats 2

(a) patches/s of one epoch of ``read_stream`` (slide patches, no views; Ray Data on a local cluster;
    read tasks of 0.5 CPU as in training, and of 1 CPU: one task per core when nothing else runs)
    against (1) a plain zarr + numpy loop over the same chunks in one process (the limit) and (2) a torch
    DataLoader with 2 workers over a folder of PNG tiles holding the same patches (what most pathology
    repositories do). Also ``read_group`` in process: the Ray tasks' own code without Ray.
(b) peak memory of streaming one epoch when the dataset grows 10x (--small vs --large slides): the sum
    of RSS (and of PSS, which counts shared object-store pages once) of the driver and every Ray process,
    sampled every 50 ms, each size in a fresh subprocess and Ray cluster, and the peak object-store bytes
    in use (the blocks in flight). 512 rows of another epoch are streamed first (not measured), so the
    worker pool is up and has imported the readers; then one epoch is measured. "idle" is the tree right
    after ray.init, "warm" right before the measured epoch (Ray starts and reaps idle workers on its
    own schedule, ~250 MB RSS each, so the pool's size moves the absolute peak; the growth over the
    warm tree is the stream's own). Read groups hold >= 16 rows here so the small store, too, keeps
    every read worker busy: both sizes then pay the same process cost.
    Must stay flat.
(c) training images/s (Ray Train, 2 DDP workers, a 4-block ViT-Tiny at 64 px, DINO with 2+2 crops) fed by
    the Zarr stream (read_stream + map_views in Ray Data tasks beside the workers) against the same run
    fed by the same views materialised in the object store first (the in-memory anchor); the median of
    each run's log windows after the first, and peak RSS of the whole process tree.

Slides are copies of two synthetic H&E slides (pretextlab.storage.synthetic) ingested with 512 px
chunks; patches are 256 px at level 0 with >= 50 % tissue (~40 % of the grid). Medians of --repeats;
figures to stdout and .bench/pipeline.json
(parts merge into the existing file, so each part can be rerun alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    BENCH,
    MIB,
    PeakPss,
    compare,
    machine,
    measure_child,
    print_figures,
    start_ray,
    tree_pss,
    write_results,
)

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
DATA = BENCH / "pipeline-data"


# --- data ---------------------------------------------------------------------------------------------


def slide_store(n: int, size: int) -> str:
    """A store of ``n`` slides of size x size, made once: two synthetic slides are ingested, and the
    store holds copies of their Zarr items (item_id set in each card), alternating."""
    from pretextlab.storage.catalog import rebuild_catalog

    dest = DATA / f"store-{n}x{size}"
    if (dest / "catalog.parquet").exists():
        return str(dest)
    base = _base_store(size)
    for i in range(n):
        copy_item(base / "items" / f"seed-{i % 2}.zarr", dest / "items" / f"slide-{i:02d}.zarr")
    rebuild_catalog(str(dest))
    return str(dest)


def copy_item(base: Path, item: Path, ignore=None) -> None:
    """A copy of the item folder ``base`` at ``item`` (made once), its card's item_id set to the new name;
    ``ignore`` as shutil.copytree's."""
    if item.exists():
        return
    tmp = item.with_name(item.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp, ignore=ignore)
    meta = json.loads((tmp / "zarr.json").read_text())
    meta["attributes"]["pretextlab"]["item_id"] = item.stem
    (tmp / "zarr.json").write_text(json.dumps(meta))
    tmp.rename(item)


def _base_store(size: int) -> Path:
    """Two distinct synthetic H&E slides (seeds 0 and 1) ingested with 512 px chunks."""
    from pretextlab.jobs.ingest import IngestConfig, run_ingest
    from pretextlab.storage import synthetic as syn

    dest = DATA / f"base-{size}"
    if (dest / "catalog.parquet").exists():
        return dest
    raw = DATA / f"raw-{size}"
    for seed in (0, 1):
        if not (raw / f"seed-{seed}.tif").exists():
            syn.write_slide_tiff(raw / f"seed-{seed}.tif", size, size, tile=512, levels=1, seed=seed)
    print(f"ingesting two {size}^2 slides into {dest} (once)", flush=True)
    rep = run_ingest(IngestConfig(sources=[str(raw)], dest=str(dest)), progress=False)
    if not rep.ok:
        raise RuntimeError(f"ingest failed: {rep}")
    import ray

    ray.shutdown()
    return dest


def spec_for(store: str, patch: int, **extra):
    from pretextlab.storage.stream import StreamSpec

    return StreamSpec(sources=[store], kind="patches", patch={"patch_size": patch, "min_tissue": 0.5}, seed=0, **extra)


def png_folder(plan, store: str) -> Path:
    """Epoch 0's patches as PNG files (PIL defaults), written once."""
    from PIL import Image

    from pretextlab.storage.datasource import read_group

    folder = DATA / f"png-{Path(store).name}-{plan.sample_shape[0]}"
    refs = [r for g in plan.epoch_groups(0) for r in g]
    if folder.is_dir() and len(list(folder.glob("*.png"))) == len(refs):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    first = 0
    for g in plan.epoch_groups(0):
        batch = read_group(plan, g, 0, first)
        for j, img in enumerate(batch["image"]):
            Image.fromarray(img).save(folder / f"{first + j:07d}.png")
        first += len(g)
    return folder


# --- (a) patches/s -------------------------------------------------------------------------------------


def plain_loop(plan, epochs=(0,), storage_options=None) -> int:
    """The limit: one process, zarr + numpy, each chunk of each read group fetched once, patches cut."""
    import zarr

    from pretextlab.storage import fs as sfs
    from pretextlab.storage.layout import item_url

    uri = plan.sources[0].uri
    arrays: dict = {}
    n = 0
    for group in (g for e in epochs for g in plan.epoch_groups(e)):
        chunks: dict = {}
        for ref in group:
            s = ref.sample
            key = (s.item_id, s.level)
            if key not in arrays:
                store = sfs.zarr_store(item_url(uri, s.item_id), read_only=True, storage_options=storage_options)
                grp = zarr.open_group(store, mode="r")
                arrays[key] = grp[str(s.level)]
            arr = arrays[key]
            ch = arr.chunks[-1]
            patch = np.empty((s.size, s.size, arr.shape[0]), np.uint8)
            for cy in range(s.y // ch, (s.y + s.size - 1) // ch + 1):
                for cx in range(s.x // ch, (s.x + s.size - 1) // ch + 1):
                    block = chunks.get((key, cy, cx))
                    if block is None:
                        block = chunks[(key, cy, cx)] = arr[
                            :, cy * ch : (cy + 1) * ch, cx * ch : (cx + 1) * ch
                        ].transpose(1, 2, 0)
                    ya, yb = max(s.y, cy * ch), min(s.y + s.size, cy * ch + block.shape[0])
                    xa, xb = max(s.x, cx * ch), min(s.x + s.size, cx * ch + block.shape[1])
                    patch[ya - s.y : yb - s.y, xa - s.x : xb - s.x] = block[
                        ya - cy * ch : yb - cy * ch, xa - cx * ch : xb - cx * ch
                    ]
            n += 1
    return n


def in_process(plan) -> int:
    from pretextlab.storage.datasource import read_group

    n = 0
    for g in plan.epoch_groups(0):
        n += len(read_group(plan, g, 0, n)["image"])
    return n


def ray_stream(plan, num_cpus: float = 0.5, batch_size: int = 64, epochs=(0,), **kwargs) -> int:
    from pretextlab.storage.datasource import read_stream

    ds = read_stream(plan, list(epochs), num_cpus=num_cpus, **kwargs)
    return sum(len(b["image"]) for b in ds.iter_batches(batch_size=batch_size, batch_format="numpy"))


class MotoS3:
    """moto's S3 server on a free loopback port, holding a copy of a local store (the benchmark's S3)."""

    def __init__(self, local: str):
        import socket
        import subprocess

        import boto3

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        # the standard AWS environment, as a user sets it: Ray workers started after this inherit it
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL=endpoint)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        client = boto3.client("s3", endpoint_url=endpoint)
        for _ in range(100):
            try:
                client.create_bucket(Bucket="bench")
                break
            except Exception:  # not listening yet
                time.sleep(0.2)
        root = Path(local)
        for f in sorted(q for q in root.rglob("*") if q.is_file()):
            client.upload_file(str(f), "bench", f"store/{f.relative_to(root).as_posix()}")
        self.uri = "s3://bench/store"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class PngTiles:
    """A map-style dataset of PNG tiles, as pathology repositories write them."""

    def __init__(self, folder: Path):
        self.files = sorted(folder.glob("*.png"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return torch.from_numpy(np.array(im.convert("RGB")))


def dataloader(folder: Path, batch_size: int = 64, workers: int = 2) -> int:
    import torch

    loader = torch.utils.data.DataLoader(PngTiles(folder), batch_size=batch_size, shuffle=True, num_workers=workers)
    return sum(len(b) for b in loader)


def part_a(args) -> dict:
    import ray

    from pretextlab.storage.stream import plan_stream

    store = slide_store(args.slides, args.size)
    plan = plan_stream(spec_for(store, args.patch))
    folder = png_folder(plan, store)
    print(
        f"(a) {plan.samples_per_epoch} patches of {args.patch}^2 from {args.slides} slides; "
        f"{len(plan.epoch_groups(0))} chunk groups per epoch",
        flush=True,
    )
    out = {
        "slides": args.slides,
        "slide_size": args.size,
        "patch": args.patch,
        "patches": plan.samples_per_epoch,
        "groups": len(plan.epoch_groups(0)),
    }
    s3 = MotoS3(slide_store(args.s3_slides, args.size)) if args.s3_slides else None  # before Ray: env inherited
    start_ray(args.ray_defaults, num_cpus=os.cpu_count())
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    epochs = (0, 1, 2)
    ways = {
        "zarr_numpy_loop": lambda: plain_loop(plan),
        "read_group_in_process": lambda: in_process(plan),
        "torch_dataloader_png_2_workers": lambda: dataloader(folder),
        "ray_read_stream": lambda: ray_stream(plan),
        "ray_read_stream_1cpu_tasks": lambda: ray_stream(plan, num_cpus=1.0),
        "ray_read_stream_one_task_per_group": lambda: ray_stream(plan, lazy=False),
        "zarr_numpy_loop_3_epochs": lambda: plain_loop(plan, epochs),
        "ray_read_stream_3_epochs": lambda: ray_stream(plan, epochs=epochs),
    }
    if s3 is not None:
        s3_plan = plan_stream(spec_for(s3.uri, args.patch))
        out["s3_patches"] = s3_plan.samples_per_epoch
        ways["s3_zarr_numpy_loop_3_epochs"] = lambda: plain_loop(s3_plan, epochs)
        ways["s3_ray_read_stream_3_epochs"] = lambda: ray_stream(s3_plan, epochs=epochs)
    ray_stream(plan)  # warm-up: worker processes start, imports
    rates: dict[str, list[float]] = {k: [] for k in ways}
    peaks: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.repeats):  # every way once per repeat: a change in load hits them alike
        for k, fn in ways.items():
            with PeakPss() as mem:  # 0.5 s: reading ~15 processes' smaps every 50 ms took CPU from them
                t0 = time.perf_counter()
                n = fn()
                rates[k].append(n / (time.perf_counter() - t0))
            peaks[k].append(mem.peak_mib)
    ray.shutdown()
    if s3 is not None:
        s3.close()
    for k in ways:
        out[k] = {
            "patches_per_s": statistics.median(rates[k]),
            "runs": [round(r, 1) for r in rates[k]],
            "peak_mib": statistics.median(peaks[k]),
        }
    loop = "plain zarr + numpy loop (1 process)"
    out["figures"] = [
        compare(
            "(a) read_stream patches/s (0.5-CPU read tasks, the training default)",
            "patches/s",
            rates["ray_read_stream"],
            loop,
            rates["zarr_numpy_loop"],
        ),
        compare(
            "(a) read_stream patches/s, 3 epochs in one stream (as training reads it)",
            "patches/s",
            rates["ray_read_stream_3_epochs"],
            "plain zarr + numpy loop over the same 3 epochs (1 process)",
            rates["zarr_numpy_loop_3_epochs"],
        ),
        compare(
            "(a) read_stream patches/s (1-CPU read tasks)",
            "patches/s",
            rates["ray_read_stream_1cpu_tasks"],
            loop,
            rates["zarr_numpy_loop"],
        ),
        compare(
            "(a) read_stream patches/s, one read task per chunk group (the stream before lazy epochs)",
            "patches/s",
            rates["ray_read_stream_one_task_per_group"],
            loop,
            rates["zarr_numpy_loop"],
        ),
        compare(
            "(a) read_stream patches/s (0.5-CPU read tasks) vs PNG DataLoader",
            "patches/s",
            rates["ray_read_stream"],
            "torch DataLoader, 2 workers, PNG folder",
            rates["torch_dataloader_png_2_workers"],
        ),
    ]
    if s3 is not None:
        out["figures"].append(
            compare(
                f"(a) read_stream patches/s from the loopback S3 server ({args.s3_slides} slides), 3 epochs",
                "patches/s",
                rates["s3_ray_read_stream_3_epochs"],
                "plain zarr + numpy loop over the same S3 store and epochs (1 process)",
                rates["s3_zarr_numpy_loop_3_epochs"],
            )
        )
    out["ratio_ray_vs_zarr_loop"] = out["figures"][0]["ratio"]
    out["ratio_ray_vs_png_dataloader"] = out["figures"][4]["ratio"]
    for k in ways:
        print(
            f"  {k:36s} {out[k]['patches_per_s']:9.0f} patches/s   runs {out[k]['runs']}   "
            f"peak PSS (tree) {out[k]['peak_mib']:.0f} MiB"
        )
    print_figures(out["figures"])
    return out


# --- (b) peak memory vs dataset size ---------------------------------------------------------------------


#: (b) read groups of >= 16 rows: the 2-slide store then also has enough read tasks to keep the 4 read
#: workers (0.5 CPU each on 2 cores) busy, so both sizes run the same process pool (a fixed cost).
MEMORY_MIN_ROWS = 16


def memory_child(store: str, patch: int, ray_defaults: bool = False) -> dict:
    """In a fresh process: start Ray, stream epoch 1 (warm-up: the worker pool grows to what this stream
    runs at once and imports what it needs), then epoch 0 batch by batch while sampling memory (PSS of
    this process tree, MiB, and the object store's bytes in use)."""
    import warnings

    warnings.filterwarnings("ignore")
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address
    from ray.data import DataContext

    from pretextlab.storage.datasource import read_stream
    from pretextlab.storage.stream import plan_stream

    me = psutil.Process()
    peak_store = 0
    stop = threading.Event()

    def sample_store() -> None:
        nonlocal peak_store
        address = ray.get_runtime_context().gcs_address
        while not stop.is_set():
            try:
                used = get_memory_info_reply(get_state_from_address(address)).store_stats.object_store_bytes_used
            except Exception:
                used = 0
            peak_store = max(peak_store, used)
            time.sleep(0.05)

    def stream(epoch: int, limit: int | None = None) -> int:
        ds = read_stream(plan, [epoch])
        batches = (ds.limit(limit) if limit else ds).iter_batches(batch_size=64, batch_format="numpy")
        return sum(len(b["image"]) for b in batches)

    start_ray(ray_defaults, num_cpus=os.cpu_count())
    DataContext.get_current().enable_progress_bars = False
    plan = plan_stream(spec_for(store, patch, min_rows_per_group=MEMORY_MIN_ROWS))
    idle = tree_pss(me) / MIB
    stream(1, limit=512)
    warm = tree_pss(me) / MIB
    thread = threading.Thread(target=sample_store, daemon=True)
    thread.start()
    with PeakPss(interval_s=0.05) as mem:
        t0 = time.perf_counter()
        n = stream(0)
        seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    processes = len(me.children(recursive=True)) + 1
    ray.shutdown()
    return {
        "patches": n,
        "seconds": seconds,
        "pixel_mb": n * plan.sample_bytes / 1e6,
        "idle_mib": idle,
        "warm_mib": warm,
        "epoch_peak_mib": mem.peak_mib,
        "stream_growth_mib": mem.peak_mib - warm,
        "processes": processes,
        "peak_object_store_mib": peak_store / MIB,
    }


def measure_memory(store: str, patch: int, ray_defaults: bool = False, tries: int = 2) -> dict:
    """One fresh-process measurement; retried once (a loaded machine can time out Ray's start)."""
    for attempt in range(tries):
        try:
            argv = ["_memory", store, str(patch)] + (["--ray-defaults"] if ray_defaults else [])
            return measure_child(HERE, argv, interval_s=0.1, timeout_s=900)
        except RuntimeError as exc:
            if attempt + 1 == tries:
                raise
            print(f"  memory child failed (try {attempt + 1}): {str(exc).strip().splitlines()[-1:]}", flush=True)
    raise AssertionError("unreachable")


def part_b(args) -> dict:
    out: dict = {"patch": args.patch, "slide_size": args.size}
    sizes = {"small": args.small, "large": args.large}
    runs: dict[str, list[dict]] = {k: [] for k in sizes}
    stores = {label: slide_store(n, args.size) for label, n in sizes.items()}
    for _ in range(args.repeats):  # small and large alternate per repeat
        for label in sizes:
            runs[label].append(measure_memory(stores[label], args.patch, args.ray_defaults))
    for label, n in sizes.items():
        med = {k: statistics.median(r[k] for r in runs[label]) for k in runs[label][0]}
        out[label] = {
            "slides": n,
            **{k: round(v, 1) for k, v in med.items()},
            "runs_epoch_peak_mib": [round(r["epoch_peak_mib"]) for r in runs[label]],
        }
        print(
            f"(b) {n:3d} slides: {med['patches']:.0f} patches ({med['pixel_mb']:.0f} MB of pixels) in "
            f"{med['seconds']:.1f} s; peak PSS (tree) during the epoch {med['epoch_peak_mib']:.0f} MiB "
            f"(idle {med['idle_mib']:.0f}, warm {med['warm_mib']:.0f}, {med['processes']:.0f} processes), object "
            f"store {med['peak_object_store_mib']:.0f} MiB; growth over the warm pool "
            f"{med['stream_growth_mib']:.0f} MiB; whole child {med['peak_mib']:.0f} MiB",
            flush=True,
        )
    s, b = out["small"], out["large"]
    out["data_ratio"] = b["pixel_mb"] / s["pixel_mb"]
    out["figures"] = [
        compare(
            f"(b) peak PSS streaming one epoch, {args.large} slides (data x{out['data_ratio']:.1f})",
            "MiB",
            [r["epoch_peak_mib"] for r in runs["large"]],
            f"the same with {args.small} slides",
            [r["epoch_peak_mib"] for r in runs["small"]],
            better="lower",
            note="flat (ratio ~1) is the goal",
        ),
        compare(
            f"(b) peak object store bytes in use, {args.large} slides",
            "MiB",
            [r["peak_object_store_mib"] for r in runs["large"]],
            f"the same with {args.small} slides",
            [r["peak_object_store_mib"] for r in runs["small"]],
            better="lower",
        ),
    ]
    print_figures(out["figures"])
    return out


# --- (c) training images/s, streaming vs in-memory --------------------------------------------------------


def _train(prep, name: str, dataset=None) -> dict:
    """Fit one run; images/s = median of its log windows after the first; peak PSS of the tree (MiB)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretextlab.jobs.pretrain import build_trainer

    with PeakPss(interval_s=0.1) as mem:
        t0 = time.perf_counter()
        result = build_trainer(prep, name=name, dataset=dataset).fit()
        seconds = time.perf_counter() - t0
    acc = EventAccumulator(str(Path(prep.cfg.storage) / name / "tensorboard"))
    acc.Reload()
    windows = [e.value for e in acc.Scalars("images_per_s")][1:]  # the first window holds the warm-up
    return {
        "images_per_s": statistics.median(windows),
        "windows": [round(w, 1) for w in windows],
        "fit_seconds": round(seconds, 1),
        "loss": float(result.metrics["loss"]),
        "peak_mib": mem.peak_mib,
    }


def part_c(args) -> dict:
    """Training images/s fed by the Zarr stream (read_stream + map_views in Ray Data tasks) against the same
    run fed by the same views materialised in the object store beforehand (the in-memory anchor)."""
    import ray

    from pretextlab.jobs.pretrain import build_dataset, prepare
    from pretextlab.training.config import PretrainConfig

    store = slide_store(2, 2048)
    runs = BENCH / "pipeline-runs"
    shutil.rmtree(runs, ignore_errors=True)
    cfg = PretrainConfig.model_validate(
        {
            "name": "c",
            "modality": "histopathology",
            "data": {"kind": "patches", "sources": [store], "patch": {"patch_size": 64, "min_tissue": 0.5}},
            "objective": {
                "name": args.c_objective,
                "backbone": {"arch": "vit_tiny", "img_size": 64, "patch_size": 8, "depth": 4},
            },
            "views": {"n_local": 2},
            "train": {
                "steps": args.c_steps,
                "batch_size": 32,
                "num_workers": 2,
                "cpus_per_worker": 0.5,
                "data_cpus": 0.5,
                "log_every": 10,
                "checkpoint_every": args.c_steps,
            },
            "storage": str(runs),
            "registry": str(runs / "registry"),
        }
    )
    start_ray(args.ray_defaults)
    prep = prepare(cfg)
    out: dict = {
        "objective": args.c_objective,
        "steps": args.c_steps,
        "batch": "32 x 2 workers",
        "runs": {"stream": [], "memory": []},
    }
    t0 = time.perf_counter()
    materialised = build_dataset(prep).materialize()
    out["materialise_seconds"] = round(time.perf_counter() - t0, 1)
    for r in range(args.repeats):
        for kind in ("stream", "memory"):
            res = _train(prep, f"{kind}-{r}", materialised if kind == "memory" else None)
            out["runs"][kind].append(res)
            print(
                f"  (c) {kind:6s} run {r}: {res['images_per_s']:.1f} images/s, fit {res['fit_seconds']:.0f} s, "
                f"peak PSS (tree) {res['peak_mib']:.0f} MiB",
                flush=True,
            )
    for kind in ("stream", "memory"):
        out[kind] = {
            k: statistics.median(x[k] for x in out["runs"][kind]) for k in ("images_per_s", "fit_seconds", "peak_mib")
        }
    out["figures"] = [
        compare(
            "(c) training images/s fed by the Zarr stream",
            "images/s",
            [r["images_per_s"] for r in out["runs"]["stream"]],
            "the same run fed by materialised views (in memory)",
            [r["images_per_s"] for r in out["runs"]["memory"]],
        )
    ]
    out["ratio"] = out["figures"][0]["ratio"]
    out["data_path_cost"] = 1 - out["ratio"]
    print(
        f"  (c) streaming {out['stream']['images_per_s']:.1f} vs in-memory {out['memory']['images_per_s']:.1f} "
        f"images/s: ratio {out['ratio']:.2f} (data path costs {100 * out['data_path_cost']:.0f} %)",
        flush=True,
    )
    ray.shutdown()
    return out


PARTS = {"a": part_a, "b": part_b, "c": part_c}


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1:3] == ["_child", "_memory"]:
        print(json.dumps(memory_child(sys.argv[3], int(sys.argv[4]), "--ray-defaults" in sys.argv[5:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=sorted(PARTS), choices=sorted(PARTS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096, help="slide edge in pixels")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--slides", type=int, default=20, help="(a) slides in the store")
    ap.add_argument("--s3-slides", type=int, default=4, help="(a) slides copied to a loopback S3 server (0: skip)")
    ap.add_argument("--small", type=int, default=2, help="(b) slides in the small store")
    ap.add_argument("--large", type=int, default=20, help="(b) slides in the large store")
    ap.add_argument(
        "--ray-defaults",
        action="store_true",
        help="start Ray with its own worker-pool defaults instead of pretextlab's (the figures before)",
    )
    ap.add_argument("--c-objective", default="dino", help="(c) objective to train")
    ap.add_argument("--c-steps", type=int, default=60, help="(c) steps per run")
    args = ap.parse_args()
    BENCH.mkdir(exist_ok=True)
    DATA.mkdir(parents=True, exist_ok=True)
    path = BENCH / "pipeline.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.parts:
        t0 = time.perf_counter()
        results[name] = PARTS[name](args)
        results[name]["bench_seconds"] = round(time.perf_counter() - t0, 1)
        results[name]["command"] = " ".join(["python", "benchmarks/pipeline.py", *sys.argv[1:]])
        results[name]["machine"] = machine()
    # every part's figures (a part not rerun keeps its last figures, with its own command and machine)
    figures = [f for k in sorted(PARTS) if k in results for f in results[k].get("figures", [])]
    extra = {k: v for k, v in results.items() if k not in ("benchmark", "command", "machine", "figures")}
    write_results("pipeline", figures, path, **extra)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
