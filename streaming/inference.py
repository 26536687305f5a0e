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

from lipsync.client import contract
from lipsync.client.backends.base import BackendError, BackendTimeout, BackendUnavailable, LipSyncBackend
from lipsync.streaming.metrics import GatewayObserver

logger = logging.getLogger(__name__)


# Consecutive failed requests after which the gateway reports inference down (a dead model process
# behind a server that still says ready shows up as timeouts, one per frame: 0.2 s at 25 fps).
FAILURES_BEFORE_DOWN = 5
# /healthz sends its own request when no request was answered for this long (an idle gateway).
PROBE_AFTER_S = 5.0
# How long past its budget a request may run before it is abandoned from asyncio: a backend ends its
# own requests at the budget; this only guards one that does not.
SAFETY_MARGIN_S = 0.5


class FrameInference:
    """Sends frames to the backend, at most `limit` at a time across all sessions.

    The limit is found by feedback (additive increase, multiplicative decrease, as TCP does): an
    answer in time raises it by about one per round, a late or failed one cuts it by 30 %. A frame
    waits for a free slot only as long as its deadline leaves room for a typical answer; when the
    backend cannot keep up, the frames beyond the limit pass through ("overloaded") and the ones
    sent still come back in time, instead of every request queueing past its deadline.
    """

    def __init__(
        self,
        backend: LipSyncBackend,
        observer: GatewayObserver,
        *,
        timeout_s: float,
        retry_s: float,
        max_in_flight: int = 32,
    ) -> None:
        self.backend = backend
        self._observer = observer
        self._timeout = timeout_s
        self._retry = retry_s
        self._down_until = 0.0
        self._max_in_flight = max_in_flight
        self.limit = float(max_in_flight)
        self.in_flight = 0
        self._slot_freed = asyncio.Event()
        self._service_s = 0.0  # moving average of the time an answer takes
        # Whether inference really answers (a server can report ready while its model process is dead):
        self.last_answer: float | None = None  # time.monotonic() of the latest request answered in time
        self.failures_in_a_row = 0  # timeouts, errors and refusals since then

    @property
    def mel_offset(self) -> int:
        """The served model's audio alignment (contract.lookahead_ms), as its backend read it."""
        return self.backend.mel_offset

    @property
    def lookahead_ms(self) -> float:
        return self.backend.lookahead_ms

    async def warm_up(self, max_batch: int = 8, rounds: int = 2) -> None:
        """Send 1..max_batch concurrent requests, so the first live frames meet no cold batch shapes.

        The server's dynamic batcher turns n concurrent requests into a batch of (about) n, and an
        inference runtime plans each new batch shape on first sight (hundreds of ms on a CPU).
        Failures are only logged: a backend that is down now may be up by the first frame.
        """
        mel = np.zeros(contract.MEL_INPUT.shape, np.float32)
        face = np.zeros(contract.FACE_INPUT.shape, np.float32)
        start = time.monotonic()
        failed = 0
        for _ in range(rounds):
            for n in range(1, max_batch + 1):
                results = await asyncio.gather(
                    *(self.backend.infer_frame(mel, face) for _ in range(n)), return_exceptions=True
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                if len(errors) < len(results):
                    self._answered()
                if any(isinstance(e, BackendUnavailable) for e in errors):
                    self.failures_in_a_row += 1
                    logger.warning("backend warm-up stopped: %s", errors[0])
                    self._down_until = time.monotonic() + self._retry
                    return
                # A timed-out request still ran on the server, which is what warming is for.
                failed += len(errors)
        logger.info("backend warmed up in %.1f s (%d requests over their deadline)", time.monotonic() - start, failed)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    @property
    def answering(self) -> bool:
        """True once a request was answered and fewer than FAILURES_BEFORE_DOWN have failed since."""
        return self.last_answer is not None and self.failures_in_a_row < FAILURES_BEFORE_DOWN

    async def probe(self, timeout_s: float = 2.0) -> bool:
        """One real request with a deadline: what a health check asks when no frame has asked lately."""
        mel = np.zeros(contract.MEL_INPUT.shape, np.float32)
        face = np.zeros(contract.FACE_INPUT.shape, np.float32)
        try:
            async with asyncio.timeout(timeout_s + SAFETY_MARGIN_S):
                await self.backend.infer_frame(mel, face, timeout_s=timeout_s)
        except (TimeoutError, BackendError, ValueError) as exc:
            self.failures_in_a_row += 1
            logger.info("inference probe failed: %s", exc or "no answer in time")
            return False
        self._answered()
        return True

    def _answered(self) -> None:
        self.last_answer = time.monotonic()
        self.failures_in_a_row = 0

    async def generate(self, mel: np.ndarray, face: np.ndarray, deadline: float) -> tuple[np.ndarray | None, str]:
        """(generated (3,96,96) float32 or None, outcome) for one frame's (80,16) mel and (6,96,96) face.

        The outcome is "generated", or why not: "backend_unavailable", "overloaded", "timeout", "error".
        """
        if not self.available:
            return None, "backend_unavailable"
        if deadline <= time.monotonic():
            return None, "timeout"
        if not await self._slot(deadline - self._service_s):
            return None, "overloaded"
        sent = time.monotonic()
        budget = min(self._timeout, deadline - sent)
        self.in_flight += 1
        try:
            # The backend ends the request at the budget itself (Triton: the call's gRPC deadline, since
            # cancelling a grpc.aio call leaks); the outer timeout only guards a backend that does not.
            async with asyncio.timeout(budget + SAFETY_MARGIN_S):
                out = await self.backend.infer_frame(
                    mel[None].astype(np.float32), face.astype(np.float32), timeout_s=budget
                )
        except (TimeoutError, BackendTimeout):
            logger.debug("inference took over its %.0f ms budget", 1000 * budget)
            self._observer.backend_error("timeout")
            self._slower()
            self.failures_in_a_row += 1
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
            self.failures_in_a_row += 1
            return None, "backend_unavailable"
        except (BackendError, ValueError) as exc:
            logger.warning("inference failed: %s", exc)
            self._observer.backend_error("error")
            self._slower()
            self.failures_in_a_row += 1
            return None, "error"
        finally:
            self.in_flight -= 1
            self._slot_freed.set()
        self._answered()
        self._service_s += 0.1 * (time.monotonic() - sent - self._service_s)
        self.limit = min(float(self._max_in_flight), self.limit + 1.0 / self.limit)
        return out, "generated"

    async def _slot(self, until: float) -> bool:
        """Wait for in_flight < limit until `until` (time.monotonic()); False if none came."""
        while self.in_flight >= int(self.limit):
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            self._slot_freed.clear()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), remaining)
            except TimeoutError:
                return self.in_flight < int(self.limit)
        return True

    def _slower(self) -> None:
        self.limit = max(1.0, 0.7 * self.limit)
