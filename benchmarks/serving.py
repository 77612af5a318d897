"""Embedding service throughput and latency against the same model in process, and a naive server, in one run.

    .venv/bin/python benchmarks/serving.py                      # ViT-Tiny 64 px (patch 16), ~3-5 min
    .venv/bin/python benchmarks/serving.py --seconds 4 --quick  # a quick look (1 and 32 images, 8 clients)
    .venv/bin/python benchmarks/serving.py --replicas 1         # one model replica with all threads

For 1 and 32 images per request and 1, 8 and 32 concurrent clients (HTTP, keep-alive, .npy bodies and
responses), each cell time-bounded: embeddings/s and p50/p99 latency of

* ``pretextlab``: this service (FastAPI ingress with per-model batching -> ``@serve.batch`` encoder
  deployment; by default one replica per core with one torch thread each), and
* ``naive``: one Serve deployment that runs one forward per request (no batching), all threads,

against ``in_process``: ``embed_images`` on the same model, batches of 32, ``--threads`` threads (the
limit: no HTTP, no serialisation, no other process). The machine is shared and noisy, so an in-process
window runs between every two cells, and each cell's ratio is its embeddings/s over the median of the
two windows around it. The 1-thread in-process rate is reported too. OMP_WAIT_POLICY=PASSIVE for every
process (spinning OpenMP threads on shared cores made 2-thread forwards 10-25x slower here). Peak PSS of
the driver's whole tree (Ray, Serve proxy, replicas; benchmarks/harness.py, MiB). Reported: every
cell's ratio and, per server and images/request, the median over the client counts (never the best
cell). Figures go to .bench/serving.json.
"""

# no `from __future__ import annotations`: the naive Serve ingress needs real annotations (Request)
import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and "--omp-wait-policy" not in sys.argv:
    # before torch (OpenMP) loads, in this process and in the Ray workers it starts: spinning OpenMP
    # threads on shared cores made 2-thread forwards 10-25x slower here; the service sets it per replica
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, PeakPss, compare, machine, print_figures, write_results

