"""The measured delay (streaming/delay.py) and how the A/V synchroniser follows it, on a virtual clock:
over a 60 s session whose compute time changes twice, D moves in 20 ms steps taken in silence, the
outgoing audio stays continuous, no speech sample is lost or repeated, and every video frame leaves
within one frame of the audio captured with it."""

from __future__ import annotations

import asyncio
import heapq

import numpy as np
import pytest

from lipsync.streaming.av_sync import AUDIO_FRAME, AvSynchronizer, MediaClock
from lipsync.streaming.delay import ArrivalJitter, ComputeBudget, SessionDelay
from lipsync.streaming.frames import CLOCK_RATE, AudioChunk, OutputFrame, VideoFrame
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.speech_source import SpeechTimeline
from lipsync.streaming.vad import VoiceActivity

pytestmark = pytest.mark.unit

FRAME = CLOCK_RATE // 25  # one video frame, 40 ms
MS = CLOCK_RATE // 1000


def test_the_budget_follows_the_p99_within_its_floor_and_ceiling() -> None:
    budget = ComputeBudget(30, 150)
    assert budget.ms == 150  # nothing timed yet: the safe side
    for _ in range(200):
        budget.observe(0.010)
    assert budget.ms == 30  # 10 + 10 = 20 ms, held at the floor
    for _ in range(200):
        budget.observe(0.060)
    assert budget.ms == pytest.approx(60 + 10)
    for _ in range(500):
        budget.observe(0.400)
    assert budget.ms == 150
    with pytest.raises(ValueError, match="floor 200, ceiling 150"):
        ComputeBudget(200, 150)
    fixed = ComputeBudget(150, 150)  # what --adaptive_budget false makes
    fixed.observe(0.01)
    assert fixed.ms == 150


def test_the_delay_parts_of_live_and_pushed_speech() -> None:
    budget = ComputeBudget(30, 150)
    jitter = ArrivalJitter()
    live = SessionDelay(budget, lookahead_ms=75, input_base_ms=100, live_input=True, jitter=jitter)
    pushed = SessionDelay(budget, lookahead_ms=75, input_base_ms=100, live_input=False)
    assert live.target_ms() == 75 + 100 + 150 and pushed.target_ms() == 150
    for late in [0] * 90 + [30 * MS] * 10:  # one packet in ten arrives 30 ms late
        jitter.observe(late, CLOCK_RATE)
    assert live.parts().input_hold_ms == pytest.approx(130)
    assert pushed.parts().input_hold_ms == 0


class SteppedClock(MediaClock):
    """Virtual time shared by several tasks: each sleeper wakes in time order, and time jumps to the
    earliest wake-up once every task has run until it waits."""

    def __init__(self) -> None:
        self.t = 1000.0
        super().__init__(lambda: self.t)
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._woken = 0

    async def sleep_until(self, wall: float) -> None:
        if wall <= self.t:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        self._woken += 1
        heapq.heappush(self._sleepers, (wall, self._woken, future))
        await future

    async def run_until(self, end: float) -> None:
        while self.t < end:
            for _ in range(20):  # every task runs until it waits
                await asyncio.sleep(0)
            wall, _, future = heapq.heappop(self._sleepers)
            self.t = max(self.t, wall)
            future.set_result(None)


class ScheduledSpeech(VoiceActivity):
    """A VAD that knows the script (`silent(position)`) instead of listening."""

    def __init__(self, silent) -> None:
        super().__init__()
        self._silent = silent

    def push(self, samples: np.ndarray) -> None:
        pass

    @property
    def decided_until(self) -> int:
        return 1 << 40

    def speech_in(self, start: int, end: int) -> bool | None:
        return not all(self._silent(p) for p in range(start, end, 80))


