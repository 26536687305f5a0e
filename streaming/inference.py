"""One request per video frame to the backend, with a deadline; pass-through when the backend is down.

Triton's dynamic batcher forms batches across frames and sessions, so the gateway never batches
itself. One `FrameInference` serves every session of a gateway and remembers when the backend
was found unavailable: for `retry_s` after that, frames pass through without a request.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from client import contract
from client.backends.base import BackendError, BackendUnavailable, LipSyncBackend
from streaming.metrics import GatewayObserver

logger = logging.getLogger(__name__)


class FrameInference:
    def __init__(self, backend: LipSyncBackend, observer: GatewayObserver, *, timeout_s: float, retry_s: float) -> None:
        self.backend = backend
        self._observer = observer
        self._timeout = timeout_s
        self._retry = retry_s
        self._down_until = 0.0

    async def warm_up(self, max_batch: int = 8, rounds: int = 2) -> None:
        """Send 1..max_batch concurrent requests, so the first live frames meet no cold batch shapes.

        The server's dynamic batcher turns n concurrent requests into a batch of (about) n, and an
        inference runtime plans each new batch shape on first sight (hundreds of ms on a CPU).
        Failures are only logged: a backend that is down now may be up by the first frame.
        """
        mel = np.zeros((1, *contract.MEL_INPUT.shape), np.float32)
        face = np.zeros((1, *contract.FACE_INPUT.shape), np.float32)
        start = time.monotonic()
        failed = 0
        for _ in range(rounds):
            for n in range(1, max_batch + 1):
                results = await asyncio.gather(
                    *(self.backend.infer_async(mel, face) for _ in range(n)), return_exceptions=True
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                if any(isinstance(e, BackendUnavailable) for e in errors):
                    logger.warning("backend warm-up stopped: %s", errors[0])
                    return
                # A timed-out request still ran on the server, which is what warming is for.
                failed += len(errors)
        logger.info("backend warmed up in %.1f s (%d requests over their deadline)", time.monotonic() - start, failed)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def generate(self, mel: np.ndarray, face: np.ndarray, deadline: float) -> tuple[np.ndarray | None, str]:
        """(generated (3,96,96) float32 or None, outcome) for one frame's (80,16) mel and (6,96,96) face.

        The outcome is "generated", or why not: "backend_unavailable", "timeout", "error".
        """
        if not self.available:
            return None, "backend_unavailable"
        budget = min(self._timeout, deadline - time.monotonic())
        if budget <= 0:
            return None, "timeout"
        try:
            async with asyncio.timeout(budget):
                out = await self.backend.infer_async(mel[None, None].astype(np.float32), face[None].astype(np.float32))
        except TimeoutError:
            logger.debug("inference took over its %.0f ms budget", 1000 * budget)
            self._observer.backend_error("timeout")
            return None, "timeout"
        except BackendUnavailable as exc:
            if self.available:
                logger.warning(
                    "backend %s unavailable (%s); passing frames through for %.1f s",
                    self.backend.name,
                    exc,
                    self._retry,
                )
            self._down_until = time.monotonic() + self._retry
            self._observer.backend_error("unavailable")
            return None, "backend_unavailable"
        except (BackendError, ValueError) as exc:
            logger.warning("inference failed: %s", exc)
            self._observer.backend_error("error")
            return None, "error"
        return out[0], "generated"
