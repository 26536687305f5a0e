"""The stream object every pipeline stage is: push / end_input / aclose, and `async for` over outputs.

Input is a bounded queue with a stated overflow policy; the end of input is seen after the media
queued before it. (There is no flush: no stage keeps state across frames that a control message
would have to reset; docs/architecture.md.) Items may be processed concurrently (`concurrency` > 1) and still come out in
input order. The stage owns its tasks and cancels and awaits them in `aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class Overflow(enum.Enum):
    """What push() does when the input queue is full."""

    DROP_OLDEST = "drop_oldest"  # video: keep the newest, count the drop
    # (Audio never passes through a Stage: speech is timed on the session clock by speech_source.py.)


class _End:
    pass


_END = _End()


class Stage(ABC, Generic[In, Out]):
    def __init__(
        self,
        name: str,
        *,
        maxsize: int,
        overflow: Overflow,
        concurrency: int = 1,
        on_drop: Callable[[In], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if maxsize < 1 or concurrency < 1:
            raise ValueError(f"{name}: maxsize and concurrency must be >= 1, got {maxsize}, {concurrency}")
        self.name = name
        self._maxsize = maxsize
        self._overflow = overflow
        self._concurrency = concurrency
        self._on_drop = on_drop
        self._on_depth = on_depth
        self._media: deque[In] = deque()
        self._ended = False
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: asyncio.Queue[asyncio.Task[Out | None] | _End] = asyncio.Queue()
        self._outputs: asyncio.Queue[Out | _End] = asyncio.Queue(maxsize=max(2, concurrency))
        self._tasks: set[asyncio.Task] = set()
        self._worker = asyncio.create_task(self._feed(), name=f"{name}-feed")
        self._emitter = asyncio.create_task(self._emit(), name=f"{name}-emit")
        self.dropped = 0

    # -- input side
    def push(self, item: In) -> None:
        if self._ended:
            raise RuntimeError(f"{self.name}: push after end_input")
        if len(self._media) >= self._maxsize:
            old = self._media.popleft()
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(old)
        self._media.append(item)
        self._depth_changed()
        self._wake.set()

    def end_input(self) -> None:
        self._ended = True
        self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._media)

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._media))

    # -- output side
    def __aiter__(self) -> Stage[In, Out]:
        return self

    async def __anext__(self) -> Out:
        item = await self._outputs.get()
        if isinstance(item, _End):
            await self._outputs.put(item)  # later readers see the end too
            raise StopAsyncIteration
        return item

    # -- the work
    @abstractmethod
    async def process(self, item: In) -> Out | None:
        """Turn one input into one output (None: nothing to emit)."""

    async def _feed(self) -> None:
        while True:
            if self._media:
                await self._slots.acquire()
                item = self._media.popleft()
                self._depth_changed()
                task = asyncio.create_task(self._run(item), name=f"{self.name}-item")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                await self._in_flight.put(task)
                continue
            if self._ended:
                await self._in_flight.put(_END)
                return
            self._wake.clear()
            await self._wake.wait()

    async def _run(self, item: In) -> Out | None:
        return await self.process(item)

    async def _emit(self) -> None:
        while True:
            task = await self._in_flight.get()
            if isinstance(task, _End):
                await self._outputs.put(_END)
                return
            # The slot is given back only once the result is handed on, so a consumer that stops
            # reading stops the stage (at most `concurrency` items in flight).
            try:
                result = await task
                if result is not None:
                    await self._outputs.put(result)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
            except Exception:
                logger.exception("%s: an item failed; it is dropped", self.name)
            finally:
                self._slots.release()

    async def aclose(self) -> None:
        """Cancel the stage's tasks and wait for them to finish."""
        tasks = [self._worker, self._emitter, *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
