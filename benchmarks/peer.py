"""A Python WebRTC peer for the gateway: sends a clip and speech, records what comes back.

Used by the loopback integration tests and by benchmarks/pipeline.py and soak.py; it lives with the
benchmarks, not in the product package streaming/, which it drives from outside. Every sent frame carries
its index as a row of black/white blocks in its top-left corner (`stamp_index`), so each frame
that comes back can be matched with the one that went out, whatever the codec did to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import logging
import time
from dataclasses import dataclass, field

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from lipsync.streaming.frames import CLOCK_RATE
from lipsync.streaming.ice import allow_loopback_candidates, rtc_configuration
from lipsync.streaming.speech_source import RECEIVE_AUDIO_HOLD

logger = logging.getLogger(__name__)

INDEX_BITS = 12
BLOCK = 16  # pixels per side of one bit's block: big enough to survive VP8 at low bitrates


def stamp_index(image: np.ndarray, index: int) -> np.ndarray:
    """A copy of image with `index` written as INDEX_BITS blocks (white = 1) plus a white guard block."""
    out = image.copy()
    for bit in range(INDEX_BITS + 1):
        on = bit == INDEX_BITS or (index >> bit) & 1
        out[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if on else 0
    return out


def read_index(image: np.ndarray) -> int | None:
    """The index stamped by stamp_index, or None if the guard block is not there."""
    inner = slice(BLOCK // 4, BLOCK - BLOCK // 4)
    means = [
        float(image[inner, b * BLOCK + BLOCK // 4 : (b + 1) * BLOCK - BLOCK // 4].mean()) for b in range(INDEX_BITS + 1)
    ]
    if means[INDEX_BITS] < 160:
        return None
    return sum(1 << b for b in range(INDEX_BITS) if means[b] > 128)


class ClipVideoTrack(MediaStreamTrack):
    """Plays BGR frames at `fps` in real time, each stamped with its send index.

    After the last frame it holds that one (`loop=False`) or starts over (`loop=True`); frame i
    shows frames[i] or frames[i % len(frames)], stamped with i either way.
    """

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: float = 25.0, *, loop: bool = False) -> None:
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.loop = loop
        self.sent: dict[int, float] = {}  # index -> time.monotonic() when handed to the encoder
        self._start: float | None = None
        self._i = 0

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        i = self._i
        self._i += 1
        wait = self._start + i / self.fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        n = len(self.frames)
        index = i if self.loop else min(i, n - 1)
        frame = av.VideoFrame.from_ndarray(stamp_index(self.frames[index % n], index), format="bgr24")
        frame.pts = round(i * 90_000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90_000)
        self.sent.setdefault(index, time.monotonic())
        return frame


class SpeechTrack(MediaStreamTrack):
    """Plays float32 16 kHz speech as 20 ms frames of 48 kHz s16 mono, in real time; then silence, or again."""

    kind = "audio"

    def __init__(self, speech: np.ndarray, *, loop: bool = False) -> None:
        super().__init__()
        from lipsync.client.audio import resample

        self.samples = (np.clip(resample(speech, CLOCK_RATE, 48_000), -1, 1) * 32767).astype(np.int16)
        self.loop = loop
        self.started: float | None = None
        self._n = 0

    async def recv(self) -> av.AudioFrame:
        if self.started is None:
            self.started = time.monotonic()
        wait = self.started + self._n / 48_000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        start = self._n % len(self.samples) if self.loop else self._n
        chunk = self.samples[start : start + 960]
        if self.loop and len(chunk) < 960:
            chunk = np.concatenate([chunk, self.samples[: 960 - len(chunk)]])
        chunk = np.pad(chunk, (0, 960 - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, 48_000)
        self._n += 960
        return frame


@dataclass
class Received:
    """What came back: video frames (arrival time, stamped index, picture) and audio (arrival time, 48 kHz mono)."""

    video: list[tuple[float, int | None, np.ndarray]] = field(default_factory=list)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)

    def audio_16k(self) -> tuple[np.ndarray, np.ndarray]:
        """(samples at 16 kHz, arrival time of each sample's 20 ms frame)."""
        if not self.audio:
            return np.zeros(0, np.float32), np.zeros(0)
        samples = np.concatenate([a for _, a in self.audio])[::3]
        times = np.concatenate([np.full(len(a) // 3, t) for t, a in self.audio])
        return samples.astype(np.float32), times


class GatewayClient:
    """One WebRTC session with the gateway from Python; use `async with`."""

    def __init__(
        self, base_url: str, *, token: str | None = None, keep_images: bool = True, loopback: bool = True
    ) -> None:
        if loopback:  # the gateway runs on this host: offer 127.0.0.1 only (streaming/ice.py)
            allow_loopback_candidates()
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.keep_images = keep_images
        self.pc = RTCPeerConnection(rtc_configuration())
        self.received = Received()
        self.session_id: str | None = None
        self.video_track: ClipVideoTrack | None = None
        self.speech_track: SpeechTrack | None = None
        self._tasks: set[asyncio.Task] = set()
        self.connected = asyncio.Event()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def connect(
        self,
        frames: list[np.ndarray] | None,
        speech: np.ndarray | None,
        *,
        fps: float = 25.0,
        speech_mode: str = "microphone",
        mode: str = "camera",
        loop: bool = False,
        avatar: str | None = None,
    ) -> None:
        """Offer to the gateway: the clip as camera (None: receive only), the speech as microphone;
        `avatar` names an enrolled avatar the gateway serves (its model, and its loop as presenter face)."""
        if frames is not None:
            self.video_track = ClipVideoTrack(frames, fps, loop=loop)
            self.pc.addTrack(self.video_track)
        else:
            self.pc.addTransceiver("video", direction="recvonly")
        if speech is not None and speech_mode == "microphone":
            self.speech_track = SpeechTrack(speech, loop=loop)
            self.pc.addTrack(self.speech_track)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:
            task = asyncio.create_task(self._read(track), name=f"client-read-{track.kind}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "speech": speech_mode, "mode": mode}
        if avatar is not None:
            body["avatar"] = avatar
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.base_url}/offer", json=body, headers=self.headers) as resp,
        ):
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer refused with {resp.status}: {answer}")
        self.session_id = answer["session_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    async def _read(self, track) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                arrived = time.monotonic()
                if track.kind == "video":
                    image = await loop.run_in_executor(None, functools.partial(frame.to_ndarray, format="bgr24"))
                    self.received.video.append((arrived, read_index(image), image if self.keep_images else None))
                else:
                    data = frame.to_ndarray().astype(np.float32) / 32768.0
                    mono = data.reshape(-1, frame.layout.nb_channels).mean(axis=1)
                    self.received.audio.append((arrived, mono))

    async def push_speech(self, speech: np.ndarray, rate: int = CLOCK_RATE, *, interrupt: bool = False) -> dict:
        """POST speech (float, `rate` Hz) to the session's push endpoint; returns the server's answer."""
        pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()
        url = f"{self.base_url}/speech/{self.session_id}?rate={rate}" + ("&interrupt=1" if interrupt else "")
        async with aiohttp.ClientSession() as http, http.post(url, data=pcm, headers=self.headers) as resp:
            return {"status": resp.status, **(await resp.json())}

    async def stats(self, samples: bool = False) -> dict:
        """The gateway's figures for this session (with the raw per-frame stage times if `samples`)."""
        url = f"{self.base_url}/sessions/{self.session_id}/stats" + ("?samples=1" if samples else "")
        async with aiohttp.ClientSession() as http, http.get(url, headers=self.headers) as resp:
            return await resp.json()

    async def close(self) -> None:
        """End the session as a polite client does: DELETE it (its slot is free when that answers),
        then close the connection. A gateway that is gone or already closed the session is fine."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.session_id is not None:
            try:
                timeout = aiohttp.ClientTimeout(total=5)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    await http.delete(f"{self.base_url}/sessions/{self.session_id}", headers=self.headers)
            except (aiohttp.ClientError, TimeoutError):
                pass
        await self.pc.close()

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ----------------------------------------------------------------------------- measuring what came back


def speech_intervals(
    speech: np.ndarray, *, threshold_dbfs: float = -35.0, bridge_s: float = 0.3
) -> list[tuple[float, float]]:
    """Where the speech is loud (20 ms RMS over the threshold), pauses shorter than bridge_s bridged; seconds."""
    hop = CLOCK_RATE // 50
    n = len(speech) // hop
    rms = np.sqrt(np.mean(speech[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    loud = 20 * np.log10(rms + 1e-9) > threshold_dbfs
    intervals: list[list[float]] = []
    for i in np.flatnonzero(loud):
        t = i * hop / CLOCK_RATE
        if intervals and t - intervals[-1][1] <= bridge_s:
            intervals[-1][1] = t + hop / CLOCK_RATE
        else:
            intervals.append([t, t + hop / CLOCK_RATE])
    return [(a, b) for a, b in intervals]


def mouth_difference(received: np.ndarray, sent: np.ndarray, box) -> float:
    """The 90th percentile of the absolute difference (0..255) over the lower middle of the face box.

    A percentile, not the mean: the mouth-only blend changes just the lips and chin inside that box
    (on the synthetic talking head, mean 12.5-13.5 with a 90th percentile of 24-27 while speech
    plays), while a codec's loss is spread thin over all of it (90th percentile below 10 in
    silence). NaN when that region lies outside the frame.
    """
    x1, y1, x2, y2 = (int(round(v)) for v in (box.x1, box.y1, box.x2, box.y2))
    w, h = x2 - x1, y2 - y1
    ys = slice(max(y1 + int(0.62 * h), 0), min(y1 + int(0.95 * h), sent.shape[0]))
    xs = slice(max(x1 + int(0.25 * w), 0), min(x1 + int(0.75 * w), sent.shape[1]))
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return float("nan")
    per_pixel = np.abs(received[ys, xs].astype(np.float32) - sent[ys, xs].astype(np.float32)).mean(axis=2)
    return float(np.percentile(per_pixel, 90))


def _correlation(x: np.ndarray, y: np.ndarray, keep: int) -> np.ndarray:
    """c[k] = sum_i x[i + k] * y[i] for k in [0, keep), by FFT (linear, not circular, for k < len(x))."""
    n = 1 << int(np.ceil(np.log2(len(x) + len(y))))
    return np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(y, n)), n)[:keep]


def returned_audio_lags(got: np.ndarray, sent: np.ndarray, max_lag: int, block: int) -> np.ndarray:
    """Per sample of `got`, the lag (in [0, max_lag]) of its `block`-long stretch behind `sent`.

    One lag for a whole session breaks when the gateway's audio output skips ahead under load
    (each skip shifts the rest), and a looped clip matches at every period: blocks shorter than the
    clip, each searched within max_lag, give each part of the session its own lag. A silent block
    takes its neighbour's.
    """
    padded = np.concatenate([np.zeros(max_lag, np.float32), sent])  # padded[i + max_lag] == sent[i]
    found: list[int | None] = []
    for a in range(0, len(got), block):
        piece = got[a : a + block]
        if float(np.sqrt(np.mean(piece.astype(np.float64) ** 2))) < 1e-4:
            found.append(None)
            continue
        window = padded[a : a + len(piece) + max_lag]  # sent[a - max_lag : a + len(piece)]
        # got[a + i] == sent[a + i - lag] == window[i + max_lag - lag]: the best k gives lag = max_lag - k.
        found.append(max_lag - int(np.argmax(_correlation(window, piece, max_lag + 1))))
    known = [f for f in found if f is not None]
    if not known:
        return np.zeros(len(got), np.int64)
    filled, last = [], known[0]
    for f in found:
        last = f if f is not None else last
        filled.append(last)
    return np.repeat(np.asarray(filled, np.int64), block)[: len(got)]


def av_offsets(
    client: GatewayClient, speech: np.ndarray, *, max_lag_s: float | None = None, block_s: float | None = None
) -> np.ndarray:
    """Per returned video frame, (its delay) - (the delay of the audio captured with it), in seconds.

    Video delay: arrival of frame k back at the client minus when frame k was sent. Audio delay:
    found by cross-correlating the returned audio with the sent speech (the lag in samples), then
    read off the arrival times of the returned audio. Zero means lips and sound arrive together.
    This is what a player that plays everything on arrival shows; it includes the video's encode and
    decode time (audio's is far shorter), which a browser's RTCP lip sync would take out.

    For speech that loops or a long session, give `max_lag_s` (under the loop's period) and
    `block_s`: each block of the returned audio then gets its own lag (returned_audio_lags).
    """
    got, arrival = client.received.audio_16k()
    if len(got) == 0:
        return np.zeros(0)
    sent = np.concatenate([speech, np.zeros(max(0, len(got) - len(speech)), np.float32)])[: len(got)]
    max_lag = len(got) if max_lag_s is None else max(1, min(len(got), int(max_lag_s * CLOCK_RATE)))
    if block_s is None:
        # The returned audio is the sent speech delayed: got[j] == sent[j - lag].
        lags = np.full(len(got), int(np.argmax(_correlation(got, sent, max_lag))), np.int64)
    else:
        lags = returned_audio_lags(got, sent, max_lag, max(CLOCK_RATE // 10, int(block_s * CLOCK_RATE)))
    frame_s = 960 / 48_000
    # This client's own aiortc receiver holds audio ~80 ms and video one frame interval before
    # handing them over; a browser undoes that with RTCP lip sync, so the arrival times are
    # corrected by the same amounts here (see streaming.speech_source.RECEIVE_AUDIO_HOLD).
    audio_hold = RECEIVE_AUDIO_HOLD / CLOCK_RATE
    video_hold = 1.0 / client.video_track.fps
    offsets = []
    seen = set()
    for arrived, index, _ in client.received.video:
        if index is None or index not in client.video_track.sent or index in seen:
            continue
        seen.add(index)
        tau = client.video_track.sent[index] - client.speech_track.started  # speech time captured with frame
        first = int(tau * CLOCK_RATE) + int(lags[0])  # first guess, then the lag of the block it falls in
        if not 0 <= first < len(lags):
            continue
        sample = int(tau * CLOCK_RATE) + int(lags[first])
        if not 0 <= sample < len(arrival):
            continue
        # A returned audio frame arrives once complete: its first sample was due frame_s earlier.
        audio_arrival = arrival[sample] - audio_hold - frame_s + (sample % (CLOCK_RATE // 50)) / CLOCK_RATE
        video_delay = arrived - video_hold - client.video_track.sent[index]
        audio_delay = audio_arrival - (client.speech_track.started + tau)
        offsets.append(video_delay - audio_delay)
    return np.asarray(offsets)
