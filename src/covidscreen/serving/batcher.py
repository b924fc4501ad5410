"""Dynamic batching: images of requests that arrive together go through the model in one forward pass.

Admission is bounded: :meth:`MicroBatcher.reserve` admits a request's images only while fewer than ``max_queue``
are in the system (being decoded, waiting, or in a forward pass) and raises :class:`QueueFull` otherwise, so that
overload is answered with 503 instead of growing a queue until memory runs out. A forward pass waits at most
``max_wait_s`` for more images, and only while admitted images are still being decoded: a lone request is not
delayed. The model runs in one worker thread, off the event loop; everything that touches the model (explanations
too) goes through :meth:`run_exclusive` on that thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class QueueFull(Exception):
    """More images than the service admits at once; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MicroBatcher:
    """Collect single images into batches for ``fn(batch (B, S, S) uint8) -> (B, C) probabilities``."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch: int = 16, max_wait_s: float = 0.01,
                 max_queue: int = 64) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.admitted = 0  # images reserved and not yet answered
        self.decoding = 0  # reserved, not yet submitted (their requests are still decoding them)
        self.batches = 0
        self.images = 0
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidscreen-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._worker(), name="covidscreen-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True)

    # -- admission -------------------------------------------------------------------------------------------------
    def reserve(self, n: int) -> None:
        """Admit ``n`` images (all or none) or raise QueueFull."""
        if self.admitted + n > self.max_queue:
            raise QueueFull(f"the service is at capacity ({self.admitted} images in progress, at most "
                            f"{self.max_queue}); retry shortly")
        self.admitted += n
        self.decoding += n

    def cancel(self, n: int = 1) -> None:
        """Give back reservations of images that will not be submitted (they could not be read)."""
        self.admitted -= n
        self.decoding -= n
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- work ------------------------------------------------------------------------------------------------------
    async def submit(self, image: np.ndarray) -> np.ndarray:
        """Probabilities of one reserved ``(S, S)`` image."""
        assert self._queue is not None, "MicroBatcher.start() was not awaited"
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.decoding -= 1
        await self._queue.put((image, fut))
        self._poke()
        try:
            return await fut
        finally:
            self.admitted -= 1

    async def run_exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread (between forward passes)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _worker(self) -> None:
        assert self._queue is not None and self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if self.decoding <= 0 or left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            images = np.stack([img for img, _ in batch])
            try:
                probs = await loop.run_in_executor(self._executor, self.fn, images)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, the worker keeps serving
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            for (_, fut), p in zip(batch, probs):
                if not fut.done():
                    fut.set_result(p)
