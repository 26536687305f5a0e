"""A/V pacing on a virtual clock: video and audio leave at pts + delay; late frames are dropped, gaps counted."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lipsync.streaming.av_sync import AUDIO_FRAME, AvSynchronizer, MediaClock
from lipsync.streaming.frames import CLOCK_RATE, AudioChunk, OutputFrame, VideoFrame
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.speech_source import SpeechTimeline
from lipsync.streaming.vad import VoiceActivity

pytestmark = pytest.mark.unit

DELAY = 5600  # 350 ms
FRAME = CLOCK_RATE // 25


class VirtualClock(MediaClock):
    """Time stands still until someone sleeps; sleeping jumps straight to the wake-up time."""

    def __init__(self) -> None:
        self.t = 1000.0
        super().__init__(lambda: self.t)

    async def sleep_until(self, wall: float) -> None:
        self.t = max(self.t, wall)
        await asyncio.sleep(0)


def frame(index: int, pts: int, clock: VirtualClock) -> OutputFrame:
    image = np.full((4, 4, 3), index, np.uint8)
    return OutputFrame(VideoFrame(pts, image, index, clock.wall(pts)), image, "silence")


@pytest.fixture
def parts():
    clock = VirtualClock()
    observer = GatewayObserver()
    observer.session_started("s")
    timeline = SpeechTimeline(VoiceActivity())
    sync = AvSynchronizer(clock, timeline, delay=DELAY, fps=25, observer=observer, session_id="s")
    return clock, observer, timeline, sync


async def test_video_leaves_at_pts_plus_delay(parts) -> None:
    clock, observer, _, sync = parts
    for i in range(5):
        sync.push_video(frame(i, i * FRAME, clock))
    sent = []
    for _ in range(5):
        out = await sync.next_video()
        sent.append((out.video.index, round((clock.t - clock.t0) * CLOCK_RATE)))
    assert sent == [(i, i * FRAME + DELAY) for i in range(5)]
    summary = observer.sessions["s"].summary()
    assert summary["frames_out"] == 5
    assert summary["stages_ms_p50"]["added_delay"] == pytest.approx(350, abs=0.01)


async def test_late_video_is_dropped_and_counted_not_queued(parts) -> None:
    clock, observer, _, sync = parts
    clock.t = clock.wall(2 * FRAME + DELAY) + 0.001  # frames 0 and 1 are past due by more than half a frame
    for i in range(4):
        sync.push_video(frame(i, i * FRAME, clock))
    out = await sync.next_video()
    assert out.video.index == 2
    assert observer.sessions["s"].drops["late"] == 2


async def test_stalled_consumer_keeps_only_the_newest_frames(parts) -> None:
    clock, observer, _, sync = parts
    for i in range(40):
        sync.push_video(frame(i, i * FRAME, clock))
    assert observer.sessions["s"].drops["sync_queue_full"] == 8
    assert (await sync.next_video()).video.index == 8


async def test_audio_is_the_timeline_delayed_and_gaps_are_counted(parts) -> None:
    clock, observer, timeline, sync = parts
    speech = np.sin(np.arange(CLOCK_RATE) / 7).astype(np.float32)
    await timeline.append(AudioChunk(0, speech))
    clock.t = clock.wall(DELAY)  # the first audio frame asked for at clock == delay: position 0
    positions = []
    for _ in range(60):
        samples, out = await sync.next_audio()
        assert clock.t == pytest.approx(clock.wall(out))  # sent when the outgoing stream reaches it
        pos = out - DELAY
        if pos + AUDIO_FRAME <= CLOCK_RATE:
            np.testing.assert_array_equal(samples, speech[pos : pos + AUDIO_FRAME])
        positions.append(pos)
    assert positions == [i * AUDIO_FRAME for i in range(60)]
    # 1 s of speech was written; frames 50..59 had nothing: silence, counted.
    assert observer.sessions["s"].audio_underruns == 10


async def test_audio_skips_ahead_after_a_stall(parts) -> None:
    clock, _, _, sync = parts
    clock.t = clock.wall(DELAY)
    _, first = await sync.next_audio()
    clock.t += 0.5  # the loop stalled for half a second
    _, after = await sync.next_audio()
    assert after - first > 0.4 * CLOCK_RATE