HERE = Path(__file__).resolve()
KEY = "bench-key-0123456789abcdef"


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def make_encoder(registry: str, size: int, patch: int):
    import torch

    from pretextlab.models import BackboneConfig, EncoderCard, create_backbone
    from pretextlab.registry import EncoderRegistry

    torch.manual_seed(0)
    cfg = BackboneConfig(arch="vit_tiny", img_size=size, patch_size=patch, in_chans=3)
    model = create_backbone(cfg).eval()
    card = EncoderCard(
        name="bench",
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=size,
        patch_size=patch,
        in_chans=3,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    ref = EncoderRegistry(registry).register(model, card)
    return model, ref.card, ref


def _at_threads(torch, threads: int, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def in_process_rate(model, card, size: int, batch: int, seconds: float) -> float:
    """Images/s of preprocess + forward in this process, batches of ``batch`` (median of 1 s windows)."""
    from pretextlab.evaluate.features import embed_images

    imgs = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    embed_images(model, card, imgs, batch_size=batch, device="cpu")
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.5:
            embed_images(model, card, imgs, batch_size=batch, device="cpu")
            n += batch
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


async def load(
    url: str,
    path: str,
    payload: bytes,
    n_images: int,
    clients: int,
    seconds: float,
    warmup: float,
    headers: dict[str, str],
) -> dict[str, float]:
    """``clients`` connections posting ``payload`` back to back; stats over the window after ``warmup``."""
    import httpx

    lat: list[float] = []
    errors = 0
    start = time.perf_counter()
    t_on, t_off = start + warmup, start + warmup + seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= t_off:
                return
            t0 = time.perf_counter()
            try:
                r = await c.post(path, content=payload, headers=headers)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            t1 = time.perf_counter()
            if t_on <= t1 <= t_off:  # completions inside the window
                if ok:
                    lat.append(t1 - t0)
                else:
                    errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    lat.sort()
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {
        "requests_per_s": len(lat) / seconds,
        "embeddings_per_s": len(lat) * n_images / seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "requests": len(lat),
        "errors": errors,
    }


def naive_app(registry: str, ref_id: str, threads: int):
    """One forward per request: the same model and preprocessing, no batching across requests."""
    from fastapi import FastAPI, Request
    from ray import serve
    from starlette.responses import Response

    api = FastAPI()

    @serve.deployment(name="naive", max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
    @serve.ingress(api)
    class Naive:
        def __init__(self):
            import torch

            from pretextlab.registry import EncoderRegistry

            torch.set_num_threads(threads)
            self.model, self.card, _ = EncoderRegistry(registry).load(ref_id)

        @api.post("/")
        async def embed(self, request: Request) -> Response:
            import torch

            from pretextlab.evaluate.features import preprocess

            arr = np.load(io.BytesIO(await request.body()), allow_pickle=False)
            with torch.inference_mode():
                emb = self.model(preprocess(arr, self.card)).numpy()
            return Response(_npy(emb), media_type="application/x-npy")

    return Naive.bind()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=6.0, help="measured window per cell")
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--anchor-seconds", type=float, default=2.0, help="in-process window between cells")
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 2,
        help="torch threads in process (the anchor) and in total across model replicas",
    )
    ap.add_argument(
        "--replicas",
        type=int,
        default=os.cpu_count() or 2,
        help="model replicas, each with threads / replicas torch threads (default: one per core)",
    )
    ap.add_argument("--quick", action="store_true", help="8 clients only")
    ap.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE"], help="OMP_WAIT_POLICY (default PASSIVE)")
    ap.add_argument("--out", default=str(BENCH / "serving.json"))
    args = ap.parse_args()
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy

    import ray
    import torch
    from ray import serve

    from pretextlab.serving.app import build_app

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="pretextlab-bench-serving-")
    registry = os.path.join(tmp, "registry")
    model, card, ref = make_encoder(registry, args.size, args.patch)
    one_thread_before = _at_threads(torch, 1, lambda: in_process_rate(model, card, args.size, 32, 3.0))
    print(f"in process (batch 32): {one_thread_before:.0f} images/s at 1 thread", flush=True)

    os.environ["PRETEXTLAB_BENCH_KEY"] = KEY
    per_replica = max(1, args.threads // args.replicas)
    ray.init(
        num_cpus=max(4, 2 * (os.cpu_count() or 2)), include_dashboard=False, logging_level="ERROR", log_to_driver=False
    )
    port = 8000 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    mem = PeakPss(interval_s=0.5).__enter__()  # this process and its tree: Ray, Serve proxy and replicas
    serve.run(
        build_app(
            {
                "registry": registry,
                "api_key_env": "PRETEXTLAB_BENCH_KEY",
                "models": [
                    {
                        "name": "bench",
                        "spec": ref.id,
                        "num_cpus": per_replica,
                        "torch_threads": per_replica,
                        "max_batch_images": 64,
                        "batch_wait_timeout_s": 0.002,
                        "max_ongoing_requests": 64,
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY") or None,
                        "autoscaling": {"min_replicas": args.replicas, "max_replicas": args.replicas},
                    }
                ],
                "ingress": {"num_cpus": 0.5, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
            }
        ),
        name="pretextlab",
        route_prefix="/",
    )
    serve.run(naive_app(registry, ref.id, args.threads), name="naive", route_prefix="/naive")
    url = f"http://127.0.0.1:{port}"
    servers = {
        "pretextlab": (
            "/v1/embeddings?model=bench",
            {"X-API-Key": KEY, "content-type": "application/x-npy", "accept": "application/x-npy"},
        ),
        "naive": ("/naive/", {"content-type": "application/x-npy"}),
    }
    rng = np.random.default_rng(1)
    cells = []
    anchors = [in_process_rate(model, card, args.size, 32, args.anchor_seconds)]  # between every two cells
    client_counts = [8] if args.quick else [1, 8, 32]
    for n_images in (1, 32):
        payload = _npy(rng.integers(0, 256, (n_images, args.size, args.size, 3), dtype=np.uint8))
        for clients in client_counts:
            for name, (path, headers) in servers.items():
                stats = asyncio.run(load(url, path, payload, n_images, clients, args.seconds, args.warmup, headers))
                anchors.append(in_process_rate(model, card, args.size, 32, args.anchor_seconds))
                local = statistics.median(anchors[-2:])
                cells.append(
                    {
                        "server": name,
                        "images_per_request": n_images,
                        "clients": clients,
                        **stats,
                        "in_process_around": round(local, 1),
                        "ratio_to_in_process": round(stats["embeddings_per_s"] / local, 3),
                    }
                )
                print(
                    f"{name:>10}  {n_images:>2} img/req  {clients:>2} clients: {stats['embeddings_per_s']:7.0f} emb/s "
                    f"{stats['requests_per_s']:6.1f} req/s  p50 {stats['p50_ms']:7.1f} ms  "
                    f"p99 {stats['p99_ms']:7.1f} ms"
                    f"  errors {stats['errors']}  | in process {local:5.0f}/s -> "
                    f"{cells[-1]['ratio_to_in_process']:.2f}x",
                    flush=True,
                )
    mem.__exit__()
    serve.shutdown()
    ray.shutdown()
    one_thread_after = _at_threads(torch, 1, lambda: in_process_rate(model, card, args.size, 32, 3.0))
    anchor = statistics.median(anchors)
    # every cell is reported; the headline per (server, images/request) is the median over client counts,
    # not the best one (picking the maximum over cells biases the ratio upwards)
    groups = {
        (s, n): [c for c in cells if c["server"] == s and c["images_per_request"] == n]
        for s in servers
        for n in (1, 32)
    }
    summary = {
        key: {
            "median_ratio_to_in_process": round(statistics.median(c["ratio_to_in_process"] for c in cs), 3),
            "median_embeddings_per_s": round(statistics.median(c["embeddings_per_s"] for c in cs), 1),
            "by_clients": {str(c["clients"]): c["ratio_to_in_process"] for c in cs},
        }
        for key, cs in groups.items()
        if cs
    }
    figures = []
    for (s_name, n), cs in groups.items():
        for c in cs:
            figures.append(
                compare(
                    f"serving {s_name}, {n} image(s)/request, {c['clients']} client(s): embeddings/s",
                    "embeddings/s",
                    [c["embeddings_per_s"]],
                    f"in process, {args.threads} threads, batch 32 (window around the cell)",
                    [c["in_process_around"]],
                )
            )
        if len(cs) > 1:  # the headline: the median over client counts, never the best cell
            figures.append(
                compare(
                    f"serving {s_name}, {n} image(s)/request: median over {len(cs)} client counts",
                    "embeddings/s",
                    [c["embeddings_per_s"] for c in cs],
                    f"in process, {args.threads} threads, batch 32 (window around each cell)",
                    [c["in_process_around"] for c in cs],
                )
            )
    result = {
        "benchmark": "serving",
        "model": f"vit_tiny img {args.size} patch {args.patch}",
        "threads": args.threads,
        "replicas": args.replicas,
        "threads_per_replica": per_replica,
        "machine_at_end": machine(),
        "seconds_per_cell": args.seconds,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "in_process_images_per_s": {
            "threads": args.threads,
            "median": round(anchor, 1),
            "windows": [round(a, 1) for a in anchors],
            "one_thread": {"before": round(one_thread_before, 1), "after": round(one_thread_after, 1)},
        },
        "cells": cells,
        "summary": {f"{s}/{n}": v for (s, n), v in summary.items()},
        "peak_mib": round(mem.peak_mib, 1),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    write_results("serving", figures, args.out, **result)
    print(
        f"in process at {args.threads} threads: median {anchor:.0f} images/s over {len(anchors)} windows "
        f"({min(anchors):.0f}-{max(anchors):.0f}); at 1 thread {one_thread_before:.0f} / {one_thread_after:.0f}"
    )
    for key, v in result["summary"].items():
        cells_text = ", ".join(f"{k} clients {r:.2f}x" for k, r in v["by_clients"].items())
        print(
            f"{key:>14} img/req: median {v['median_ratio_to_in_process']:.2f}x the in-process rate measured "
            f"around each cell ({cells_text})"
        )
    print(f"peak PSS (driver + Ray + Serve tree): {result['peak_mib']:.0f} MiB; wall {result['wall_s']:.0f} s")
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
