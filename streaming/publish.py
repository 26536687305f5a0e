"""`lipsync-gateway --publish rtmp://HOST/APP/KEY`: one server-owned presenter session, no WebRTC peer,
whose lip-synced video and delayed speech go to an RTMP server (client/stream_publish.py does the muxing).

The session is an ordinary push-speech presenter session registered with the gateway, so speech reaches
it exactly as it reaches any push session (WebSocket or POST /speech/{id}); its id is logged at start
and listed under "publish" in /healthz. Between utterances the presenter idles and the audio is
silence: the stream never pauses. The publisher retries forever with back-off (the gateway is a
service; an RTMP server that restarts is met again), docs/rtmp.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from lipsync.client.stream_publish import AUDIO_RATE, ReconnectPolicy, StreamPublisher, StreamSpec
from lipsync.client.streaming_mel import StreamingResampler
from lipsync.streaming.frames import CLOCK_RATE
from lipsync.streaming.session import Session, SessionOptions, still_face

if TYPE_CHECKING:
    from lipsync.streaming.server import Gateway

logger = logging.getLogger(__name__)

OPTIONS = SessionOptions(speech="push", mode="presenter")


class PublishedPresenter:
    """The published session's owner: its two pumps (video, audio) and the publisher's worker thread.

    It also stands where the gateway keeps a session's peer connection (`connectionState`, `close()`),
    so the gateway's own routes (stats, DELETE, speech push) and its shutdown treat it like any session.
    """

    def __init__(self, session: Session, publisher: StreamPublisher) -> None:
        self.session = session
        self.publisher = publisher
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._video_from: float | None = None  # stream time of the first frame sent: the stream starts there

    @property
    def connectionState(self) -> str:  # aiortc's name: the gateway reads it from every session's peer
        return f"rtmp-{self.publisher.stats.state}"

    def start(self, presenter) -> None:
        self.publisher.start()
        self.session.run_presenter(presenter)
        self._tasks = [
            asyncio.create_task(self._pump_video(), name=f"{self.session.id}-publish-video"),
            asyncio.create_task(self._pump_audio(), name=f"{self.session.id}-publish-audio"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:  # a pump that stops ends the stream: say why
            logger.error("%s failed", task.get_name(), exc_info=task.exception(), extra={"session_id": self.session.id})

    async def _pump_video(self) -> None:
        while True:
            out, position = await self.session.sync.next_video_out()  # returned at its send time
            if self._video_from is None:
                self._video_from = position / CLOCK_RATE
            self.publisher.send_video(out.image, position / CLOCK_RATE)

    async def _pump_audio(self) -> None:
        """The delayed speech at 48 kHz, stamped on the video's timeline (one clock: A/V stay in sync)."""
        loop = asyncio.get_running_loop()
        upsampler = StreamingResampler(CLOCK_RATE, AUDIO_RATE)
        base: int | None = None  # clock position of the upsampler's first input sample
        expected: int | None = None
        while True:
            samples, position = await self.session.sync.next_audio()
            if self._video_from is None or position / CLOCK_RATE < self._video_from:
                # Audio leaves from the session's start, video one delay (plus the tracker's warm-up) later:
                # that first stretch is the delay's silence, before any speech could be pushed. Left out, the
                # stream starts with both.
                continue
            if position != expected:  # the start, or the synchronizer skipped ahead: a new run of audio
                upsampler.reset()
                base = position
            expected = position + len(samples)
            emitted = upsampler.samples_out
            # The resampler is zero-phase: output sample m is at input time m / 48 kHz, only emitted 4 ms later.
            pcm = await loop.run_in_executor(None, upsampler.push, samples)
            if len(pcm):
                self.publisher.send_audio(np.clip(pcm, -1, 1), base / CLOCK_RATE + emitted / AUDIO_RATE)

    def status(self) -> dict[str, Any]:
        """The "publish" entry of /healthz: where speech goes, where the stream goes (no key), how it fares."""
        return {"session_id": self.session.id, **self.publisher.snapshot()}

    async def close(self) -> None:
        """Stop the pumps, end the stream, close the session (also what the gateway's close_session calls)."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        stats = await asyncio.to_thread(self.publisher.close, drain=False, timeout_s=10.0)
        await self.session.aclose()
        logger.info("publishing ended: %s", stats, extra={"session_id": self.session.id})

    aclose = close


async def start(gateway: Gateway) -> PublishedPresenter:
    """Open the published presenter session on `gateway` (at start-up, once inference is ready)."""
    # Imported here: server.py imports this module to start and stop it.
    from lipsync.streaming.server import PeerSession

    config = gateway.config
    if gateway.presenter is None:
        raise ValueError("publish needs presenter_image or presenter_clip: the face it publishes")
    # Off the loop: with no idle processor in the pool yet (start-up fills it meanwhile), building one
    # loads MediaPipe's graphs, seconds of CPU.
    faces = await asyncio.to_thread(gateway.faces.acquire, still_face(config, OPTIONS))
    session = Session(
        config,
        gateway.inference,
        gateway.observer,
        options=OPTIONS,
        faces=faces,
        release_faces=gateway.faces.release,
        budget=gateway.budget,
    )
    # The size the session works at (a presenter over max_frame_* is scaled down on the way in).
    width, height = session.working_size(*gateway.presenter.size) or gateway.presenter.size
    publisher = StreamPublisher(
        config.publish,
        StreamSpec(width, height, fps=config.fps, audio_channels=1),
        policy=ReconnectPolicy(start_attempts=None),
        log_extra={"session_id": session.id},
    )
    published = PublishedPresenter(session, publisher)
    gateway.peers[session.id] = PeerSession(session, published, gateway.inference)
    published.start(gateway.presenter)
    logger.info(
        "publishing presenter session %s to %s; push its speech to /speech/%s",
        session.id,
        publisher.target.redacted,
        session.id,
        extra={"session_id": session.id},
    )
    return published
