"""The model deployment: one registered encoder per deployment, batched across requests with ``@serve.batch``.

Requests arrive decoded and validated (uint8 (N, H, W, C)); each is preprocessed exactly as in training
(``pretextlab.evaluate.features.preprocess``, from the card) *before* it joins a batch, so no input can
fail a batch it shares with others. The batch size counts images, not requests; a call with more
images than one batch is split. The ingress already batches per model (pretextlab.serving.batcher);
here ``@serve.batch`` merges calls from several ingress replicas into one inference-mode forward.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from typing import Any

import numpy as np
import torch
from ray import serve

from pretextlab.evaluate.features import default_device
from pretextlab.models.encoder_io import preprocess
from pretextlab.serving.config import EncoderDeploymentArgs
from pretextlab.storage.frames import working_frame


def _count_images(items: list[torch.Tensor]) -> int:
    return sum(int(x.shape[0]) for x in items)


@serve.deployment(name="encoder", max_ongoing_requests=64)
class EncoderReplica:
    """Hold one encoder (from the registry, sha256-checked) and embed preprocessed batches."""

    def __init__(self, args: EncoderDeploymentArgs):
        from pretextlab.registry import EncoderRegistry

        threads = args.torch_threads or 1
        torch.set_num_threads(threads)
        self.threads = threads
        self.device = default_device(args.device)
        reg = EncoderRegistry(args.registry, cache_dir=args.cache_dir)
        model, self.card, self.ref = reg.load(args.ref_id, map_location="cpu")
        self.model = model.eval().to(self.device)
        self.max_batch_images = args.max_batch_images
        # @serve.batch adds these setters at run time; Ray's annotation of the decorator does not show them
        self._embed_batch.set_max_batch_size(args.max_batch_images)  # type: ignore[attr-defined]
        self._embed_batch.set_batch_wait_timeout_s(args.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.stats = {"forwards": 0, "images": 0, "forward_s": 0.0}
        size = int(self.card.img_size)
        self._forward(torch.zeros(2, int(self.card.in_chans), size, size))  # warm up kernels before traffic

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        t0 = time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"),
        ):
            out = self.model(x.to(self.device, non_blocking=True)).float().cpu().numpy()
        self.stats["forwards"] += 1
        self.stats["images"] += len(x)
        self.stats["forward_s"] += time.perf_counter() - t0
        return out

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, batch_size_fn=_count_images)
    async def _embed_batch(self, batch: list[torch.Tensor]) -> list[np.ndarray]:
        # The forward runs on this loop on purpose: calls that arrive meanwhile wait in Serve's own loop and
        # all join the next batch. (On an executor thread, @serve.batch keeps forming batches on its timer
        # while the forward runs, and they come out tiny.)
        x = batch[0] if len(batch) == 1 else torch.cat(batch)
        out = self._forward(x)
        bounds = np.cumsum([0] + [int(b.shape[0]) for b in batch])
        return [out[bounds[i] : bounds[i + 1]] for i in range(len(batch))]

    async def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 (N, D)."""
        with warnings.catch_warnings():  # arrays from Ray are read-only; preprocess only reads them
            warnings.simplefilter("ignore", UserWarning)
            if self.card.resolution is not None:  # the scale training saw (uploads carry no pixel spacing)
                images = np.stack(
                    [working_frame(img, self.card.resolution, None, self.card.img_size) for img in images]
                )
            x = preprocess(images, self.card)
        step = self.max_batch_images
        parts = await asyncio.gather(*(self._embed_batch(x[i : i + step]) for i in range(0, len(x), step)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def info(self) -> dict[str, Any]:
        """Identity of this replica: the encoder it serves, its process and its device."""
        return {
            "id": self.ref.id,
            "pid": os.getpid(),
            "device": str(self.device),
            "threads": self.threads,
            "stats": dict(self.stats),
        }

    def ready(self) -> bool:
        return True
