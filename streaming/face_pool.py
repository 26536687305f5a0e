"""Face processors handed from session to session: the detector's and the face mesh's graphs are built
once per slot, not once per session.

Building them costs about a second of CPU and, in a gateway that opens and closes sessions all day,
memory that is never quite given back (MediaPipe's graphs allocate in native code: 0.17 MB kept per
build-and-close in a probe, none per reuse). A session takes a processor with `acquire`, and its
closing hands it back with `release`, which clears everything the last face left (track, smoothing,
mouth shape, the mesh's own tracking) so the next session starts as if on a new one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lipsync.streaming.session import FaceProcessor

logger = logging.getLogger(__name__)


class FaceProcessorPool:
    """Idle face processors by kind (`still`: a presenter photo, measured once; else a moving video).

    `make(still)` builds a new one; at most `keep` idle ones are kept per kind (the session cap), the
    rest are closed. Thread-safe: sessions release from executor threads.
    """

    def __init__(self, make: Callable[[bool], FaceProcessor], keep: int) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self._make = make
        self._keep = keep
        self._idle: dict[bool, list[FaceProcessor]] = {False: [], True: []}
        self._lock = threading.Lock()
        self._closed = False
        self.built = 0
        self.reused = 0

    def acquire(self, still: bool) -> FaceProcessor:
        with self._lock:
            idle = self._idle[bool(still)]
            if idle:
                self.reused += 1
                return idle.pop()
            self.built += 1
        return self._make(bool(still))

    def release(self, faces: FaceProcessor) -> None:
        """Take a session's processor back (blocking: run it in an executor); closed if not kept."""
        still = bool(faces.compositor.still)
        try:
            faces.recycle()
        except Exception:  # a processor that cannot start over is not handed to anyone
            logger.exception("face processor could not be recycled; closing it")
            faces.close()
            return
        with self._lock:
            keep = not self._closed and len(self._idle[still]) < self._keep
            if keep:
                self._idle[still].append(faces)
        if not keep:
            faces.close()

    def idle(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Close every idle processor; those still in sessions are closed when they come back."""
        with self._lock:
            self._closed = True
            idle = [f for v in self._idle.values() for f in v]
            for v in self._idle.values():
                v.clear()
        for faces in idle:
            faces.close()
