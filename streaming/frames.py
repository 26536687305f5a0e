"""The media frames that flow through a session, all stamped on one clock.

The clock is the session's speech position in samples at 16 kHz (`CLOCK_RATE`): sample 0 is
the session's start, a video frame's `pts` is the clock reading when it was captured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lipsync.client import contract
from lipsync.client.face_crop import CropRegion

CLOCK_RATE = contract.SAMPLE_RATE


def clock_to_seconds(pts: int) -> float:
    return pts / CLOCK_RATE


class SenderClock:
    """One received track's timestamps as seconds since its first frame, by the sender's clock.

    aiortc hands received frames over with the RTP timestamp as pts: 32 bits from a random start,
    wrapping. Unwrapped, it says where a frame sits in the sender's stream however late it came.
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self._ticks = 0

    def seconds(self, pts: int | None, time_base) -> float | None:
        if pts is None or time_base is None:
            return None
        if self._last is not None:
            delta = (int(pts) - self._last) % 2**32
            self._ticks += delta - 2**32 if delta >= 2**31 else delta
        self._last = int(pts)
        return float(self._ticks * time_base)


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """A camera (or presenter) picture: BGR uint8 (h, w, 3), captured at clock `pts`."""

    pts: int
    image: np.ndarray
    index: int  # order of arrival in this session, from 0
    arrived: float  # time.monotonic() when the gateway received it


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """Speech samples, float32 mono at 16 kHz, the first one at clock `pts`."""

    pts: int
    samples: np.ndarray


@dataclass(frozen=True, eq=False)
class FaceFrame:
    """A video frame after face tracking: where the face is and the model's face input, if any."""

    video: VideoFrame
    region: CropRegion | None  # None when no face is in view
    face_input: np.ndarray | None  # (6, 96, 96) float32
    track_s: float  # seconds spent tracking and cropping


@dataclass(frozen=True, eq=False)
class OutputFrame:
    """What the outgoing video track sends for one input frame.

    `outcome` says why it looks the way it does: "generated", or a pass-through reason:
    "silence", "no_face", "no_audio", "backend_unavailable", "overloaded", "timeout", "error".
    """

    video: VideoFrame
    image: np.ndarray
    outcome: str
    stage_s: dict[str, float] = field(default_factory=dict)  # seconds per stage, for this frame

    @property
    def pts(self) -> int:
        return self.video.pts