def silent_at(pos: int) -> bool:
    """3 s of speech, then 1 s of pause, repeated."""
    return (pos // CLOCK_RATE) % 4 == 3


def mouth_ms(second: float) -> float:
    """What generating a mouth costs: 20 ms, then 90 ms (say, a second session arrived) from 20 to 40 s."""
    return 90.0 if 20 <= second < 40 else 20.0


def position_of(samples: np.ndarray) -> int | None:
    """The clock position of an audio frame's first sample: the test's audio is (position + 1) / 2^20."""
    return None if not samples.any() else round(float(samples[0]) * (1 << 20)) - 1


async def test_a_changing_budget_moves_the_delay_and_keeps_sound_and_picture_together() -> None:
    seconds = 60
    clock = SteppedClock()
    observer = GatewayObserver()
    observer.session_started("s")
    timeline = SpeechTimeline(ScheduledSpeech(silent_at), keep_s=seconds + 5)
    positions = np.arange(seconds * CLOCK_RATE + CLOCK_RATE, dtype=np.float64)
    await timeline.append(AudioChunk(0, ((positions + 1) / (1 << 20)).astype(np.float32)))
    budget = ComputeBudget(30, 150)
    target = SessionDelay(budget, lookahead_ms=75, input_base_ms=100, live_input=True)

    def target_samples() -> int:
        return round(target.target_ms() * MS)

    sync = AvSynchronizer(
        clock, timeline, delay=target_samples(), fps=25, observer=observer, session_id="s", target=target_samples
    )
    end = clock.wall(seconds * CLOCK_RATE)
    audio: list[tuple[int, np.ndarray]] = []
    video: list[tuple[int, int]] = []
    delays: list[int] = []

    async def produce() -> None:
        # Frame i (captured at i x 40 ms) is ready once its audio is in (look-ahead + input hold) and its mouth made.
        for i in range(seconds * 25):
            pts = i * FRAME
            cost = mouth_ms(pts / CLOCK_RATE)
            await clock.sleep_until(clock.wall(pts + (175 + cost) * MS))
            budget.observe(cost / 1000)
            image = np.zeros((2, 2, 3), np.uint8)
            sync.push_video(OutputFrame(VideoFrame(pts, image, i, clock.wall(pts)), image, "generated"))

    async def send_audio() -> None:
        while True:
            out, samples = (await sync.next_audio())[::-1]
            audio.append((out, samples))
            delays.append(sync.delay)

    async def send_video() -> None:
        while True:
            frame, out = await sync.next_video_out()
            video.append((out, frame.pts))

    tasks = [asyncio.create_task(job()) for job in (produce, send_audio, send_video)]
    try:
        await clock.run_until(end)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # The outgoing audio is continuous: one 20 ms frame after another, no gap, no overlap.
    outs = np.array([out for out, _ in audio])
    assert (np.diff(outs) == AUDIO_FRAME).all()
    # D followed the budget: down from the 325 ms it starts with to 205 ms (budget at its 30 ms floor),
    # up when mouths cost 90 ms (90 + 10 = 100 ms: 275 ms, steps of 20 ms: 265 or 285), down again.
    delays_ms = np.array(delays) / MS
    at = {s: delays_ms[np.searchsorted(outs, s * CLOCK_RATE + delays[0])] for s in (1, 10, 35, 55)}
    assert at[1] == 325 and at[10] == pytest.approx(205, abs=20)
    assert 265 <= at[35] <= 285 and at[55] == pytest.approx(205, abs=20)
    assert sync.delay_changes >= 12
    # Each step was taken in silence, and no speech sample was lost or repeated.
    sent = [(out, position_of(samples)) for out, samples in audio]
    played = [p for _, p in sent if p is not None]
    steps = [(a, b) for a, b in zip(played, played[1:], strict=False) if b - a != AUDIO_FRAME]
    assert steps, "the delay never moved"
    for before, after in steps:
        assert after - before == 2 * AUDIO_FRAME, (before, after)  # one silent frame left out
        assert silent_at(before + AUDIO_FRAME), f"a frame of speech at {before + AUDIO_FRAME} was left out"
    for i, (_, p) in enumerate(sent[1:-1], start=1):  # silence played in between: around it, consecutive frames
        if p is None and sent[i - 1][1] is not None:
            after = next(q for _, q in sent[i:] if q is not None)
            assert after == sent[i - 1][1] + AUDIO_FRAME and silent_at(after), (sent[i - 1][1], after)
    assert len(played) == len(set(played))
    # Every picture left with the sound captured with it, within one frame.
    starts = outs
    offsets = []
    for out, pts in video:
        k = int(np.searchsorted(starts, out, side="right")) - 1
        while sent[k][1] is None:  # an inserted silence: the next frame carries the position
            k += 1
        heard = sent[k][1] + (out - starts[k])
        offsets.append(heard - pts)
    offsets = np.abs(np.array(offsets))
    assert offsets.max() <= FRAME, f"worst A/V offset {offsets.max() / MS:.0f} ms"
    # Every picture made in time left: the only ones too late are those from 20 s, when mouths became slower,
    # to the first pause at 23 s, where D could step up (it never steps in speech). Within a frame of
    # the end some are still on their way.
    late = observer.sessions["s"].drops["late"]
    assert 70 <= late <= 80 and len(video) + late >= seconds * 25 - 10
