"""The gateway (aiohttp): routes, session lifecycle and WebRTC negotiation; the web page, health, stats, metrics.

The pieces it routes to: api.py (JSON refusals, bounded bodies, the token, log redaction),
offer.py (what an offer must hold), speech_push.py (the two speech-push protocols), whip.py (WHIP
ingest and WHEP playback, docs/whip_whep.md); relay.py fans each session's output out to its receivers.

POST /offer takes {"sdp", "type": "offer"} (optionally "speech": "microphone"|"push",
"mode": "camera"|"presenter" and "avatar": NAME, one of the --avatar folders: that avatar's own
model, and in presenter mode its loop as the face) and answers {"sdp", "type": "answer",
"session_id"}, like aiortc's own examples. Every refusal is a JSON body {"error": ...} with a 4xx/5xx status.

Pushing speech to a session opened with "speech": "push":
- WebSocket /speech/{session_id}?rate=24000: binary messages are PCM s16le mono at that rate;
  text messages are JSON: {"type": "config", "sample_rate": N} sets the rate (instead of the
  query), {"type": "interrupt"} drops queued speech (new speech replaces old). The server
  answers each binary message with {"type": "queued", "queued_s": ...}, an interrupt with
  {"type": "interrupted", "dropped_s": ...}, and refused audio with {"type": "error", ...}.
- POST /speech/{session_id}?rate=24000[&interrupt=1] with a (chunked) PCM body does the same
  over plain HTTP; it answers once the body has been read.
With a token configured, every route but /, /static, /healthz and /metrics needs
"Authorization: Bearer TOKEN" (or ?token=TOKEN, for WebSockets from a browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from prometheus_client import CONTENT_TYPE_LATEST

from lipsync.client.backends import create_backend
from lipsync.client.backends.base import BackendError, LipSyncBackend
from lipsync.client.contract import FULL_LOOKAHEAD_MS
from lipsync.streaming import memory, publish, speech_push
from lipsync.streaming.api import ApiError, authorize, json_errors, read_json_body, redact_access_log
from lipsync.streaming.avatars import ServedAvatar, avatar_backend, create_avatar_backends, load_served_avatars
from lipsync.streaming.config import MIC_INPUT_MS, GatewayConfig, parse_args
from lipsync.streaming.delay import ComputeBudget, SessionDelay
from lipsync.streaming.face_pool import FaceProcessorPool
from lipsync.streaming.ice import allow_loopback_candidates, rtc_configuration
from lipsync.streaming.inference import PROBE_AFTER_S, FrameInference
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.offer import parse_offer
from lipsync.streaming.presenter import PresenterSource
from lipsync.streaming.relay import SessionOutputs
from lipsync.streaming.say import SayRoute
from lipsync.streaming.session import SPEECH_SOURCES, Session, SessionOptions, new_face_processor, still_face
from lipsync.streaming.whip import Viewer, WhipEndpoints

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


class PeerSession:
    """A session with its peer connection and the frame inference it uses (the default's or its avatar's)."""

    def __init__(
        self,
        session: Session,
        pc: RTCPeerConnection,
        inference: FrameInference | None = None,
        outputs: SessionOutputs | None = None,
        protocol: str = "offer",
    ) -> None:
        self.session = session
        self.pc = pc
        self.inference = inference
        self.speech_sockets: set[speech_push.SpeechSocket] = set()  # closed with the session
        # The session's outgoing tracks, read once and relayed to its own peer and to WHEP viewers.
        self.outputs = outputs
        self.viewers: dict[str, Viewer] = {}  # WHEP viewers (streaming/whip.py), closed with the session
        # What opened it ("offer", "whip", "whep"): its resource is /sessions/{id}, /whip/{id} or /whep/{id}.
        self.protocol = protocol


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        backend: LipSyncBackend | None = None,
        avatar_backends: dict[str, LipSyncBackend] | None = None,
    ) -> None:
        """`backend` runs the default sessions; `avatar_backends` (by avatar name) may bring the avatars'
        own. Those not given are created at start-up from the config, as the default one is."""
        self.config = config
        self.observer = GatewayObserver()
        self._backend = backend
        self.inference: FrameInference | None = None
        self.peers: dict[str, PeerSession] = {}
        self._pending_offers = 0
        self._tasks: set[asyncio.Task] = set()
        # One watchdog per session until its peer connects; cancelled when the session closes.
        self._connect_deadlines: dict[str, asyncio.Task] = {}
        self.presenter: PresenterSource | None = None
        self.publish: publish.PublishedPresenter | None = None  # --publish: the session sent to an RTMP server
        if config.presenter_image:
            self.presenter = PresenterSource.from_image(config.presenter_image)
        elif config.presenter_clip:
            self.presenter = PresenterSource.from_clip(config.presenter_clip)
        self.avatars: dict[str, ServedAvatar] = load_served_avatars(config, avatar_backends)
        # One compute budget for every session: they share the cores, so they share what a frame costs.
        self.budget = ComputeBudget.for_gateway(config)
        # The face detector's and mesh's graphs, built once per session slot and recycled (streaming/face_pool.py).
        self.faces = FaceProcessorPool(lambda still: new_face_processor(config, still), keep=config.max_sessions)
        if config.ice_loopback:
            allow_loopback_candidates()
        redact_access_log()
        self.app = self._build_app()

    # -- app
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors], client_max_size=self.config.max_request_bytes)
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC_DIR)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/offer", self.offer)
        app.router.add_get("/sessions/{session_id}/stats", self.stats)
        app.router.add_delete("/sessions/{session_id}", self.delete_session)
        app.router.add_get("/speech/{session_id}", self.speech_ws)
        app.router.add_post("/speech/{session_id}", self.speech_http)
        WhipEndpoints(self).register(app)
        SayRoute(self).register(app)  # POST /say/{id}: typed text spoken into a push session
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    def _frame_inference(self, backend: LipSyncBackend) -> FrameInference:
        return FrameInference(
            backend,
            self.observer,
            timeout_s=self.config.backend_timeout_s,
            retry_s=self.config.backend_retry_s,
            max_in_flight=self.config.inference_concurrency * self.config.max_sessions,
        )

    async def _startup(self, _app: web.Application) -> None:
        memory.limit_arenas()  # before the sessions' threads exist: they then share two arenas
        if self._backend is None:
            self._backend = create_backend(self.config.backend, **self.config.backend_options())
        self.inference = self._frame_inference(self._backend)
        warm_batch = min(8, self.config.inference_concurrency * self.config.max_sessions)
        if self.config.warmup:
            await self.inference.warm_up(max_batch=warm_batch)
        for served in self.avatars.values():
            if served.backend is None:
                served.backend = avatar_backend(self.config, served.avatar)
            served.inference = self._frame_inference(served.backend)
            if self.config.warmup:
                await served.inference.warm_up(max_batch=warm_batch)
        # Built off the event loop while the gateway already answers; a session that comes first builds its own.
        self._spawn(asyncio.to_thread(self._prefill_faces), "prefill-faces")
        frozen = memory.freeze_startup_objects()  # full collections then take ms, not tens of ms
        logger.debug("%d start-up objects kept out of the collector", frozen)
        lookahead = self.inference.lookahead_ms
        logger.info(
            "gateway ready: backend %s, model look-ahead %g ms, added delay %d ms (microphone) / %d ms (pushed speech)",
            self._backend.name,
            lookahead,
            self.config.delay_ms("microphone", lookahead),
            self.config.delay_ms("push", lookahead),
        )
        if self.avatars:
            logger.info("avatars: %s", ", ".join(f"{name} ({a.avatar.root})" for name, a in self.avatars.items()))
        if self.config.publish:
            self.publish = await publish.start(self)

    async def _shutdown(self, _app: web.Application) -> None:
        if self.publish is not None:
            await self.publish.close()
        await asyncio.gather(*(self.close_session(sid) for sid in list(self.peers)), return_exceptions=True)
        # The owned tasks are session closings: let them finish (cancelling one inside aiortc's
        # pc.close() breaks its shared close future), and cancel only what hangs.
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.to_thread(self.faces.close)
        if self._backend is not None:
            await self._backend.aclose()
        for served in self.avatars.values():
            if served.backend is not None:
                await served.backend.aclose()

    def _prefill_faces(self) -> None:
        """One warmed face processor per session slot for camera sessions (and one for a presenter photo)."""
        made = [self.faces.acquire(still=False) for _ in range(self.config.max_sessions)]
        if self.presenter is not None and self.config.presenter_image is not None:
            made.append(self.faces.acquire(still=True))
        for faces in made:
            faces.warm_up()
            self.faces.release(faces)

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- helpers
    def _authorize(self, request: web.Request) -> None:
        authorize(request, self.config.token, self.observer)

    def _peer(self, request: web.Request) -> PeerSession:
        session_id = request.match_info["session_id"]
        peer = self.peers.get(session_id)
        if peer is None:
            raise ApiError(404, f"no session {session_id!r}")
        return peer

    async def close_session(self, session_id: str) -> None:
        deadline = self._connect_deadlines.pop(session_id, None)
        if deadline is not None and deadline is not asyncio.current_task():
            deadline.cancel()
            await asyncio.gather(deadline, return_exceptions=True)
        peer = self.peers.pop(session_id, None)
        if peer is None:
            return
        await asyncio.gather(*(sock.close("session closed") for sock in list(peer.speech_sockets)))
        viewers = list(peer.viewers.values())
        peer.viewers.clear()
        await asyncio.gather(*(viewer.aclose() for viewer in viewers))
        if peer.outputs is not None:
            await peer.outputs.aclose()
        await peer.session.aclose()
        await peer.pc.close()
        # What the session's frames, codecs and threads freed goes back to the OS (streaming/memory.py).
        await asyncio.get_running_loop().run_in_executor(None, memory.release_freed_memory)

    # -- routes
    async def index(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def healthz(self, _request: web.Request) -> web.Response:
        """200 when inference answers, 503 ("degraded") when it does not: the gateway then still
        serves, passing faces through, but a load balancer should send new sessions elsewhere.

        The status is the default model's; each avatar's model is listed with whether it answers, so one
        avatar not served (not exported, not loaded) does not mark the whole gateway down."""
        inference = self.inference
        answering, *avatars_answering = await asyncio.gather(
            _answering(inference), *(_answering(served.inference) for served in self.avatars.values())
        )
        last = inference.last_answer if inference else None
        return web.json_response(
            {
                "status": "ok" if answering else "degraded",
                "inference_answering": answering,
                "last_answer_s_ago": round(time.monotonic() - last, 1) if last is not None else None,
                "failed_requests_in_a_row": inference.failures_in_a_row if inference else None,
                "sessions": len(self.peers),
                "max_sessions": self.config.max_sessions,
                "backend": self._backend.name if self._backend else None,
                "backend_available": bool(self.inference and self.inference.available),
                "inference_in_flight": (
                    {"now": self.inference.in_flight, "limit": int(self.inference.limit)} if self.inference else None
                ),
                "lookahead_ms": inference.lookahead_ms if inference else None,
                # What a new session starts with: the look-ahead, the live input's hold, the budget now.
                "added_delay_ms": {
                    speech: round(
                        SessionDelay(
                            self.budget,
                            lookahead_ms=inference.lookahead_ms if inference else FULL_LOOKAHEAD_MS,
                            input_base_ms=MIC_INPUT_MS,
                            live_input=speech == "microphone",
                        ).target_ms()
                    )
                    for speech in SPEECH_SOURCES
                },
                "compute_budget_ms": {
                    "now": round(self.budget.ms, 1),
                    "p99_mouth": None if self.budget.p99_ms is None else round(self.budget.p99_ms, 1),
                    "floor": self.budget.floor_ms,
                    "ceiling": self.budget.ceiling_ms,
                    "adaptive": self.config.adaptive_budget,
                },
                "resident_mb": memory.resident_mb(),
                "presenter": self.presenter is not None,
                "publish": self.publish.status() if self.publish is not None else None,
                "avatars": dict(zip(self.avatars, avatars_answering, strict=True)),
            },
            status=200 if answering else 503,
        )

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.observer.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _read_offer(self, request: web.Request) -> tuple[str, SessionOptions]:
        data = await read_json_body(
            request, self.config.max_request_bytes, self.observer, "offer", self.config.client_timeout_s
        )
        return parse_offer(
            data, self.config.max_sdp_bytes, self.observer, presenter=self.presenter is not None, avatars=self.avatars
        )

    async def offer(self, request: web.Request) -> web.Response:
        self._authorize(request)
        sdp, options = await self._read_offer(request)
        with self.session_slot():
            return await self._answer(sdp, options)

    @contextlib.contextmanager
    def session_slot(self) -> Iterator[None]:
        """Hold one of the max_sessions slots while a session is set up: 503 (Retry-After) when none is free."""
        if len(self.peers) + self._pending_offers >= self.config.max_sessions:
            self.observer.rejected("max_sessions")
            raise ApiError(
                503, f"all {self.config.max_sessions} sessions are in use; try again later", **{"Retry-After": "5"}
            )
        self._pending_offers += 1
        try:
            yield
        finally:
            self._pending_offers -= 1

    async def _answer(self, sdp: str, options: SessionOptions) -> web.Response:
        peer = await self.open_session(sdp, options)
        session, pc = peer.session, peer.pc
        return web.json_response(
            {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session_id": session.id},
            headers={"Location": f"/sessions/{session.id}"},
        )

    async def open_session(
        self, sdp: str, options: SessionOptions, *, need_video: bool = True, protocol: str = "offer"
    ) -> PeerSession:
        """A session for this offer, its peer connection answered (pc.localDescription) and registered;
        ApiError 400 when the offer cannot be used (`need_video`: it must have a video m-line). Call it
        inside `session_slot()`. The POST /offer, WHIP and WHEP routes all open their sessions here."""
        # A session with an avatar runs on that avatar's model, and presents its loop; otherwise the defaults.
        served = self.avatars[options.avatar] if options.avatar is not None else None
        inference = served.inference if served is not None else self.inference
        presenter = served.presenter if served is not None else self.presenter
        pc = RTCPeerConnection(rtc_configuration())
        session = Session(
            self.config,
            inference,
            self.observer,
            options=options,
            faces=self.faces.acquire(still_face(self.config, options)),
            on_idle=self._on_idle,
            release_faces=self.faces.release,
            budget=self.budget,
        )
        log = {"session_id": session.id}
        outputs = SessionOutputs(session.sync, self.observer, session.id)

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                session.read_audio_track(track)
            elif options.mode == "camera":
                session.read_video_track(track)
            else:
                session.drain_track(track)  # a presenter session has its face on the server

        connected = asyncio.Event()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            logger.info("peer connection %s", pc.connectionState, extra=log)
            if pc.connectionState == "connected":
                connected.set()
            if pc.connectionState == "connected" and options.mode == "presenter" and presenter is not None:
                session.run_presenter(presenter)
            elif pc.connectionState in ("failed", "closed"):
                self._spawn(self.close_session(session.id), f"close-{session.id}")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            kinds = set()
            for transceiver in pc.getTransceivers():
                kind = transceiver.kind
                if kind in kinds:
                    continue
                kinds.add(kind)
                # A peer that only sends (a WHIP publisher) never reads its track: the relay then skips it.
                pc.addTrack(outputs.subscribe(kind))
            if need_video and "video" not in kinds:
                raise ValueError("the offer has no video m-line to send the lip-synced video on")
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:  # aiortc raises many types for a bad SDP; all are the peer's fault here
            await outputs.aclose()
            await session.aclose()
            await pc.close()
            self.observer.rejected("bad_sdp")
            logger.info("offer refused: %s", exc, extra=log)
            raise ApiError(400, f"cannot use this offer: {exc}") from exc
        self.peers[session.id] = peer = PeerSession(session, pc, inference, outputs, protocol)
        outputs.start()
        self._watch_connection(session.id, connected)
        if options.avatar is None:
            logger.info("session opened (%s speech, %s video)", options.speech, options.mode, extra=log)
        else:
            logger.info(
                "session opened (%s speech, %s video, avatar %s)",
                options.speech,
                options.mode,
                options.avatar,
                extra=log,
            )
        return peer

    def _watch_connection(self, session_id: str, connected: asyncio.Event) -> None:
        """Close the session if its peer has not connected in time: an offer that never completes ICE
        (no candidates, or checks answered but no route confirmed) must not hold a session slot."""
        timeout = self.config.connect_timeout_s

        async def expire() -> None:
            try:
                await asyncio.wait_for(connected.wait(), timeout)
            except TimeoutError:
                logger.info("peer did not connect within %g s: closing", timeout, extra={"session_id": session_id})
                self.observer.rejected("connect_timeout")
                await self.close_session(session_id)
            finally:
                self._connect_deadlines.pop(session_id, None)

        self._connect_deadlines[session_id] = asyncio.create_task(expire(), name=f"connect-deadline-{session_id}")

    async def _on_idle(self, session: Session) -> None:
        self._spawn(self.close_session(session.id), f"close-{session.id}")

    async def stats(self, request: web.Request) -> web.Response:
        self._authorize(request)
        peer = self._peer(request)
        stats = self.observer.sessions.get(peer.session.id)
        summary = stats.summary() if stats is not None else {}
        if stats is not None and request.query.get("samples") in ("1", "true"):
            summary["samples_s"] = stats.samples()  # raw per-frame seconds, for the benchmark
        summary.update(
            speech=peer.session.options.speech,
            mode=peer.session.options.mode,
            avatar=peer.session.options.avatar,
            connection=peer.pc.connectionState,
            viewers=len(peer.viewers),
            backend_available=bool(peer.inference and peer.inference.available),
            speech_queued_s=round(peer.session.push_speech.queued_s, 3) if peer.session.push_speech else None,
        )
        return web.json_response(summary)

    async def delete_session(self, request: web.Request) -> web.Response:
        self._authorize(request)
        peer = self._peer(request)
        await self.close_session(peer.session.id)
        return web.json_response({"closed": peer.session.id})

    def _push_peer(self, request: web.Request) -> PeerSession:
        self._authorize(request)
        peer = self._peer(request)
        if peer.session.push_speech is None:
            raise ApiError(409, f'session {peer.session.id} uses its microphone; open it with "speech": "push"')
        return peer

    async def speech_ws(self, request: web.Request) -> web.WebSocketResponse:
        peer = self._push_peer(request)
        socket = speech_push.SpeechSocket(
            request,
            peer.session.push_speech,
            self.config.max_speech_message_bytes,
            self.config.client_timeout_s,
            on_stalled=lambda: self.observer.rejected("slow_client"),
        )
        peer.speech_sockets.add(socket)
        try:
            return await socket.serve()
        finally:
            peer.speech_sockets.discard(socket)

    async def speech_http(self, request: web.Request) -> web.Response:
        push = self._push_peer(request).session.push_speech
        return await speech_push.http_body(request, push, self.config.client_timeout_s)


async def _answering(inference: FrameInference | None) -> bool:
    """Whether `inference` answers; when nothing asked it lately, a real request (with a deadline) asks."""
    if inference is not None and inference.in_flight == 0:
        stale = inference.last_answer is None or time.monotonic() - inference.last_answer > PROBE_AFTER_S
        if stale or not inference.answering:  # nothing asked lately: ask, with a deadline
            await inference.probe()
    return bool(inference and inference.answering)


class _SessionIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.session = f"[{record.session_id}] " if hasattr(record, "session_id") else ""
        return True


def main(argv: list[str] | None = None) -> int:
    """Console script `lipsync-gateway`."""
    try:
        config = parse_args(argv)
    except ValueError as exc:
        print(f"lipsync-gateway: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.addFilter(_SessionIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(session)s%(message)s"))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    logger.info("config: %s", json.dumps(config.public()))
    try:  # setup errors are fatal, and said plainly
        backend = create_backend(config.backend, **config.backend_options())
        gateway = Gateway(config, backend=backend, avatar_backends=create_avatar_backends(config))
    except (BackendError, OSError, ValueError) as exc:
        print(f"lipsync-gateway: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(gateway.app, host=config.host, port=config.port, print=lambda msg: logger.info(msg))
    logger.info("gateway stopped after %.0f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
