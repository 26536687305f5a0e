"""Where a session's speech comes from, placed on the session clock.

`SpeechTimeline` is the master of the clock: it holds the speech samples by position, their
mel spectrogram and the VAD decisions. Two sources write into it: `MicrophoneReader` (the
peer's audio track, live) and `PushSpeech` (PCM pushed over /speech by a TTS or interpreter,
played out in real time; an interrupt flushes what is still queued).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from lipsync.client import contract
from lipsync.client.audio import SILENCE_VALUE
from lipsync.client.streaming_mel import StreamingMel, StreamingResampler
from lipsync.streaming.delay import ArrivalJitter
from lipsync.streaming.frames import CLOCK_RATE, AudioChunk, SenderClock
from lipsync.streaming.vad import VoiceActivity

logger = logging.getLogger(__name__)

SAMPLES_PER_COLUMN = CLOCK_RATE // contract.MEL_FRAMES_PER_SECOND  # 200: one mel column per 12.5 ms
# aiortc's receiver holds each audio frame until 4 more packets have arrived (JitterBuffer
# prefetch=4, 20 ms packets), so a received audio frame was sent about 80 ms before recv()
# returns it. A video frame is held only until the next one starts (session.py), so without
# this correction speech would land ~40 ms late against the picture it was captured with.
RECEIVE_AUDIO_HOLD = 4 * CLOCK_RATE // 50  # part of config.MIC_INPUT_MS


class SpeechTimeline:
    """Speech samples at 16 kHz from clock 0, contiguous; mel and VAD computed off the event loop.

    Written by one source task at a time (`append`); read by the frame pipeline (`wait_for`,
    `speech_in`, `mel_window`) and by the outgoing audio track (`read`). Keeps `keep_s` of
    samples for playback; older ones are forgotten.
    """

    def __init__(self, vad: VoiceActivity, *, keep_s: float = 10.0, history_s: float = 10.0) -> None:
        self._vad = vad
        self._mel = StreamingMel(history_seconds=history_s)
        self._ring = np.zeros(int(keep_s * CLOCK_RATE), np.float32)
        self.position = 0  # samples written so far == the clock position of the next sample
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    def _ingest(self, samples: np.ndarray) -> None:
        # Runs in an executor: the mel STFT and the VAD are the CPU work of the speech path.
        self._mel.push(samples)
        self._vad.push(samples)

    async def append(self, chunk: AudioChunk) -> None:
        """Add samples at chunk.pts; a gap after the current position is filled with silence."""
        async with self._lock:
            if chunk.pts > self.position:
                await self._write(np.zeros(chunk.pts - self.position, np.float32))
            skip = self.position - chunk.pts  # overlap with what is written already is dropped
            if skip < len(chunk.samples):
                await self._write(chunk.samples[max(skip, 0) :])

    async def _write(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, np.float32)
        await asyncio.get_running_loop().run_in_executor(None, self._ingest, samples)
        n, size = len(samples), len(self._ring)
        if n >= size:
            self._ring[:] = np.roll(samples[-size:], self.position + n)
        else:
            start = (self.position) % size
            first = min(n, size - start)
            self._ring[start : start + first] = samples[:first]
            self._ring[: n - first] = samples[first:]
        self.position += n
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, ready: Callable[[], bool], deadline: float) -> bool:
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return ready()
        return True

    async def wait_for(self, position: int, deadline: float) -> bool:
        """Wait until samples up to `position` are written or time.monotonic() reaches deadline."""
        return await self._wait(lambda: self.position >= position, deadline)

    async def mel_window(self, pts: int, deadline: float, mel_offset: int = 0) -> np.ndarray | None:
        """The (80, 16) mel window of a video frame captured at clock pts (docs/latency.md, section 2),
        starting `mel_offset` columns from the frame's own (the served model's alignment), waiting for
        the audio it reaches into; None if that audio is not there by the deadline.

        Columns before the start of the session are silence, as client.audio.mel_windows has them."""
        start = pts // SAMPLES_PER_COLUMN + mel_offset
        before = max(0, -start)  # columns before clock 0
        if start + before < self._mel.oldest_column:
            return None  # older than the kept history: the frame waited far too long
        await self._wait(lambda: self._mel.columns_ready >= start + contract.MEL_WINDOW_FRAMES, deadline)
        if start + before < self._mel.oldest_column:
            return None
        window = self._mel.window(start + before)
        if window is None or not before:
            return window
        silence = np.full((window.shape[0], before), SILENCE_VALUE, dtype=window.dtype)
        return np.concatenate([silence, window[:, : contract.MEL_WINDOW_FRAMES - before]], axis=1)

    def speech_in(self, start: int, end: int) -> bool | None:
        return self._vad.speech_in(start, end)

    def read(self, start: int, n: int) -> tuple[np.ndarray, bool]:
        """Samples [start, start+n) for playback, zeros where unknown; also whether all were there."""
        out = np.zeros(n, np.float32)
        size = len(self._ring)
        lo, hi = max(start, self.position - size, 0), min(start + n, self.position)
        if hi > lo:
            idx = np.arange(lo, hi) % size
            out[lo - start : hi - start] = self._ring[idx]
        return out, hi - lo == n or start + n <= 0


class MicrophoneReader:
    """Reads the peer's audio track into the timeline, stamped by the session clock.

    Each chunk's arrival says when it was sent, give or take how long it was held up on the way
    (never less); its RTP timestamp says where it sits in the sender's stream. The stream is
    anchored on the least held-up of its first `ANCHOR_CHUNKS` chunks (the first audio of a call
    often comes in late) and then placed by the sender's timestamps: a late burst lands where it
    belongs, lost packets leave silence. A gap of more than `max_gap_s` (a muted or restarted
    sender) starts a new anchoring.
    """

    ANCHOR_CHUNKS = 10

    def __init__(
        self,
        track,
        timeline: SpeechTimeline,
        now: Callable[[], int],
        *,
        max_gap_s: float = 2.0,
        jitter: ArrivalJitter | None = None,
    ) -> None:
        self._track = track
        # How late each chunk arrives against its anchored place: part of the session's delay (streaming/delay.py).
        self.jitter = jitter if jitter is not None else ArrivalJitter()
        self._timeline = timeline
        self._now = now
        self._max_gap_s = max_gap_s
        self._resampler: StreamingResampler | None = None
        self._layout = (0, 0)
        self._sender = SenderClock()
        self._fed = 0  # input samples given to the resampler (lost ones as zeros)
        self._first: list[tuple[int, np.ndarray]] | None = []  # (arrival estimate, samples) until anchored
        self.filled_s = 0.0  # seconds of lost packets played as silence

    def _restart(self, layout: tuple[int, int]) -> None:
        self._layout = layout
        self._resampler = StreamingResampler(layout[0], CLOCK_RATE, channels=layout[1])
        self._first = []

    def _feed(self, frame, gap: int) -> np.ndarray:
        # Runs in an executor: resampling is the CPU work of the microphone path.
        out = [self._resampler.push(np.zeros((gap, self._layout[1]), np.float32))] if gap > 0 else []
        out.append(self._resampler.push_frame(frame))
        return np.concatenate(out).astype(np.float32, copy=False)

    async def run(self, on_chunk: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = await self._track.recv()  # aiortc raises MediaStreamError when the track ends
            arrived = self._now()  # before the resampling waits for an executor thread: that is not the network's
            if on_chunk is not None:
                on_chunk()
            layout = (frame.sample_rate, frame.layout.nb_channels)
            at = self._sender.seconds(frame.pts, frame.time_base)
            expected = self._fed if at is None else round(at * frame.sample_rate)
            gap = expected - self._fed
            if layout != self._layout or gap > self._max_gap_s * frame.sample_rate:
                self._restart(layout)
                self._fed, gap = expected, 0
            elif gap < -frame.samples // 2:  # a duplicate or a packet from before: already played
                continue
            gap = max(gap, 0)
            self.filled_s += gap / frame.sample_rate
            samples = await loop.run_in_executor(None, self._feed, frame, gap)
            self._fed += gap + frame.samples
            if not len(samples):
                continue
            sent = self._now() - RECEIVE_AUDIO_HOLD - len(samples)  # where this chunk starts, by arrival
            if self._first is not None:
                self._first.append((sent, samples))
                if len(self._first) >= self.ANCHOR_CHUNKS:
                    await self._anchor()
                continue
            self.jitter.observe(arrived - RECEIVE_AUDIO_HOLD - len(samples) - self._timeline.position, CLOCK_RATE)
            await self._timeline.append(AudioChunk(self._timeline.position, samples))

    async def _anchor(self) -> None:
        offsets, count = [], 0
        for sent, samples in self._first:
            offsets.append(sent - count)
            count += len(samples)
        start = max(min(offsets), self._timeline.position)
        chunks, self._first = self._first, None
        await self._timeline.append(AudioChunk(start, np.concatenate([s for _, s in chunks])))


class SpeechRefused(ValueError):
    """Pushed speech that the session will not take (bad rate, odd byte count); the message says which."""


class SpeechQueueFull(SpeechRefused):
    """More pushed speech than the session may hold ahead of playback."""


class PcmStream:
    """Whole s16le samples out of a byte stream cut anywhere: an odd byte waits for the next piece.

    Both push protocols use it (HTTP chunks and WebSocket messages are cut by the network or the
    sender, not at sample boundaries), so neither drops nor refuses a sample split in two.
    """

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        data = self._carry + bytes(data)
        cut = len(data) - len(data) % 2
        self._carry = data[cut:]
        return data[:cut]

    @property
    def pending_bytes(self) -> int:
        """0 or 1: the half sample still waiting for its other byte."""
        return len(self._carry)


class PushSpeech:
    """Speech pushed as PCM for one session (TTS, interpreter), played into the timeline in real time.

    Samples are resampled to 16 kHz on arrival and queued; a ticker moves them into the timeline
    `lead_s` ahead of the clock (silence when the queue is empty), so pushed speech already in
    hand needs no look-ahead wait. `interrupt()` drops everything still queued: new speech
    replaces old. The queue is bounded by `max_seconds`; pushing past it raises SpeechRefused
    (audio is never dropped silently).
    """

    def __init__(
        self,
        timeline: SpeechTimeline,
        now: Callable[[], int],
        *,
        lead_s: float = 0.2,
        max_seconds: float = 60.0,
        tick_s: float = 0.02,
    ) -> None:
        self._timeline = timeline
        self._now = now
        self._lead = int(lead_s * CLOCK_RATE)
        self._max = int(max_seconds * CLOCK_RATE)
        self._tick = tick_s
        self._queue: list[np.ndarray] = []
        self._queued = 0
        self._resampler: StreamingResampler | None = None
        self._rate = 0
        self._generation = 0  # bumped by interrupt()
        self._written = timeline.position  # clock position up to which speech went into the timeline
        self._lock = asyncio.Lock()
        self.received_s = 0.0

    @property
    def queued_s(self) -> float:
        return self._queued / CLOCK_RATE

    async def push_pcm(self, pcm: bytes, sample_rate: int) -> int:
        """Queue little-endian s16 mono PCM at sample_rate; returns the clock position where it starts."""
        if len(pcm) % 2:
            raise SpeechRefused(f"PCM s16le needs an even number of bytes, got {len(pcm)}")
        return await self.push(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, sample_rate)

    async def push(self, samples: np.ndarray, sample_rate: int) -> int:
        """Queue float samples at sample_rate; returns the clock position where they start playing."""
        if not 8000 <= sample_rate <= 96000:
            raise SpeechRefused(f"sample rate must be in 8000..96000 Hz, got {sample_rate}")
        incoming = len(samples) * CLOCK_RATE // sample_rate
        if self._queued + incoming > self._max:
            raise SpeechQueueFull(f"more than {self._max / CLOCK_RATE:.0f} s of speech queued; wait or interrupt")
        async with self._lock:  # keeps chunks in order while the resampler runs off the loop
            if sample_rate != self._rate or self._resampler is None:
                self._rate = sample_rate
                self._resampler = StreamingResampler(sample_rate, CLOCK_RATE)
            resampler, generation = self._resampler, self._generation
            out = await asyncio.get_running_loop().run_in_executor(
                None, resampler.push, np.asarray(samples, np.float32)
            )
            if generation != self._generation:  # interrupted meanwhile: this chunk is old speech
                return self._written
            out = np.asarray(out, np.float32)
            start = self._written + self._queued
            if len(out):
                self._queue.append(out)
                self._queued += len(out)
            self.received_s += len(samples) / sample_rate
            return start

    def interrupt(self) -> float:
        """Drop queued speech (and the resampler's tail); returns the seconds dropped."""
        dropped = self._queued / CLOCK_RATE
        self._queue.clear()
        self._queued = 0
        self._resampler = None
        self._generation += 1
        return dropped

    def _take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        filled = 0
        while filled < n and self._queue:
            head = self._queue[0]
            k = min(n - filled, len(head))
            out[filled : filled + k] = head[:k]
            filled += k
            if k == len(head):
                self._queue.pop(0)
            else:
                self._queue[0] = head[k:]
        self._queued -= filled
        return out

    async def run(self) -> None:
        """Ticker: keep the timeline filled up to clock + lead."""
        while True:
            n = self._now() + self._lead - self._written
            if n > 0:
                chunk = AudioChunk(self._written, self._take(n))
                self._written += n  # before the await: a push meanwhile must see where queued speech starts
                await self._timeline.append(chunk)
            await asyncio.sleep(self._tick)
