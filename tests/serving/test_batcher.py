"""The micro-batcher: batches form from concurrent requests, admission is bounded, failures reach every waiter."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from covidscreen.serving.batcher import MicroBatcher, QueueFull


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))  # a liveness guard, not a speed requirement


def model(sizes: list[int], gate: threading.Event | None = None):
    def fn(batch: np.ndarray) -> np.ndarray:
        if gate is not None:
            gate.wait(30)
        sizes.append(len(batch))
        return np.stack([np.full(3, img.mean()) for img in batch])
    return fn


async def requests(b: MicroBatcher, values: list[int]) -> list[np.ndarray]:
    b.reserve(len(values))
    return await asyncio.gather(*(b.submit(np.full((4, 4), v, np.uint8)) for v in values))


def test_concurrent_images_share_forward_passes_and_get_their_own_answers():
    sizes: list[int] = []

    async def main():
        b = MicroBatcher(model(sizes), max_batch=4, max_wait_s=5, max_queue=64)
        await b.start()
        out = await requests(b, list(range(10)))
        await b.stop()
        return b, out

    b, out = run(main())
    assert [o[0] for o in out] == list(range(10))  # each request gets its own row back
    assert sum(sizes) == 10 and max(sizes) <= 4 and len(sizes) < 10
    assert b.admitted == 0 and b.decoding == 0 and b.images == 10


def test_a_lone_image_is_not_held_back_waiting_for_company():
    sizes: list[int] = []

    async def main():
        b = MicroBatcher(model(sizes), max_batch=16, max_wait_s=3600, max_queue=8)
        await b.start()
        out = await requests(b, [7])  # nothing else admitted: dispatched at once, not after an hour
        await b.stop()
        return out

    assert run(main())[0][0] == 7 and sizes == [1]


def test_admission_is_bounded_and_freed_again():
    gate = threading.Event()
    sizes: list[int] = []

    async def main():
        b = MicroBatcher(model(sizes, gate), max_batch=2, max_wait_s=0, max_queue=3)
        await b.start()
        first = asyncio.create_task(requests(b, [1, 2, 3]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="capacity"):
            b.reserve(1)
        gate.set()
        await first
        b.reserve(3)  # all answered: room again
        b.cancel(3)
        assert b.admitted == 0
        await b.stop()

    run(main())


def test_a_failing_forward_pass_fails_its_requests_and_the_worker_goes_on():
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return np.zeros((len(batch), 3))

    async def main():
        b = MicroBatcher(flaky, max_batch=8, max_wait_s=1, max_queue=8)
        await b.start()
        with pytest.raises(RuntimeError, match="out of memory"):
            await requests(b, [1, 2])
        ok = await requests(b, [3])
        await b.stop()
        return ok, b

    ok, b = run(main())
    assert ok[0].shape == (3,) and b.admitted == 0


def test_run_exclusive_runs_on_the_model_thread():
    async def main():
        b = MicroBatcher(lambda x: x, max_batch=1)
        await b.start()
        name = await b.run_exclusive(lambda: threading.current_thread().name)
        await b.stop()
        return name

    assert run(main()).startswith("covidscreen-model")
