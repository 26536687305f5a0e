"""The session pipeline end to end in one process: pushed speech, a fake backend, real tracking code paths."""

from __future__ import annotations

import asyncio
import fractions

import numpy as np
import pytest

from lipsync.client.backends.base import BackendUnavailable, LipSyncBackend
from lipsync.client.face_tracking import FaceTracker, FixedBoxDetector
from lipsync.streaming.config import GatewayConfig
from lipsync.streaming.frames import CLOCK_RATE
from lipsync.streaming.inference import FrameInference
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.session import FaceProcessor, Session, SessionOptions
from tests.media import ASTRONAUT_FACE_BOX, astronaut_bgr, frame_without_face

pytestmark = pytest.mark.unit

FPS = 25.0


class GreyMouthBackend(LipSyncBackend):
    """Answers a flat grey face: easy to tell from any real mouth."""

    name = "grey"

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    def _infer_batch(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.down:
            raise BackendUnavailable("switched off by the test")
        return np.full((len(mel), 3, 96, 96), 0.5, np.float32)


class KnownFaceProcessor(FaceProcessor):
    """Finds the face only on the one picture that has it, at its known box (the real crop and blend run)."""

    def __init__(self, face: np.ndarray) -> None:
        super().__init__(FaceTracker(FixedBoxDetector(ASTRONAUT_FACE_BOX)))
        self.face = face

    def locate(self, image: np.ndarray, timestamp_s: float | None = None):
        return super().locate(image, timestamp_s) if image is self.face else (None, None)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal that webrtcvad takes for speech."""
    t = np.arange(int(seconds * CLOCK_RATE)) / CLOCK_RATE
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / CLOCK_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    noise = np.random.default_rng(seed).normal(0, 0.02, len(t))
    return (0.25 * voice * envelope / 3 + noise).astype(np.float32)


def make_session(
    backend: LipSyncBackend, faces: FaceProcessor | None = None, **overrides
) -> tuple[Session, GatewayObserver]:
    config = GatewayConfig(backend="onnxruntime", compute_budget_ms=150, vad_hangover_ms=40, **overrides)
    observer = GatewayObserver()
    inference = FrameInference(backend, observer, timeout_s=0.5, retry_s=0.3)
    session = Session(config, inference, observer, options=SessionOptions(speech="push"), faces=faces)
    return session, observer


async def run_frames(session: Session, frames: list[np.ndarray]) -> list:
    """Feed frames at 25 fps and collect what the synchronizer sends, in order."""
    out = []
    await session.ready()
    t_start = session.clock.monotonic() - session.clock.t0

    async def feed() -> None:
        for i, frame in enumerate(frames):
            await session.clock.sleep_until(session.clock.t0 + t_start + i / FPS)
            session.submit_video(frame)

    async def collect() -> None:
        while len(out) < len(frames):
            out.append(await session.sync.next_video())

    feeder = asyncio.create_task(feed())
    try:
        await asyncio.wait_for(collect(), timeout=len(frames) / FPS + 5)
    except TimeoutError:
        pass
    await feeder
    return out


async def test_speech_generates_silence_and_no_face_pass_through() -> None:
    backend = GreyMouthBackend()
    face = astronaut_bgr()
    session, observer = make_session(backend, KnownFaceProcessor(face))
    try:
        # 1.2 s of silence, 1.2 s of speech, 0.8 s of silence, from wherever the push lands.
        speech = np.concatenate([np.zeros(int(1.2 * CLOCK_RATE)), speech_like(1.2), np.zeros(int(0.8 * CLOCK_RATE))])
        start = await session.push_speech.push(speech.astype(np.float32), CLOCK_RATE) / CLOCK_RATE
        frames = [face] * 75 + [frame_without_face((512, 512))] * 10
        out = await run_frames(session, frames)
    finally:
        await session.aclose()
    assert len(out) >= 80, f"only {len(out)} frames came out"
    s0, s1 = start + 1.2, start + 2.4
    outcomes = "".join(o.outcome[0] for o in out)
    for o in out:
        t = o.pts / CLOCK_RATE  # the frame covers [t, t + 40 ms)
        if o.outcome == "no_face":
            assert o.image is o.video.image
        elif s0 + 0.05 <= t <= s1 - 0.05:
            assert o.outcome == "generated", (t, outcomes)
            assert not np.array_equal(o.image, o.video.image)
        elif t + 0.04 < s0 - 0.03 or t > s1 + 0.04 + 0.05:  # 40 ms hangover
            assert o.outcome == "silence", (t, outcomes)
            assert np.array_equal(o.image, o.video.image)
    assert outcomes.endswith("n" * 8)
    stats = observer.finished[-1].summary()
    assert stats["mouth_ms"]["p50"] is not None
    assert stats["faces_lost"] == 1


async def test_backend_down_passes_frames_through_and_recovers() -> None:
    backend = GreyMouthBackend()
    backend.down = True
    face = astronaut_bgr()
    session, _ = make_session(backend, KnownFaceProcessor(face))
    try:
        await session.push_speech.push(speech_like(4.0), CLOCK_RATE)
        first = await run_frames(session, [face] * 20)
        backend.down = False
        second = await run_frames(session, [face] * 30)
    finally:
        await session.aclose()
    assert {o.outcome for o in first if o.video.index >= 8} == {"backend_unavailable"}
    assert all(np.array_equal(o.image, o.video.image) for o in first)
    assert any(o.outcome == "generated" for o in second[-10:])


async def test_frames_over_the_size_limit_are_scaled_down_and_counted() -> None:
    face = astronaut_bgr()
    session, observer = make_session(GreyMouthBackend(), KnownFaceProcessor(face), max_frame_width=640,
                                     max_frame_height=512)  # fmt: skip
    try:
        assert session.working_size(2560, 1440) == (640, 360)  # aspect kept, both sides within the limit
        assert session.working_size(640, 512) is None
        assert session.submit_video(np.zeros((1440, 2560, 3), np.uint8))  # a 1440p camera: kept, smaller
        assert not session.submit_video(np.zeros((48, 64), np.uint8))  # not a BGR picture
        assert session.submit_video(face)
        stats = observer.sessions[session.id]
        assert stats.drops["bad_size"] == 1 and stats.downscaled == 1
        assert stats.summary()["frames_downscaled"] == 1
    finally:
        await session.aclose()


async def test_the_end_of_the_camera_track_ends_the_pipeline_stages() -> None:
    """A peer that stops its camera: the track stage ends its input, and the end reaches the mouth stage."""
    import av
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError

    face = astronaut_bgr()

    class ShortCamera(MediaStreamTrack):
        kind = "video"

        def __init__(self, frames: int) -> None:
            super().__init__()
            self.left = frames

        async def recv(self) -> av.VideoFrame:
            if self.left == 0:
                raise MediaStreamError
            self.left -= 1
            await asyncio.sleep(1 / FPS)
            frame = av.VideoFrame.from_ndarray(face, format="bgr24")
            frame.pts, frame.time_base = 100 - self.left, fractions.Fraction(1, int(FPS))
            return frame

    session, _ = make_session(GreyMouthBackend(), KnownFaceProcessor(face))
    try:
        await session.ready()
        session.read_video_track(ShortCamera(5))
        for stage in (session._track, session._mouth):  # both stages finish on their own, not cancelled
            await asyncio.wait_for(asyncio.shield(stage._emitter), 5)
            assert stage._emitter.done() and not stage._emitter.cancelled()
    finally:
        await session.aclose()
