"""One media clock per session and the pacing of its output: video and audio leave with the same delay.

A frame captured at clock pts is sent at wall(pts + delay), and so is the speech sample at
position pts; a frame not ready by then is dropped and counted (a late frame is never queued).
The delay follows a target (streaming/delay.py) in 20 ms steps taken only across silence: a step
up sends 20 ms of silence once more, a step down leaves out 20 ms of silence, so the outgoing
audio stays continuous and no speech sample is lost or repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from lipsync.streaming.frames import CLOCK_RATE, OutputFrame
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.speech_source import SpeechTimeline

logger = logging.getLogger(__name__)

AUDIO_FRAME = CLOCK_RATE // 50  # 20 ms per outgoing audio frame


class MediaClock:
    """Session time in 16 kHz samples since the clock was made; the wall clock is time.monotonic()."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self.t0 = monotonic()

    def now(self) -> int:
        return int((self.monotonic() - self.t0) * CLOCK_RATE)

    def wall(self, pts: int) -> float:
        return self.t0 + pts / CLOCK_RATE

    async def sleep_until(self, wall: float) -> None:
        delay = wall - self.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class AvSynchronizer:
    """Holds finished video frames until their send time and cuts the delayed audio to match.

    The video queue keeps at most `max_video` frames (the oldest is dropped and counted when a
    stalled consumer lets it fill); frames that come out later than half a frame period after
    their send time are dropped as late. Audio is never dropped: a missing sample is played as
    silence and counted as an underrun.

    `target()` (samples), when given, is where the delay should be; the delay moves toward it one
    audio frame at a time, at an audio frame that is silence, and only while it is at least one
    audio frame away. `delay_changes` counts the steps taken.
    """

    def __init__(
        self,
        clock: MediaClock,
        timeline: SpeechTimeline,
        *,
        delay: int,
        fps: float,
        observer: GatewayObserver,
        session_id: str,
        max_video: int = 32,
        target: Callable[[], int] | None = None,
    ) -> None:
        self.clock = clock
        self.delay = delay
        self._target = target
        self.delay_changes = 0
        self._timeline = timeline
        self._period = 1.0 / fps
        self._observer = observer
        self._session = session_id
        self._video: deque[OutputFrame] = deque()
        self._max_video = max_video
        self._video_ready = asyncio.Event()
        self._audio_pos: int | None = None

    def push_video(self, frame: OutputFrame) -> None:
        if len(self._video) >= self._max_video:
            self._video.popleft()
            self._observer.dropped(self._session, "sync_queue_full")
        self._video.append(frame)
        self._observer.queue_depth(self._session, "sync_video", len(self._video))
        self._video_ready.set()

    async def next_video(self) -> OutputFrame:
        """The next frame to send, returned at its send time."""
        return (await self.next_video_out())[0]

    async def next_video_out(self) -> tuple[OutputFrame, int]:
        """The next frame to send and its position in the outgoing stream (clock pts + the delay it
        left with), returned at its send time."""
        while True:
            while not self._video:
                self._video_ready.clear()
                await self._video_ready.wait()
            frame = self._video.popleft()
            self._observer.queue_depth(self._session, "sync_video", len(self._video))
            # The delay may take a step while the frame waits: it leaves by the delay in force when it is due.
            while (due := self.clock.wall(frame.pts + self.delay)) > self.clock.monotonic():
                await self.clock.sleep_until(due)
            delay = self.delay
            if self.clock.monotonic() - due > self._period / 2:
                self._observer.dropped(self._session, "late")
                logger.debug("late frame %d dropped", frame.video.index, extra={"session_id": self._session})
                continue
            sent = self.clock.monotonic()
            self._observer.stage(self._session, "added_delay", sent - frame.video.arrived)
            self._observer.frame_sent(self._session, frame.outcome, sent)
            return frame, frame.pts + delay

    async def next_audio(self) -> tuple[np.ndarray, int]:
        """The next 20 ms of delayed speech (float32, 16 kHz) and its position in the outgoing stream
        (clock position + delay: consecutive calls give consecutive positions), at its send time.

        Clock position p is sent at wall(p + delay). If the consumer fell more than 100 ms behind
        (a stalled loop), it skips ahead to the present instead of sending stale audio.
        """
        now_pos = self.clock.now() - self.delay
        if self._audio_pos is None or now_pos - self._audio_pos > CLOCK_RATE // 10:
            if self._audio_pos is not None:
                logger.warning(
                    "audio output fell behind by %d ms; skipping ahead",
                    (now_pos - self._audio_pos) // 16,
                    extra={"session_id": self._session},
                )
            self._audio_pos = now_pos - now_pos % AUDIO_FRAME
        pos = self._audio_pos
        out_pos = pos + self.delay
        step = self._delay_step(pos)
        if step > 0:  # this slot plays silence; the same clock position is sent next, one frame later
            self.delay += step
            await self.clock.sleep_until(self.clock.wall(out_pos))
            return np.zeros(AUDIO_FRAME, np.float32), out_pos
        if step < 0:  # the silent frame at pos is left out; the next one takes its slot
            self.delay += step
            pos = self._audio_pos = pos + AUDIO_FRAME
        self._audio_pos += AUDIO_FRAME
        await self.clock.sleep_until(self.clock.wall(out_pos))
        samples, complete = self._timeline.read(pos, AUDIO_FRAME)
        if not complete and pos >= 0 and self._timeline.position > 0:  # before any speech: not a gap
            self._observer.audio_underrun(self._session)
        return samples, out_pos

    def _delay_step(self, pos: int) -> int:
        """+-AUDIO_FRAME when the delay should move toward its target and the audio at pos allows it, else 0."""
        if self._target is None:
            return 0
        gap = self._target() - self.delay
        if abs(gap) < AUDIO_FRAME:
            return 0
        # Silence around the frame that is repeated or left out (a frame either side: the VAD's 20 ms
        # frames need not line up with ours), or no audio there at all (it would play as a gap anyway).
        silent = self._timeline.speech_in(max(pos - AUDIO_FRAME, 0), pos + 2 * AUDIO_FRAME) is False
        if not (silent or self._timeline.position <= pos):
            return 0
        self.delay_changes += 1
        return AUDIO_FRAME if gap > 0 else -AUDIO_FRAME
