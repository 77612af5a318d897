"""GPU figures for the objectives: images/s and model-FLOPs utilisation on ViT-S/16 at 224 px, bf16
autocast, fused AdamW, SDPA attention (timm's fused path). Run by benchmarks/gpu_check.sh.

    python benchmarks/gpu_objectives.py --batch 64 --steps 20 --peak-tflops 989   # H100 SXM dense bf16
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from pretextlab.objectives import ScheduleConfig, create_objective
from pretextlab.training import Trainer


def batch_for(views: str, b: int, size: int, device: str) -> dict:
    x = lambda s: torch.randn(b, 3, s, s, device=device)
    return {
        "multicrop": {"global": [x(size), x(size)], "local": [x(96) for _ in range(6)]},
        "pair": {"global": [x(size), x(size)]},
        "single": {"images": x(size)},
        "clip": {"clips": torch.randn(b // 8, 3, 8, size, size, device=device)},
    }[views]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--objectives", default="dino,simclr,vicreg,ijepa,mae,cine_jepa,cine_mae")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    out = {"device": torch.cuda.get_device_name(0), "results": {}}
    for name in args.objectives.split(","):
        kw = {"backbone": {"arch": "vit_small", "img_size": args.size, "patch_size": 16, "in_chans": 3}}
        if name.startswith("cine"):
            kw["frames"] = 8
        obj = create_objective(name, **kw)
        trainer = Trainer(obj, ScheduleConfig(lr=5e-4), total_steps=1000, device="cuda", bf16=True)
        batch = batch_for(obj.views, args.batch, args.size, "cuda")
        images = args.batch
        for _ in range(3):
            trainer.step(batch)
        with FlopCounterMode(display=False) as fc:
            trainer.step(batch)
        flops = fc.get_total_flops()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(batch)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        r = {
            "images_per_s": images / dt,
            "step_ms": dt * 1e3,
            "tflops": flops / dt / 1e12,
            "mfu": flops / dt / (args.peak_tflops * 1e12),
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
        }
        out["results"][name] = r
        print(
            f"{name:10} {r['images_per_s']:9.0f} img/s  {r['step_ms']:7.1f} ms/step  "
            f"{r['tflops']:6.1f} TFLOP/s  MFU {r['mfu']:.1%}  peak {r['peak_mem_gb']:.1f} GB",
            flush=True,
        )
        del trainer, obj
        torch.cuda.empty_cache()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
