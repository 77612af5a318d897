"""GPU figures for the objectives: images/s and model-FLOPs utilisation (MFU) on ViT-S/16 at 224 px, bf16
autocast, fused AdamW, SDPA attention (timm's fused path). Run by benchmarks/gpu_check.sh.

    python benchmarks/gpu_objectives.py --batch 64 --steps 20 --peak-tflops 989   # H100 SXM dense bf16
    python benchmarks/gpu_objectives.py --dry-run    # CPU, tiny ViT, 2 steps per objective (the tests run it)

FLOPs per step are counted once per objective with ``torch.utils.flop_counter.FlopCounterMode`` (forward
+ backward, as the step runs); MFU = counted FLOPs / step time / the device's peak (``--peak-tflops``;
on the CPU dry run a nominal 1 TFLOP/s: the figure only shows the pipeline works). Figures go to
``.bench/gpu_objectives.json`` (benchmarks/harness.py; images/s and MFU, no anchor).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import compare, print_figures, write_results
from pretextlab.objectives import ScheduleConfig, create_objective
from pretextlab.training import Trainer

OBJECTIVES = "dino,simclr,vicreg,ijepa,mae,cine_jepa,cine_mae"


def batch_for(views: str, b: int, size: int, local: int, frames: int, device: str) -> dict:
    def x(s: int) -> torch.Tensor:
        return torch.randn(b, 3, s, s, device=device)

    if views == "multicrop":
        return {"global": [x(size), x(size)], "local": [x(local) for _ in range(6)]}
    if views == "pair":
        return {"global": [x(size), x(size)]}
    if views == "single":
        return {"images": x(size)}
    if views == "clip":
        return {"clips": torch.randn(max(1, b // frames), 3, frames, size, size, device=device)}
    raise ValueError(f"unknown views {views!r}")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--arch", default="vit_small")
    ap.add_argument("--depth", type=int, default=None, help="override the number of blocks")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip (cine objectives)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (default 989 on CUDA, 1 on CPU)")
    ap.add_argument("--objectives", default=OBJECTIVES)
    ap.add_argument("--dry-run", action="store_true", help="CPU, ViT-Tiny depth 1 at 32 px, batch 4, 2 steps")
    ap.add_argument("--out", default=None, help="results JSON (default .bench/gpu_objectives[-dry-run].json)")
    args = ap.parse_args()
    if args.dry_run:
        device = "cpu"
        args.arch, args.size, args.patch, args.depth, args.batch, args.frames = "vit_tiny", 32, 8, 1, 4, 2
        args.steps, args.warmup = min(args.steps, 2), 1
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device (use --dry-run to check the script on the CPU)")
        device = "cuda"
    peak = args.peak_tflops or (989.0 if device == "cuda" else 1.0)
    local = max(args.patch, (args.size * 3 // 7) // args.patch * args.patch)  # 96 px at 224 / 16
    name_of_device = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)"
    results: dict[str, dict] = {}
    figures = []
    for name in args.objectives.split(","):
        backbone = {"arch": args.arch, "img_size": args.size, "patch_size": args.patch, "in_chans": 3}
        if args.depth:
            backbone["depth"] = args.depth
        kw: dict = {"backbone": backbone}
        if name.startswith("cine"):
            kw["frames"] = args.frames
        obj = create_objective(name, **kw)
        trainer = Trainer(obj, ScheduleConfig(lr=5e-4), total_steps=1000, device=device, bf16=device == "cuda")
        batch = batch_for(obj.views, args.batch, args.size, local, args.frames, device)
        images = args.batch if obj.views != "clip" else max(1, args.batch // args.frames) * args.frames
        for _ in range(args.warmup):
            trainer.step(batch)
        with FlopCounterMode(display=False) as fc:
            trainer.step(batch)
        flops = fc.get_total_flops()
        sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(batch)
        sync(device)
        dt = (time.perf_counter() - t0) / args.steps
        r = {
            "images_per_s": images / dt,
            "step_ms": dt * 1e3,
            "flops_per_step": flops,
            "tflops": flops / dt / 1e12,
            "mfu": flops / dt / (peak * 1e12),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        }
        results[name] = r
        desc = f"{args.arch} {args.size} px /{args.patch}, batch {args.batch}, {name_of_device}"
        figures.append(compare(f"{name} training images/s ({desc})", "images/s", [r["images_per_s"]], None))
        figures.append(compare(f"{name} MFU ({desc}, peak {peak:g} TFLOP/s)", "fraction of peak", [r["mfu"]], None))
        mem = f"  peak {r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else ""
        print(
            f"{name:10} {r['images_per_s']:9.0f} img/s  {r['step_ms']:7.1f} ms/step  "
            f"{r['tflops']:8.3f} TFLOP/s  MFU {r['mfu']:.1%}{mem}",
            flush=True,
        )
        del trainer, obj
        if device == "cuda":
            torch.cuda.empty_cache()
    out = args.out or str(
        Path(__file__).resolve().parents[1]
        / ".bench"
        / ("gpu_objectives-dry-run.json" if args.dry_run else "gpu_objectives.json")
    )
    path = write_results(
        "gpu_objectives", figures, out, device=name_of_device, peak_tflops=peak, dry_run=args.dry_run, results=results
    )
    print_figures(figures)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
