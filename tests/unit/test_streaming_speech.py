"""Speech on the session clock: VAD decisions, the timeline, pushed speech and its interrupt."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lipsync.benchmarks.peer import SpeechTrack
from lipsync.streaming.frames import CLOCK_RATE, AudioChunk
from lipsync.streaming.speech_source import (
    RECEIVE_AUDIO_HOLD,
    MicrophoneReader,
    PushSpeech,
    SpeechRefused,
    SpeechTimeline,
)
from lipsync.streaming.vad import VoiceActivity
from tests.unit.test_streaming_session import speech_like

pytestmark = pytest.mark.unit


def test_vad_tells_speech_from_silence_and_quiet_noise() -> None:
    vad = VoiceActivity(3, hangover_ms=0)
    silence = np.zeros(CLOCK_RATE, np.float32)
    hiss = np.random.default_rng(1).normal(0, 0.001, CLOCK_RATE).astype(np.float32)  # -60 dBFS
    vad.push(np.concatenate([silence, speech_like(1.0), hiss]))
    assert vad.decided_until == 3 * CLOCK_RATE
    assert not vad.speech_in(0, CLOCK_RATE)
    assert vad.speech_in(int(1.2 * CLOCK_RATE), int(1.8 * CLOCK_RATE))
    assert not vad.speech_in(int(2.05 * CLOCK_RATE), 3 * CLOCK_RATE)
    assert vad.speech_in(3 * CLOCK_RATE - 10, 3 * CLOCK_RATE + 10) is None  # not decided yet


def test_vad_hangover_keeps_speech_on_briefly() -> None:
    def last_speech(hangover_ms: int) -> float:
        vad = VoiceActivity(3, hangover_ms=hangover_ms)
        vad.push(np.concatenate([speech_like(0.5), np.zeros(CLOCK_RATE // 2, np.float32)]))
        ends = [t for t in range(0, CLOCK_RATE, 320) if vad.speech_in(t, t + 320)]
        return ends[-1] / CLOCK_RATE

    assert last_speech(200) - last_speech(0) == pytest.approx(0.2, abs=0.021)


def test_vad_rejects_frame_lengths_it_cannot_take() -> None:
    with pytest.raises(ValueError, match="got 25"):
        VoiceActivity(frame_ms=25)


async def test_timeline_fills_gaps_reads_back_and_waits() -> None:
    timeline = SpeechTimeline(VoiceActivity(), keep_s=1.0)
    tone = np.linspace(-0.5, 0.5, 800, dtype=np.float32)
    await timeline.append(AudioChunk(400, tone))  # a gap of 400 samples first
    assert timeline.position == 1200
    samples, complete = timeline.read(0, 1200)
    assert complete and not samples[:400].any() and np.array_equal(samples[400:], tone)
    samples, complete = timeline.read(1000, 400)
    assert not complete and not samples[200:].any()
    loop = asyncio.get_running_loop()
    assert not await timeline.wait_for(2000, loop.time() + 0.05)
    waiter = asyncio.create_task(timeline.wait_for(2000, loop.time() + 2))
    await timeline.append(AudioChunk(1200, np.zeros(800, np.float32)))
    assert await waiter
    # More than keep_s later, old samples are gone (zeros, incomplete) and new ones are intact.
    await timeline.append(AudioChunk(2000, np.ones(CLOCK_RATE, np.float32)))
    assert not timeline.read(0, 10)[1]
    assert timeline.read(2000 + CLOCK_RATE - 10, 10)[0].tolist() == [1.0] * 10


async def test_mel_window_waits_for_the_audio_it_reaches_into() -> None:
    timeline = SpeechTimeline(VoiceActivity())
    loop = asyncio.get_running_loop()
    await timeline.append(AudioChunk(0, speech_like(0.2)))
    assert await timeline.mel_window(1600, loop.time() + 0.05) is None  # needs audio up to ~0.33 s
    await timeline.append(AudioChunk(3200, speech_like(0.3)))
    window = await timeline.mel_window(1600, loop.time() + 1)
    assert window.shape == (80, 16)


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


async def run_ticker(push: PushSpeech, clock: Clock, until: int) -> None:
    task = asyncio.create_task(push.run())
    try:
        while clock.now < until:
            clock.now += 320
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_pushed_speech_plays_in_order_from_where_it_lands() -> None:
    timeline = SpeechTimeline(VoiceActivity())
    clock = Clock()
    push = PushSpeech(timeline, clock, lead_s=0.1, tick_s=0.001)
    a = np.full(1600, 0.25, np.float32)
    b = np.full(1600, -0.25, np.float32)
    start_a = await push.push(a, CLOCK_RATE)
    start_b = await push.push(b, CLOCK_RATE)
    assert (start_a, start_b) == (0, 1600)
    await run_ticker(push, clock, 6400)
    samples, _ = timeline.read(0, 4000)
    assert np.array_equal(samples[:1600], a) and np.array_equal(samples[1600:3200], b) and not samples[3200:].any()
    assert timeline.position >= 6400 + 1600  # kept filled `lead` ahead of the clock


async def test_interrupt_drops_queued_speech_and_new_speech_follows_at_once() -> None:
    timeline = SpeechTimeline(VoiceActivity())
    clock = Clock()
    push = PushSpeech(timeline, clock, lead_s=0.0, tick_s=0.001)
    await push.push(np.full(CLOCK_RATE * 5, 0.25, np.float32), CLOCK_RATE)
    await run_ticker(push, clock, 3200)
    assert push.interrupt() == pytest.approx(5 - 3200 / CLOCK_RATE, abs=0.03)
    assert push.queued_s == 0
    start = await push.push(np.full(800, -0.5, np.float32), CLOCK_RATE)
    await run_ticker(push, clock, start + 2000)
    samples, _ = timeline.read(start, 800)
    assert np.array_equal(samples, np.full(800, -0.5, np.float32))
    assert (timeline.read(start - 320, 320)[0] == 0.25).all()


async def test_push_resamples_and_refuses_what_it_cannot_take() -> None:
    push = PushSpeech(SpeechTimeline(VoiceActivity()), Clock(), max_seconds=1.0)
    pcm = (np.sin(np.arange(24_000) / 5) * 8000).astype("<i2").tobytes()
    await push.push_pcm(pcm, 24_000)
    assert push.queued_s == pytest.approx(1.0, abs=0.01)  # 1 s at 24 kHz -> ~1 s at 16 kHz
    with pytest.raises(SpeechRefused, match="queued"):
        await push.push_pcm(pcm, 24_000)
    with pytest.raises(SpeechRefused, match="even number"):
        await push.push_pcm(b"\x00\x01\x02", 16_000)
    with pytest.raises(SpeechRefused, match="8000..96000"):
        await push.push_pcm(b"\x00\x00", 4_000)


class LateFirstFrameTrack(SpeechTrack):
    """Our speech track, with its first frame held up on the way (as the first audio of a call often is)."""

    def __init__(self, speech: np.ndarray, late_s: float) -> None:
        super().__init__(speech)
        self.late_s = late_s
        self.first_due: float | None = None

    async def recv(self):
        frame = await super().recv()
        if self.first_due is None:
            self.first_due = self.started
            await asyncio.sleep(self.late_s)
        return frame


async def test_microphone_is_anchored_on_its_least_delayed_chunk() -> None:
    speech = np.concatenate([np.zeros(CLOCK_RATE // 2), 0.5 * np.ones(CLOCK_RATE // 2)]).astype(np.float32)
    timeline = SpeechTimeline(VoiceActivity())
    loop = asyncio.get_running_loop()
    t0 = loop.time() - 1.0  # the session started a second ago
    track = LateFirstFrameTrack(speech, late_s=0.15)
    reader = MicrophoneReader(track, timeline, lambda: int((loop.time() - t0) * CLOCK_RATE))
    task = asyncio.create_task(reader.run())
    await asyncio.sleep(1.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    samples, _ = timeline.read(0, timeline.position)
    onset = int(np.argmax(samples > 0.25))
    # Read straight from the track, nothing held the audio back, so the stamps come out early by
    # the hold that aiortc's receiver would have added; the late first frame must not shift them.
    expected = (track.first_due - t0) * CLOCK_RATE + CLOCK_RATE // 2 - RECEIVE_AUDIO_HOLD - 320
    assert abs(onset - expected) < 0.03 * CLOCK_RATE, (onset, expected)


class LossyTrack(SpeechTrack):
    """Our speech track with one 20 ms packet lost on the way (its timestamp never arrives)."""

    async def recv(self):
        if self._n == 960 * 10:
            await super().recv()  # sent, then lost
        return await super().recv()


async def test_lost_packets_leave_silence_and_keep_speech_in_place() -> None:
    # A quiet tone for 0.5 s, then a loud one: a packet lost in the first half must not pull the second earlier.
    speech = np.concatenate([np.full(CLOCK_RATE // 2, 0.1), np.full(CLOCK_RATE // 2, 0.5)]).astype(np.float32)
    timeline = SpeechTimeline(VoiceActivity())
    loop = asyncio.get_running_loop()
    t0 = loop.time() - 1.0
    reader = MicrophoneReader(LossyTrack(speech), timeline, lambda: int((loop.time() - t0) * CLOCK_RATE))
    task = asyncio.create_task(reader.run())
    await asyncio.sleep(1.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    samples, _ = timeline.read(0, timeline.position)
    begin, onset = int(np.argmax(samples > 0.05)), int(np.argmax(samples > 0.3))
    assert reader.filled_s == pytest.approx(0.02)
    assert abs(onset - begin - CLOCK_RATE // 2) < 40, onset - begin  # without the fill: 320 samples short
    lost = samples[begin + 10 * 320 + 40 : begin + 11 * 320 - 40]
    assert np.abs(lost).max() < 0.02  # the lost 20 ms is silence


class JitteryTrack(SpeechTrack):
    """Our speech track with every tenth packet (after the first second) held up 60 ms on the way."""

    async def recv(self):
        frame = await super().recv()
        if self._n > 48_000 and (self._n // 960) % 10 == 0:
            await asyncio.sleep(0.06)
        return frame


async def test_the_microphone_measures_how_late_its_audio_arrives() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time() - 1.0  # the session started a second ago
    now = lambda: int((loop.time() - t0) * CLOCK_RATE)  # noqa: E731
    steady, jittery = (
        MicrophoneReader(track, SpeechTimeline(VoiceActivity()), now)
        for track in (
            SpeechTrack(np.zeros(3 * CLOCK_RATE, np.float32)),
            JitteryTrack(np.zeros(3 * CLOCK_RATE, np.float32)),
        )
    )
    tasks = [asyncio.create_task(reader.run()) for reader in (steady, jittery)]
    await asyncio.sleep(2.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Paced in real time, the steady track's packets land where they belong (a few ms of scheduling);
    # the held-up ones arrive up to 60 ms late, and the packets queued behind each of them too.
    assert steady.jitter.ms < 15, steady.jitter.ms
    assert 30 < jittery.jitter.ms <= 80, jittery.jitter.ms
