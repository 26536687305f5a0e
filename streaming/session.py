"""One session's pipeline (docs/architecture.md): video -> face tracking -> mouth generation -> A/V sync.

Speech reaches the session's `SpeechTimeline` from the microphone track or from pushed PCM; the
mouth stage waits for the audio a frame's mel window reaches into, asks the VAD whether the
frame is speech, and only then asks the backend for a mouth. Everything else passes through
unchanged: silence, no face in view, a backend that is down or late.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync.client.compositing import Compositor
from lipsync.client.face_crop import CropRegion, crop_face, model_face_input, pad_box
from lipsync.client.face_tracking import FaceTracker
from lipsync.streaming.av_sync import AvSynchronizer, MediaClock
from lipsync.streaming.config import MIC_INPUT_MS, GatewayConfig
from lipsync.streaming.delay import ComputeBudget, SessionDelay
from lipsync.streaming.frames import CLOCK_RATE, FaceFrame, OutputFrame, SenderClock, VideoFrame, clock_to_seconds
from lipsync.streaming.inference import FrameInference
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.speech_source import MicrophoneReader, PushSpeech, SpeechTimeline
from lipsync.streaming.stream import Overflow, Stage
from lipsync.streaming.vad import VoiceActivity

logger = logging.getLogger(__name__)

WARM_UP_FRAMES = 25  # a session's first frames sent to the model: not part of the compute budget


class FaceProcessor:
    """The CPU work on pictures for one session: find the face, cut the model's input, paste the mouth.

    Called from an executor thread, one frame at a time per session (the tracker has state).
    """

    def __init__(self, tracker: FaceTracker | None = None, compositor: Compositor | None = None) -> None:
        self.tracker = tracker if tracker is not None else FaceTracker()
        self.compositor = compositor if compositor is not None else Compositor()
        # A cancelled task does not stop its executor job: close() must wait for a running locate().
        self._lock = threading.Lock()
        # Blends of one session may overlap (several frames in flight); the compositor keeps per-video state.
        self._blend_lock = threading.Lock()

    def locate(
        self, image: np.ndarray, timestamp_s: float | None = None
    ) -> tuple[CropRegion | None, np.ndarray | None]:
        """(crop region, (6,96,96) model face input), or (None, None) when no face is in view."""
        with self._lock:
            box = self.tracker.update(image, timestamp_s)
        if box is None:
            return None, None
        region = pad_box(box, image.shape)
        return region, model_face_input(crop_face(image, region))

    def blend(self, image: np.ndarray, generated: np.ndarray, region: CropRegion) -> np.ndarray:
        with self._blend_lock:
            return self.compositor.compose(image, generated, region)

    def reset(self) -> None:
        with self._lock:
            self.tracker.reset()
        with self._blend_lock:
            self.compositor.reset()

    def recycle(self) -> None:
        """Ready for another session: no face, no shape, zero counts, the mesh following nothing."""
        with self._lock:
            self.tracker.reset()
        with self._blend_lock:
            self.compositor.new_video()

    def close(self) -> None:
        """Release the detector and the face mesh (MediaPipe's graphs hold threads and memory)."""
        with self._lock:
            self.tracker.close()
        with self._blend_lock:
            self.compositor.close()

    def warm_up(self) -> None:
        """Load the detector's and the face mesh's graphs (about a second each) before the first frame needs them."""
        grey = np.full((240, 320, 3), 127, np.uint8)
        self.locate(grey)
        with self._blend_lock:
            self.compositor.mouth_shape(grey, CropRegion(80, 40, 240, 200))
        self.reset()


SPEECH_SOURCES = ("microphone", "push")
VIDEO_SOURCES = ("camera", "presenter")


@dataclass(frozen=True)
class SessionOptions:
    """What the peer asked for in its offer."""

    speech: str = "microphone"  # the peer's audio track, or PCM pushed to /speech/{id}
    mode: str = "camera"  # the peer's video track, or the gateway's presenter face
    # An enrolled avatar's name: its own model, and in presenter mode its loop as the face. None: the default.
    avatar: str | None = None

    def __post_init__(self) -> None:
        if self.speech not in SPEECH_SOURCES:
            raise ValueError(f"'speech' must be one of {list(SPEECH_SOURCES)}, got {self.speech!r}")
        if self.mode not in VIDEO_SOURCES:
            raise ValueError(f"'mode' must be one of {list(VIDEO_SOURCES)}, got {self.mode!r}")
        if self.avatar is not None and not isinstance(self.avatar, str):
            raise ValueError(f"'avatar' must be a string (an avatar's name), got {type(self.avatar).__name__}")


def still_face(config: GatewayConfig, options: SessionOptions) -> bool:
    """Whether this session's face is the gateway's presenter photo (its mouth shape is measured once).
    An avatar's presenter face is its loop, a moving clip, whatever the gateway's own presenter is."""
    return options.mode == "presenter" and options.avatar is None and config.presenter_image is not None


def new_face_processor(config: GatewayConfig, still: bool) -> FaceProcessor:
    return FaceProcessor(compositor=Compositor(config.blend, still=still, landmark_every=config.landmark_every))


class FaceTrackStage(Stage[VideoFrame, FaceFrame]):
    """Tracks the face on each frame, in order; keeps only the newest two frames waiting."""

    def __init__(self, faces: FaceProcessor, observer: GatewayObserver, session_id: str) -> None:
        super().__init__(
            "track",
            maxsize=2,
            overflow=Overflow.DROP_OLDEST,
            on_drop=lambda _: observer.dropped(session_id, "track_queue_full"),
            on_depth=lambda n: observer.queue_depth(session_id, "track", n),
        )
        self._faces = faces
        self._observer = observer
        self._session = session_id
        self._had_face = False
        self.warmed = asyncio.Event()

    async def warm_up(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._faces.warm_up)
        finally:
            self.warmed.set()

    async def process(self, frame: VideoFrame) -> FaceFrame:
        await self.warmed.wait()
        start = time.perf_counter()
        region, face_input = await asyncio.get_running_loop().run_in_executor(
            None, self._faces.locate, frame.image, clock_to_seconds(frame.pts)
        )
        if self._had_face and region is None:
            self._observer.face_lost(self._session)
        self._had_face = region is not None
        return FaceFrame(frame, region, face_input, time.perf_counter() - start)


class MouthStage(Stage[FaceFrame, OutputFrame]):
    """Generates the mouth of each speech frame that shows a face; up to `concurrency` frames at once."""

    def __init__(
        self,
        *,
        timeline: SpeechTimeline,
        clock: MediaClock,
        inference: FrameInference,
        faces: FaceProcessor,
        observer: GatewayObserver,
        session_id: str,
        delay: Callable[[], int],
        max_delay: int,
        fps: float,
        budget: ComputeBudget,
        concurrency: int,
    ) -> None:
        # Most of a frame's time here is spent waiting for the audio its mel window reaches into, so
        # the stage holds every frame of the delay at once; only the backend calls are limited.
        frames_in_delay = int(clock_to_seconds(max_delay) * fps) + 1
        super().__init__(
            "mouth",
            maxsize=frames_in_delay,
            overflow=Overflow.DROP_OLDEST,
            concurrency=frames_in_delay + concurrency,
            on_drop=lambda _: observer.dropped(session_id, "mouth_queue_full"),
            on_depth=lambda n: observer.queue_depth(session_id, "mouth", n),
        )
        self._infer_slots = asyncio.Semaphore(concurrency)
        self._timeline = timeline
        self._clock = clock
        self._inference = inference
        self._faces = faces
        self._observer = observer
        self._session = session_id
        self._delay = delay  # the session's current delay (samples): it moves (streaming/delay.py)
        self._frame_len = round(CLOCK_RATE / fps)
        self._budget = budget
        # A session's first generated frames come in a burst (the microphone's first 200 ms of audio are
        # released at once when it is anchored) and start its face mesh: 150-230 ms each, measured, against
        # 6 ms typical for the blend. Left out of the gateway's budget, which follows the steady state.
        self._warm_up_frames = WARM_UP_FRAMES

    def _observe_budget(self, seconds: float) -> None:
        if self._warm_up_frames > 0:
            self._warm_up_frames -= 1
        else:
            self._budget.observe(seconds)

    async def process(self, item: FaceFrame) -> OutputFrame:
        video = item.video
        stages = {"track": item.track_s}

        def passthrough(outcome: str) -> OutputFrame:
            return OutputFrame(video, video.image, outcome, stages)

        if item.region is None:
            return passthrough("no_face")
        due = self._clock.wall(video.pts + self._delay())
        budget_s = self._budget.ms / 1000
        # Audio may take until 60 % of the compute budget is left; then the frame goes on without it.
        audio_deadline = due - 0.6 * budget_s
        waited = time.monotonic()
        end = video.pts + self._frame_len
        await self._timeline.wait_for(end + CLOCK_RATE // 50, audio_deadline)
        speech = self._timeline.speech_in(video.pts, end)
        if not speech:
            return passthrough("silence" if speech is not None else "no_audio")
        mel = await self._timeline.mel_window(video.pts, audio_deadline, self._inference.mel_offset)
        ready = time.monotonic()
        stages["audio_wait"] = ready - waited
        if mel is None:
            return passthrough("no_audio")
        async with self._infer_slots:
            generated, outcome = await self._inference.generate(mel, item.face_input, due - 0.01)
        inferred = time.monotonic()
        stages["infer"] = inferred - ready
        if generated is None:
            if outcome in ("timeout", "overloaded"):  # out of time: it needed at least what it was given
                self._observe_budget(max(inferred, due) - ready)
            return passthrough(outcome)
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(None, self._faces.blend, video.image, generated, item.region)
        done = time.monotonic()
        stages["blend"] = done - inferred
        stages["mouth"] = stages["track"] + stages["infer"] + stages["blend"]
        # What D must leave after a frame's audio is in: its inference and blend (it was tracked meanwhile).
        self._observe_budget(done - ready)
        for name, seconds in stages.items():
            self._observer.stage(self._session, name, seconds)
        if done - ready > budget_s:
            logger.info(
                "inference and blend took %.0f ms, over the %.0f ms budget",
                1000 * (done - ready),
                1000 * budget_s,
                extra={"session_id": self._session},
            )
        return OutputFrame(video, image, "generated", stages)


class Session:
    """Owns a session's clock, speech, stages and tasks; closed with `aclose` (tasks cancelled and awaited)."""

    def __init__(
        self,
        config: GatewayConfig,
        inference: FrameInference,
        observer: GatewayObserver,
        *,
        options: SessionOptions = SessionOptions(),
        faces: FaceProcessor | None = None,
        clock: MediaClock | None = None,
        session_id: str | None = None,
        on_idle: Callable[[Session], Awaitable[None]] | None = None,
        release_faces: Callable[[FaceProcessor], None] | None = None,
        budget: ComputeBudget | None = None,
    ) -> None:
        self.id = session_id or uuid.uuid4().hex[:12]
        self.config = config
        self.options = options
        self.observer = observer
        self.stats = observer.session_started(self.id)
        self.clock = clock or MediaClock()
        # The look-ahead is the served model's (read from what its backend loaded), not a setting.
        self.lookahead_ms = inference.lookahead_ms
        # D = look-ahead + input hold + compute budget (streaming/delay.py). The budget is the gateway's
        # (every session shares its cores); a session made alone gets its own.
        if budget is None:
            budget = ComputeBudget.for_gateway(config)
        self.delay_target = SessionDelay(
            budget,
            lookahead_ms=self.lookahead_ms,
            input_base_ms=MIC_INPUT_MS,
            live_input=options.speech == "microphone",
        )
        # The most D can become (the budget at its ceiling, the jitter at its cap, a step beyond): what the
        # stages that hold frames for the delay are sized for.
        max_delay_ms = config.delay_ms(options.speech, self.lookahead_ms) + self.delay_target.jitter.ceiling_ms + 20
        max_delay = int(max_delay_ms) * CLOCK_RATE // 1000
        vad = VoiceActivity(config.vad_mode, energy_dbfs=config.vad_energy_dbfs, hangover_ms=config.vad_hangover_ms)
        self.timeline = SpeechTimeline(vad)
        self.faces = faces or new_face_processor(config, still_face(config, options))
        # Who takes the face processor when the session ends: by default it is closed; a gateway's pool
        # (streaming/face_pool.py) recycles it for the next session.
        self._release_faces = release_faces or FaceProcessor.close
        self.sync = AvSynchronizer(
            self.clock,
            self.timeline,
            delay=self._target_samples(),
            fps=config.fps,
            observer=observer,
            session_id=self.id,
            target=self._target_samples,
        )
        self._report_delay()
        self._track = FaceTrackStage(self.faces, observer, self.id)
        self._mouth = MouthStage(
            timeline=self.timeline,
            clock=self.clock,
            inference=inference,
            faces=self.faces,
            observer=observer,
            session_id=self.id,
            delay=lambda: self.sync.delay,
            max_delay=max_delay,
            fps=config.fps,
            budget=budget,
            concurrency=config.inference_concurrency,
        )
        self.push_speech: PushSpeech | None = None
        self._frames_in = 0
        self._last_input: float | None = None  # when the peer last sent media
        self._on_idle = on_idle
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self.closed = asyncio.Event()
        self._spawn(self._track.warm_up(), "warm-up")
        self._spawn(self._pump_track(), "pump-track")
        self._spawn(self._pump_mouth(), "pump-mouth")
        self._spawn(self._watch_idle(), "idle-watchdog")
        self._spawn(self._report_delay_every(1.0), "delay-report")
        if options.speech == "push":
            # Fed ahead of the clock by the look-ahead plus the 12.5 ms the last mel column reads beyond it.
            self.push_speech = PushSpeech(
                self.timeline,
                self.clock.now,
                lead_s=(self.lookahead_ms + 40) / 1000,
                max_seconds=config.max_speech_seconds,
            )
            self._spawn(self.push_speech.run(), "push-speech")

    @property
    def delay(self) -> int:
        """The added delay now, in clock samples (video and audio leave this long after capture)."""
        return self.sync.delay

    def _target_samples(self) -> int:
        return round(self.delay_target.target_ms() * CLOCK_RATE / 1000)

    def _report_delay(self) -> None:
        self.observer.set_delay(
            self.id, self.sync.delay * 1000 / CLOCK_RATE, self.delay_target.parts(), self.sync.delay_changes
        )

    async def _report_delay_every(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self._report_delay()

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "session task %s failed", task.get_name(), exc_info=task.exception(), extra={"session_id": self.id}
            )

    async def ready(self) -> None:
        """Wait until the face detector is loaded (frames before that are dropped as the queue fills)."""
        await self._track.warmed.wait()

    # -- inputs
    def working_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The size a frame over max_frame_width x max_frame_height is scaled down to (aspect kept,
        even sides for the encoder), or None when it fits."""
        limit_w, limit_h = self.config.max_frame_width, self.config.max_frame_height
        if width <= limit_w and height <= limit_h:
            return None
        scale = min(limit_w / width, limit_h / height)
        return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)

    def submit_video(self, image: np.ndarray, arrived: float | None = None, pts: int | None = None) -> bool:
        """Queue a BGR picture captured at clock `pts` (default: now) for tracking; False if refused.

        A picture over the size limit is scaled down to fit (a 1440p camera still gets its face back,
        smaller) and counted as `downscaled`; one that is not a BGR picture is dropped and counted.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 2 or image.shape[1] < 2:
            self.observer.dropped(self.id, "bad_size")
            return False
        size = self.working_size(image.shape[1], image.shape[0])
        if size is not None:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            self.observer.downscaled(self.id)
        pts = self.clock.now() if pts is None else max(pts, 0)
        frame = VideoFrame(pts, image, self._frames_in, arrived or time.monotonic())
        self._frames_in += 1
        self._track.push(frame)
        return True

    def read_video_track(self, track) -> None:
        """Consume an aiortc video track into the pipeline (the conversion to BGR runs off the loop).

        Frames are stamped by the sender's timestamps, anchored on the least delayed arrival so
        far: a frame that was held up (decoding behind, a burst) keeps the time it was captured.
        aiortc releases a frame when the next one's first packet arrives, so an arrival is also
        taken back by one frame interval (tracked, at most 100 ms).
        """

        async def run() -> None:
            loop = asyncio.get_running_loop()
            sender = SenderClock()
            anchor: int | None = None
            previous: float | None = None
            interval = 1.0 / self.config.fps
            while True:
                frame = await track.recv()
                arrived = time.monotonic()
                self._touch()
                if previous is not None:
                    interval += 0.1 * (min(max(arrived - previous, 0.0), 0.1) - interval)
                previous = arrived
                at = sender.seconds(frame.pts, frame.time_base)
                by_arrival = self.clock.now() - int(interval * CLOCK_RATE)
                if at is None:
                    pts = by_arrival
                else:
                    candidate = by_arrival - int(at * CLOCK_RATE)
                    # Earlier than the anchor: a less delayed frame. Far later: the sender restarted.
                    if anchor is None or candidate < anchor or candidate - anchor > 2 * CLOCK_RATE:
                        anchor = candidate
                    pts = anchor + int(at * CLOCK_RATE)
                # An oversized frame is scaled while it is converted (libswscale, one pass).
                size = self.working_size(frame.width, frame.height)
                scale = {} if size is None else {"width": size[0], "height": size[1]}
                image = await loop.run_in_executor(None, functools.partial(frame.to_ndarray, format="bgr24", **scale))
                if size is not None:
                    self.observer.downscaled(self.id)
                self.submit_video(image, arrived, pts)

        self._spawn(self._until_track_ends(run, then=self._track.end_input), "video-in")

    def read_audio_track(self, track) -> None:
        """Use the peer's microphone as the speech source (ignored in push mode, but drained)."""
        if self.options.speech == "push":
            self.drain_track(track)
            return
        reader = MicrophoneReader(track, self.timeline, self.clock.now, jitter=self.delay_target.jitter)
        self._spawn(self._until_track_ends(lambda: reader.run(on_chunk=self._touch)), "audio-in")

    def drain_track(self, track) -> None:
        """Read and discard a track the session does not use (aiortc would queue its frames without bound)."""
        self._spawn(self._until_track_ends(lambda: self._drain(track)), f"{track.kind}-drain")

    def _touch(self) -> None:
        """The peer sent media: it is still there."""
        self._last_input = time.monotonic()

    async def _drain(self, track) -> None:
        while True:
            await track.recv()
            self._touch()

    async def _until_track_ends(
        self, run: Callable[[], Awaitable[None]], then: Callable[[], None] | None = None
    ) -> None:
        """Run a track reader until the peer ends the track; `then` passes the end down the pipeline."""
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError):
            await run()
        if then is not None:
            then()

    def run_presenter(self, source) -> None:
        """Drive the video from a presenter face source at the configured frame rate."""

        async def run() -> None:
            period = 1.0 / self.config.fps
            index = 0
            while True:
                await self.clock.sleep_until(self.clock.t0 + index * period)
                self.submit_video(source.frame(index))
                index += 1

        self._spawn(run(), "presenter")

    # -- plumbing
    async def _pump_track(self) -> None:
        async for face_frame in self._track:
            self._mouth.push(face_frame)
        self._mouth.end_input()  # the camera track ended: the mouth stage finishes what it holds

    async def _pump_mouth(self) -> None:
        async for out in self._mouth:
            self.sync.push_video(out)

    async def _watch_idle(self) -> None:
        idle = self.config.session_idle_s
        while True:
            await asyncio.sleep(min(idle / 4, 1.0))
            # Only a peer that sends media can go quiet; a receive-only one is watched by ICE consent.
            if self._last_input is not None and time.monotonic() - self._last_input > idle:
                logger.info("no media for %.1f s; closing", idle, extra={"session_id": self.id})
                if self._on_idle is not None:
                    await self._on_idle(self)
                return

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._track.aclose()
        await self._mouth.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self._release_faces, self.faces)
        self.observer.session_ended(self.id)
        self.closed.set()
        logger.info("session closed", extra={"session_id": self.id})
