"""Ingress-side continuous batching: decoded requests for one model become one encoder call per batch.

Each hop through Ray Serve costs a fixed amount of CPU per call, so the ingress sends the encoder one
call per *batch*, not per request. ``@serve.batch`` forms batches on a timer even while earlier batches
are still running, which under load gave forwards of 1.4 images on average (benchmarks/serving.py, one
image per request, 8 clients). This batcher forms the next batch only when a call slot is free: while a
call is in flight, requests accumulate, and the next call takes all of them (up to
``max_batch_images``). An idle batcher waits ``batch_wait_timeout_s`` for company before it sends.
The encoder deployment batches again with ``@serve.batch``, merging calls from several ingress replicas.

Requests reach the batcher already decoded and validated, so one bad input never fails a batch.
Calls are retried while a replica is being replaced, within the request timeout.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import numpy as np
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from pretextlab.serving.errors import ApiError, invalid

RETRYABLE = (RayActorError, BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError)


class ModelBatcher:
    """One per served model in each ingress replica: ``await embed(images)``; ``max_in_flight`` calls at once."""

    def __init__(
        self,
        name: str,
        handle: Any,
        max_batch_images: int,
        batch_wait_timeout_s: float,
        max_in_flight: int,
        timeout_s: float,
    ):
        self.name, self.handle, self.timeout_s = name, handle, timeout_s
        self.max_batch_images, self.batch_wait_timeout_s = max_batch_images, batch_wait_timeout_s
        self.max_in_flight = max(1, max_in_flight)
        self._queue: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []

    async def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C), all of one shape -> float32 (N, D); 504 when it takes longer than the timeout."""
        loop = asyncio.get_running_loop()
        if self._wake is None:
            self._wake = asyncio.Event()
            self._workers = [loop.create_task(self._worker()) for _ in range(self.max_in_flight)]
        step = self.max_batch_images
        futures = []
        for i in range(0, len(images), step):
            fut = loop.create_future()
            self._queue.append((images[i : i + step], fut))
            futures.append(fut)
        self._wake.set()
        try:
            outs = await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s)
        except TimeoutError:
            raise ApiError(504, "timeout", f"model {self.name!r} did not answer within {self.timeout_s} s") from None
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        """Queued requests of the first request's image shape, up to max_batch_images (order kept)."""
        batch: list[tuple[np.ndarray, asyncio.Future]] = []
        keep: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        shape, count = None, 0
        while self._queue:
            images, fut = self._queue.popleft()
            if fut.cancelled():
                continue
            if shape is None:
                shape = images.shape[1:]
            if images.shape[1:] == shape and count + len(images) <= self.max_batch_images:
                batch.append((images, fut))
                count += len(images)
            else:
                keep.append((images, fut))
                if count >= self.max_batch_images:
                    break
        keep.extend(self._queue)
        self._queue = keep
        return batch

    async def _worker(self) -> None:
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                if self.batch_wait_timeout_s > 0 and sum(len(a) for a, _ in self._queue) < self.max_batch_images:
                    await asyncio.sleep(self.batch_wait_timeout_s)  # idle: give concurrent requests a moment
            batch = self._take()
            if not batch:
                continue
            try:
                stack = batch[0][0] if len(batch) == 1 else np.concatenate([a for a, _ in batch])
                out = await self._call(stack)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for images, fut in batch:
                if not fut.done():
                    fut.set_result(out[start : start + len(images)])
                start += len(images)

    async def _call(self, images: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        delay = 0.1
        while True:
            try:
                return await self.handle.embed.remote(images)
            except RETRYABLE as exc:
                if loop.time() + delay >= deadline:
                    raise ApiError(
                        503,
                        "unavailable",
                        f"model {self.name!r} is unavailable ({type(exc).__name__}); retry",
                        {"Retry-After": "1"},
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except RayTaskError as exc:
                if isinstance(exc.cause, ValueError):
                    raise invalid(f"model {self.name!r} refused the images: {str(exc.cause)[:300]}") from None
                raise
