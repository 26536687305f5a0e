"""One request per frame with a deadline, and admission control when the backend falls behind."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from lipsync.client.backends.base import LipSyncBackend
from lipsync.streaming.inference import FrameInference
from lipsync.streaming.metrics import GatewayObserver

pytestmark = pytest.mark.unit

MEL = np.zeros((80, 16), np.float32)
FACE = np.zeros((6, 96, 96), np.float32)


class DelayedBackend(LipSyncBackend):
    """Answers after `delay` seconds (an asyncio sleep: a backend that is busy elsewhere)."""

    name = "delayed"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def _infer_batch(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return np.full((len(mel), 3, 96, 96), 0.5, np.float32)

    async def infer_async(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        await asyncio.sleep(self.delay)
        return self._infer_batch(mel, faces)


async def burst(inference: FrameInference, n: int, budget_s: float) -> list[str]:
    deadline = time.monotonic() + budget_s
    results = await asyncio.gather(*(inference.generate(MEL, FACE, deadline) for _ in range(n)))
    return [outcome for _, outcome in results]


async def test_answers_in_time_are_generated() -> None:
    inference = FrameInference(DelayedBackend(0.0), GatewayObserver(), timeout_s=1.0, retry_s=1.0, max_in_flight=4)
    out, outcome = await inference.generate(MEL, FACE, time.monotonic() + 1.0)
    assert outcome == "generated" and out.shape == (3, 96, 96)
    assert await burst(inference, 4, 1.0) == ["generated"] * 4


async def test_a_backend_that_falls_behind_gets_fewer_requests_and_recovers() -> None:
    backend = DelayedBackend(0.2)
    inference = FrameInference(backend, GatewayObserver(), timeout_s=1.0, retry_s=1.0, max_in_flight=8)
    assert await burst(inference, 8, 0.05) == ["timeout"] * 8
    assert inference.limit == 1.0  # cut by 30 % per late answer, never below one
    # Only one frame at a time goes out now; frames that cannot get the slot before their own
    # deadline pass through by then, instead of queueing past it.
    backend.delay = 0.1
    now = time.monotonic()
    long = asyncio.create_task(inference.generate(MEL, FACE, now + 1.0))
    await asyncio.sleep(0.01)
    start = time.monotonic()
    assert await burst(inference, 3, 0.05) == ["overloaded"] * 3
    assert time.monotonic() - start < 0.09
    assert (await long)[1] == "generated"
    backend.delay = 0.01
    for _ in range(20):  # answers in time raise the limit again, about one per round
        await burst(inference, 1, 1.0)
    assert inference.limit > 5
    assert (await burst(inference, 4, 1.0)).count("generated") == 4


async def test_no_time_left_means_no_request() -> None:
    backend = DelayedBackend(0.0)
    inference = FrameInference(backend, GatewayObserver(), timeout_s=1.0, retry_s=1.0)
    assert await burst(inference, 1, -0.01) == ["timeout"]
    assert inference.limit == inference._max_in_flight  # nothing was sent, nothing learnt
