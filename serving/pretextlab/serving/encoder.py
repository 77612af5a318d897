"""The model deployment: one registered encoder per deployment, batched across requests with ``@serve.batch``.

Requests arrive decoded and validated (uint8 (N, H, W, C)); each is preprocessed exactly as in training
(``pretextlab.evaluate.features.preprocess``, from the card) *before* it joins a batch, so no input can
fail a batch it shares with others. The batch size counts images, not requests; a request with more
images than one batch is split. Forwards run in inference mode on one executor thread, so the replica
keeps accepting and preprocessing requests while a batch runs.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from ray import serve

from pretextlab.evaluate.features import default_device, preprocess


def _count_images(items: list[torch.Tensor]) -> int:
    return sum(int(x.shape[0]) for x in items)


@serve.deployment(name="encoder", max_ongoing_requests=64)
class EncoderReplica:
    """Hold one encoder (from the registry, sha256-checked) and embed preprocessed batches."""

    def __init__(self, registry: str, ref_id: str, max_batch_images: int = 64, batch_wait_timeout_s: float = 0.005,
                 torch_threads: int | None = None, cache_dir: str | None = None, device: str | None = None):
        from pretextlab.registry import EncoderRegistry

        threads = torch_threads or 1
        torch.set_num_threads(threads)
        self.threads = threads
        self.device = default_device(device)
        reg = EncoderRegistry(registry, cache_dir=cache_dir)
        model, self.card, self.ref = reg.load(ref_id, map_location="cpu")
        self.model = model.eval().to(self.device)
        self.max_batch_images = max_batch_images
        self._embed_batch.set_max_batch_size(max_batch_images)
        self._embed_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="forward")
        size = int(self.card.img_size)
        self._forward(torch.zeros(2, int(self.card.in_chans), size, size))  # warm up kernels before traffic

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.device.type == "cuda"):
            out = self.model(x.to(self.device, non_blocking=True))
        return out.float().cpu().numpy()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=_count_images)
    async def _embed_batch(self, batch: list[torch.Tensor]) -> list[np.ndarray]:
        x = batch[0] if len(batch) == 1 else torch.cat(batch)
        out = await asyncio.get_running_loop().run_in_executor(self._pool, self._forward, x)
        bounds = np.cumsum([0] + [int(b.shape[0]) for b in batch])
        return [out[bounds[i]:bounds[i + 1]] for i in range(len(batch))]

    async def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 (N, D)."""
        with warnings.catch_warnings():  # arrays from Ray are read-only; preprocess only reads them
            warnings.simplefilter("ignore", UserWarning)
            x = preprocess(images, self.card)
        step = self.max_batch_images
        parts = await asyncio.gather(*(self._embed_batch(x[i:i + step]) for i in range(0, len(x), step)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def info(self) -> dict[str, Any]:
        """Identity of this replica: the encoder it serves, its process and its device."""
        return {"id": self.ref.id, "pid": os.getpid(), "device": str(self.device), "threads": self.threads}

    def ready(self) -> bool:
        return True
