"""The stage stream object: bounded input with its overflow policy, control before media, order, ownership of tasks."""

from __future__ import annotations

import asyncio

import pytest

from lipsync.streaming.stream import Overflow, Stage

pytestmark = pytest.mark.unit


class Gated(Stage[int, int]):
    """Doubles items; each waits until the test opens the gate (or for its own delay)."""

    def __init__(self, *, delays: dict[int, float] | None = None, **kwargs) -> None:
        super().__init__("gated", **kwargs)
        self.gate = asyncio.Event()
        self.delays = delays or {}
        self.started: list[int] = []
        self.cancelled = 0

    async def process(self, item: int) -> int:
        self.started.append(item)
        try:
            if item in self.delays:
                await asyncio.sleep(self.delays[item])
            else:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return 2 * item


async def collect(stage: Stage) -> list:
    return [item async for item in stage]


async def test_drop_oldest_keeps_the_newest_and_counts() -> None:
    dropped = []
    stage = Gated(maxsize=2, overflow=Overflow.DROP_OLDEST, on_drop=dropped.append)
    stage.push(1)
    await asyncio.sleep(0.01)  # 1 is now in flight
    for item in (2, 3, 4, 5):
        stage.push(item)
    assert dropped == [2, 3] and stage.dropped == 2 and stage.depth == 2
    stage.gate.set()
    stage.end_input()
    assert await asyncio.wait_for(collect(stage), 2) == [2, 8, 10]
    await stage.aclose()


async def test_concurrent_items_come_out_in_input_order() -> None:
    delays = {1: 0.15, 2: 0.10, 3: 0.05, 4: 0.0}
    stage = Gated(maxsize=8, overflow=Overflow.DROP_OLDEST, concurrency=4, delays=delays)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for item in delays:
        stage.push(item)
    stage.end_input()
    assert await asyncio.wait_for(collect(stage), 2) == [2, 4, 6, 8]
    assert loop.time() - start < 0.25  # they ran side by side, not one after another (0.30 s)
    await stage.aclose()


async def test_aclose_cancels_and_awaits_in_flight_work() -> None:
    stage = Gated(maxsize=4, overflow=Overflow.DROP_OLDEST, concurrency=2)
    stage.push(1)
    stage.push(2)
    await asyncio.sleep(0.01)
    await stage.aclose()
    assert stage.cancelled == 2
    assert all(task.done() for task in asyncio.all_tasks() if task.get_name().startswith("gated"))


async def test_push_after_end_input_is_an_error() -> None:
    stage = Gated(maxsize=1, overflow=Overflow.DROP_OLDEST)
    stage.end_input()
    with pytest.raises(RuntimeError, match="after end_input"):
        stage.push(1)
    assert await asyncio.wait_for(collect(stage), 1) == []
    await stage.aclose()
