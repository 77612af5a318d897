"""Scale: a generated 100,000-image collection ingests, streams an epoch, evaluates and embeds with flat
memory, and ``pretextlab catalog`` on it answers in under 2 s (issue 13, item 7).

    .venv/bin/python benchmarks/scale.py                                   # 100,000 vs 10,000 images, 32 px
    .venv/bin/python benchmarks/scale.py --images 20000 --anchor-images 2000 --repeats 1   # quick

The anchor is the same pipeline on a set ``--images / --anchor-images`` times smaller: memory is flat
when each stage's peak at the full size is close to its peak at the small one (ratio ~1, lower is
better), while a stage that held every image would grow with the set. Each stage runs in a fresh
process; its ``peak_mib`` is the peak PSS of that process tree (Ray's processes included, one unit
with every other benchmark). Stages:
  1. ingest   ``run_ingest`` of the PNG folder (ImageFolder labels) on a local Ray cluster of ``--cpus``;
  2. catalog  the ``pretextlab catalog STORE`` command, wall time from process start (target < 2 s);
  3. stream   one epoch of the training ``frames`` stream through Ray Data, every row counted once;
  4. evaluate ``evaluate_encoder`` (kNN, linear probe, few-shot, diagnostics) of a random-init ViT;
  5. embed    ``run_embed``: one feature bag per collection shard.
The images are grey 32 px PNGs in two class folders (a class-dependent stripe frequency under noise),
generated once under .bench/. Figures go to .bench/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, compare, measure_child, print_figures, write_results

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
STAGES = ("ingest", "catalog", "stream", "evaluate", "embed")


def make_images(folder: Path, n: int, size: int = 32) -> Path:
    """``n`` grey ``size`` px PNGs in class folders ``a`` and ``b``; generated once."""
    import numpy as np
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    xx = np.mgrid[0:size, 0:size][1]
    for c in "ab":
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % 2
        base = np.sin(xx * (0.3 + 0.3 * c)) * 40 + 128
        img = np.clip(base + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "ab"[c] / f"{i:06d}.png", compress_level=1)
    done.write_text("ok\n")
    return folder


def save_encoder_at(folder: Path, size: int) -> Path:
    """A random-init ViT-Tiny (depth 2, patch 8) for ``size`` px grey images, saved as an encoder."""
    import torch

    from pretextlab.models.encoder_io import EncoderCard, save_encoder
    from pretextlab.models.vit import BackboneConfig, create_backbone

    cfg = BackboneConfig(arch="vit_tiny", img_size=size, patch_size=8, in_chans=1, depth=2)
    torch.manual_seed(0)
    model = create_backbone(cfg)
    card = EncoderCard(
        name="scale",
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        objective="random-init",
    )
    return Path(save_encoder(model, card, folder))


# -- child stages (each in a fresh process) ----------------------------------------------------------
def _ray(cpus: int) -> None:
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")


def stage_ingest(src: str, dest: str, cpus: int) -> dict:
    from pretextlab.jobs.ingest import IngestConfig, run_ingest

    _ray(cpus)
    t0 = time.perf_counter()
    rep = run_ingest(IngestConfig(sources=[src], dest=dest, labels_from_folders=True), progress=False)
    assert rep.ok, rep.render()
    return {"seconds": time.perf_counter() - t0, "images": rep.images, "shards": rep.shards}


def stage_stream(dest: str, cpus: int) -> dict:
    from pretextlab.storage.datasource import read_stream
    from pretextlab.storage.stream import StreamSpec, plan_stream

    _ray(cpus)
    t0 = time.perf_counter()
    plan = plan_stream(StreamSpec(sources=[dest], kind="frames"))
    planned = time.perf_counter() - t0
    rows, seen = 0, set()
    for batch in read_stream(plan, [0]).iter_batches(batch_size=1024, batch_format="numpy"):
        rows += len(batch["item_id"])
        seen.update(batch["item_id"].tolist())
    assert rows == len(seen) == plan.samples_per_epoch, (rows, len(seen), plan.samples_per_epoch)
    return {"seconds": time.perf_counter() - t0, "plan_seconds": planned, "rows": rows}


def stage_evaluate(dest: str, encoder: str) -> dict:
    from pretextlab.evaluate.report import evaluate_encoder

    t0 = time.perf_counter()
    res = evaluate_encoder(encoder, dest, {"n_bootstrap": 200, "fewshot_repeats": 2})
    return {
        "seconds": time.perf_counter() - t0,
        "samples": res["dataset"]["n_samples"],
        "knn_balanced_accuracy": res["knn"]["metrics"].get("balanced_accuracy", {}).get("value"),
        "timings_s": res["timings_s"],
    }


def stage_embed(dest: str, encoder: str, out: str, cpus: int) -> dict:
    from pretextlab.jobs.embed_batch import EmbedConfig, run_embed

    _ray(cpus)
    t0 = time.perf_counter()
    rep = run_embed(EmbedConfig(catalog=dest, encoder=encoder, dest=out), progress=False)
    return {"seconds": time.perf_counter() - t0, "items": len(rep.embedded), "frames": rep.frames}


def stage_catalog(dest: str) -> dict:
    """Wall time of the ``pretextlab catalog`` command, from process start to exit."""
    exe = Path(sys.executable).with_name("pretextlab")
    t0 = time.perf_counter()
    out = subprocess.run([str(exe), "catalog", dest], capture_output=True, text=True, check=True).stdout
    return {"seconds": time.perf_counter() - t0, "lines": len(out.splitlines()), "summary": out.splitlines()[0]}


def _child(argv: list[str]) -> None:
    stage, *rest = argv
    if stage == "ingest":
        out = stage_ingest(rest[0], rest[1], int(rest[2]))
    elif stage == "stream":
        out = stage_stream(rest[0], int(rest[1]))
    elif stage == "evaluate":
        out = stage_evaluate(rest[0], rest[1])
    elif stage == "embed":
        out = stage_embed(rest[0], rest[1], rest[2], int(rest[3]))
    elif stage == "catalog":
        out = stage_catalog(rest[0])
    else:
        raise SystemExit(f"unknown stage {stage}")
    print(json.dumps(out), flush=True)


# -- driver -----------------------------------------------------------------------------------------------
def run_size(n: int, size: int, cpus: int, work: Path, encoder: Path) -> dict[str, dict]:
    """Every stage once on an ``n``-image set; stage -> the child's result (seconds, peak_mib, ...)."""
    src = make_images(BENCH / f"scale-src-{n}x{size}", n, size)
    dest = str(work / f"store-{n}")
    res = {"ingest": measure_child(HERE, ["ingest", str(src), dest, str(cpus)])}
    res["catalog"] = measure_child(HERE, ["catalog", dest], interval_s=0.05)
    res["stream"] = measure_child(HERE, ["stream", dest, str(cpus)])
    res["evaluate"] = measure_child(HERE, ["evaluate", dest, str(encoder)])
    res["embed"] = measure_child(HERE, ["embed", dest, str(encoder), str(work / f"bags-{n}"), str(cpus)])
    for stage, r in res.items():
        print(f"  {n:>7,} images  {stage:<8} {r['seconds']:7.1f} s  peak {r['peak_mib']:7.0f} MiB", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--anchor-images", type=int, default=10_000, help="the small set whose peaks anchor")
    ap.add_argument("--size", type=int, default=32, help="image side in px")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="20,000 vs 2,000 images, one repeat")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.images, args.anchor_images, args.repeats = 20_000, 2_000, 1
    runs: dict[int, list[dict[str, dict]]] = {args.images: [], args.anchor_images: []}
    with tempfile.TemporaryDirectory(dir=BENCH if BENCH.exists() else None) as tmp:
        work = Path(tmp)
        encoder = save_encoder_at(work / "encoder", args.size)
        for r in range(args.repeats):  # small and large alternate per repeat
            for n in (args.anchor_images, args.images):
                runs[n].append(run_size(n, args.size, args.cpus, work / f"r{r}", encoder))
    big, small = runs[args.images], runs[args.anchor_images]
    anchor = f"the same stage on {args.anchor_images:,} images"
    figures = []
    for stage in STAGES:
        figures.append(
            compare(
                f"{stage} peak memory, {args.images:,} images",
                "MiB",
                [x[stage]["peak_mib"] for x in big],
                anchor,
                [x[stage]["peak_mib"] for x in small],
                better="lower",
                note=f"flat memory: ratio near 1 although the set is {args.images / args.anchor_images:.0f}x larger",
            )
        )
    for stage in ("ingest", "stream", "evaluate", "embed"):
        figures.append(
            compare(
                f"{stage} images/s, {args.images:,} images",
                "img/s",
                [args.images / x[stage]["seconds"] for x in big],
                anchor,
                [args.anchor_images / x[stage]["seconds"] for x in small],
            )
        )
    figures.append(
        compare(
            f"pretextlab catalog wall time, {args.images:,} rows",
            "s",
            [x["catalog"]["seconds"] for x in big],
            "the 2 s target",
            [2.0] * len(big),
            better="lower",
        )
    )
    print_figures(figures)
    path = write_results(
        "scale", figures, args.out, runs={str(k): v for k, v in runs.items()}, size=args.size, cpus=args.cpus
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        _child(sys.argv[2:])
    else:
        main()
