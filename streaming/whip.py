"""WHIP ingest (RFC 9725) and WHEP playback: sessions and viewers set up by one HTTP POST of an SDP offer.

    POST /whip[?speech=&mode=&avatar=]  publish camera + microphone     -> 201, Location /whip/{id}
    DELETE /whip/{id}                   end that session
    POST /whep/{id}                     watch a session (any session)   -> 201, Location /whep/{id}/{viewer}
    DELETE /whep/{id}/{viewer}          end that viewer
    POST /whep[?avatar=]                open a presenter session, speech pushed to /speech/{id}
                                                                        -> 201, Location /whep/{id}
    DELETE /whep/{id}                   end that presenter session

Every 201 carries the answer (application/sdp, all ICE candidates in it), the Location and
`X-Session-Id`. Trickle ICE and ICE restarts are not supported: PATCH is answered 405 with Allow, as
RFC 9725 section 4.3.1 permits. A session opened here is the same as one from POST /offer (set up by
Gateway.open_session, counted against max_sessions, closed if its peer does not connect within
connect_timeout_s); its output reaches its viewers through streaming/relay.py. docs/whip_whep.md
says how OBS, GStreamer and WHEP players use it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from lipsync.streaming.api import ApiError, authorize, read_body
from lipsync.streaming.ice import rtc_configuration
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.offer import parse_offer
from lipsync.streaming.relay import RelayTrack, SessionOutputs
from lipsync.streaming.session import SessionOptions

if TYPE_CHECKING:
    from lipsync.streaming.server import Gateway, PeerSession

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
# What a query may choose, as POST /offer's JSON does; `token` is the token's other way in (api.authorize).
WHIP_QUERY = frozenset({"speech", "mode", "avatar"})
PRESENTER_QUERY = frozenset({"avatar"})
# Viewers of one session: each has its own video encoder on the gateway's cores, so they are few.
MAX_VIEWERS = 4
SENDS = frozenset({"sendonly", "sendrecv"})
RECEIVES = frozenset({"recvonly", "sendrecv"})
DIRECTIONS = SENDS | RECEIVES | {"inactive"}
RETRY_AFTER_S = "5"


def media_directions(sdp: str) -> list[tuple[str, str]]:
    """(kind, direction as its writer means it) of each m-line of an SDP; ValueError naming what is not SDP."""
    lines = [line.strip() for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        raise ValueError(f"an SDP starts with 'v=0', this starts with {lines[0][:40] if lines else ''!r}")
    session_direction = "sendrecv"  # RFC 4566: the default, unless the session level says otherwise
    media: list[list[str | None]] = []
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=":
            raise ValueError(f"not an SDP line: {line[:40]!r}")
        if line.startswith("m="):
            media.append([line[2:].split(" ", 1)[0], None])
        elif line.startswith("a=") and line[2:] in DIRECTIONS:
            if media:
                media[-1][1] = line[2:]
            else:
                session_direction = line[2:]
    return [(str(kind), direction or session_direction) for kind, direction in media]


def check_offer(
    sdp: str, observer: GatewayObserver, what: str, *, sends: tuple[str, ...] = (), receives: tuple[str, ...] = ()
) -> None:
    """ApiError 400 unless the offer is SDP with an m-line that sends each kind in `sends` and one that
    receives each kind in `receives`."""
    try:
        media = media_directions(sdp)
    except ValueError as exc:
        observer.rejected("bad_sdp")
        raise ApiError(400, f"{what}: the body is not an SDP offer ({exc})") from exc
    wanted = [(kind, SENDS, "send") for kind in sends] + [(kind, RECEIVES, "receive") for kind in receives]
    for kind, directions, verb in wanted:
        if not any(k == kind and d in directions for k, d in media):
            observer.rejected("bad_sdp")
            found = ", ".join(f"{k} {d}" for k, d in media) or "no m-lines"
            raise ApiError(400, f"{what}: the offer must {verb} {kind} (found: {found})")


def require_sdp_type(request: web.Request, observer: GatewayObserver) -> None:
    if request.content_type.lower() != SDP_TYPE:
        observer.rejected("content_type")
        raise ApiError(
            415, f"{request.method} {request.path} needs Content-Type {SDP_TYPE}, got {request.content_type!r}"
        )


async def read_sdp(request: web.Request, limit: int, observer: GatewayObserver, timeout_s: float) -> str:
    """The offer in the request's body: at most `limit` bytes of UTF-8 (api.read_body's rules)."""
    body = await read_body(request, limit, observer, "SDP", timeout_s)
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        observer.rejected("bad_sdp")
        raise ApiError(400, f"SDP is not UTF-8 text: {exc}") from exc


def query_options(request: web.Request, allowed: frozenset[str]) -> dict[str, str]:
    """The session options in the query (api.authorize reads `token` itself); 400 naming an unknown one."""
    options = {key: value for key, value in request.query.items() if key != "token"}
    if unknown := sorted(set(options) - allowed):
        raise ApiError(400, f"unknown query parameters {unknown} for {request.path}; allowed: {sorted(allowed)}")
    return options


def created(pc: RTCPeerConnection, location: str, session_id: str) -> web.Response:
    """201 with the answer: exactly `application/sdp` (no charset parameter), the resource, the session."""
    return web.Response(
        status=201,
        body=pc.localDescription.sdp.encode(),
        headers={"Content-Type": SDP_TYPE, "Location": location, "X-Session-Id": session_id},
    )


class Viewer:
    """A WHEP viewer: its peer connection, its relayed tracks and its connection deadline; `aclose` ends them."""

    def __init__(self, viewer_id: str, pc: RTCPeerConnection) -> None:
        self.id = viewer_id
        self.pc = pc
        self.tracks: list[RelayTrack] = []
        self.connected = asyncio.Event()
        self.deadline: asyncio.Task | None = None

    async def aclose(self) -> None:
        if self.deadline is not None and self.deadline is not asyncio.current_task():
            self.deadline.cancel()
            await asyncio.gather(self.deadline, return_exceptions=True)
        # Its sender stops its track only if it ever started: a viewer that never connected would stay subscribed.
        for track in self.tracks:
            track.stop()
        await self.pc.close()


class WhipEndpoints:
    """The WHIP and WHEP routes of one gateway; owns the tasks that close viewers whose connection ended."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._tasks: set[asyncio.Task] = set()

    def register(self, app: web.Application) -> None:
        """Add the routes (each path's methods together: aiohttp keeps one resource per path only that way)."""
        router = app.router
        resources = {
            "/whip": {"POST": self.publish},
            "/whip/{session_id}": {"DELETE": self.end_publish},
            "/whep": {"POST": self.open_presenter},
            "/whep/{session_id}": {"POST": self.view, "DELETE": self.end_presenter},
            "/whep/{session_id}/{viewer_id}": {"DELETE": self.end_view},
        }
        for path, handlers in resources.items():
            allowed = ", ".join([*handlers, "OPTIONS"])
            for method, handler in handlers.items():
                router.add_route(method, path, handler)
            router.add_route("OPTIONS", path, _options(allowed, accepts_post="POST" in handlers))
            router.add_route("*", path, _not_allowed(allowed))  # PATCH (trickle ICE, ICE restart) and the rest
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, _app: web.Application) -> None:
        # After the gateway's own shutdown closed every session (and with it every viewer).
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def _observer(self) -> GatewayObserver:
        return self.gateway.observer

    def _authorize(self, request: web.Request) -> None:
        authorize(request, self.gateway.config.token, self._observer)

    async def _read_offer(self, request: web.Request) -> str:
        config = self.gateway.config
        return await read_sdp(request, config.max_sdp_bytes, self._observer, config.client_timeout_s)

    def _options(self, sdp: str, query: dict[str, str], **fixed: str) -> SessionOptions:
        """The options as POST /offer would read them from its JSON (offer.parse_offer: one rule for both)."""
        gateway = self.gateway
        _, options = parse_offer(
            {"sdp": sdp, "type": "offer", **query, **fixed},
            gateway.config.max_sdp_bytes,
            self._observer,
            presenter=gateway.presenter is not None,
            avatars=gateway.avatars,
        )
        return options

    def _session(self, request: web.Request, protocol: str | None = None) -> PeerSession:
        """The session named in the path (opened by `protocol`, when given), else 404."""
        session_id = request.match_info["session_id"]
        peer = self.gateway.peers.get(session_id)
        if peer is None or (protocol is not None and peer.protocol != protocol):
            opened = f" opened by {protocol.upper()}" if protocol else ""
            raise ApiError(404, f"no session {session_id!r}{opened}")
        return peer

    # -- WHIP
    async def publish(self, request: web.Request) -> web.Response:
        """A publisher's offer: camera (unless ?mode=presenter) and microphone (unless ?speech=push), sendonly."""
        self._authorize(request)
        require_sdp_type(request, self._observer)
        query = query_options(request, WHIP_QUERY)
        sdp = await self._read_offer(request)
        options = self._options(sdp, query)
        check_offer(
            sdp,
            self._observer,
            "WHIP",
            sends=(
                *(("video",) if options.mode == "camera" else ()),
                *(("audio",) if options.speech == "microphone" else ()),
            ),
        )
        with self.gateway.session_slot():
            peer = await self.gateway.open_session(sdp, options, need_video=False, protocol="whip")
        session_id = peer.session.id
        logger.info("WHIP publisher at /whip/%s", session_id, extra={"session_id": session_id})
        return created(peer.pc, f"/whip/{session_id}", session_id)

    async def end_publish(self, request: web.Request) -> web.Response:
        self._authorize(request)
        peer = self._session(request, "whip")
        await self.gateway.close_session(peer.session.id)
        return web.json_response({"closed": peer.session.id})

    # -- WHEP
    async def open_presenter(self, request: web.Request) -> web.Response:
        """A viewer's offer without a session: a presenter session of its own, its speech pushed
        (WebSocket or POST /speech/{id}); the id comes back in Location and X-Session-Id."""
        self._authorize(request)
        require_sdp_type(request, self._observer)
        query = query_options(request, PRESENTER_QUERY)
        if self.gateway.presenter is None and "avatar" not in query:
            raise ApiError(
                404,
                "this gateway has no presenter (start it with --presenter_image or --presenter_clip, or name an "
                "?avatar=); to watch a session, POST /whep/{session_id}",
            )
        sdp = await self._read_offer(request)
        options = self._options(sdp, query, speech="push", mode="presenter")
        check_offer(sdp, self._observer, "WHEP", receives=("video",))
        with self.gateway.session_slot():
            peer = await self.gateway.open_session(sdp, options, protocol="whep")
        session_id = peer.session.id
        logger.info("WHEP presenter session at /whep/%s", session_id, extra={"session_id": session_id})
        return created(peer.pc, f"/whep/{session_id}", session_id)

    async def end_presenter(self, request: web.Request) -> web.Response:
        self._authorize(request)
        peer = self._session(request, "whep")
        await self.gateway.close_session(peer.session.id)
        return web.json_response({"closed": peer.session.id})

    async def view(self, request: web.Request) -> web.Response:
        """Another receiver of a session's lip-synced video and delayed audio."""
        self._authorize(request)
        require_sdp_type(request, self._observer)
        query_options(request, frozenset())
        peer = self._session(request)
        outputs = peer.outputs
        if outputs is None:
            raise ApiError(409, f"session {peer.session.id!r} sends its output elsewhere; it cannot be watched by WHEP")
        sdp = await self._read_offer(request)
        check_offer(sdp, self._observer, "WHEP", receives=("video",))
        if len(peer.viewers) >= MAX_VIEWERS:
            self._observer.rejected("max_viewers")
            raise ApiError(
                503,
                f"session {peer.session.id} already has {MAX_VIEWERS} viewers; try again later",
                **{"Retry-After": RETRY_AFTER_S},
            )
        viewer = await self._open_viewer(peer, outputs, sdp)
        session_id = peer.session.id
        logger.info("WHEP viewer %s joined", viewer.id, extra={"session_id": session_id})
        return created(viewer.pc, f"/whep/{session_id}/{viewer.id}", session_id)

    async def end_view(self, request: web.Request) -> web.Response:
        self._authorize(request)
        peer = self._session(request)
        viewer_id = request.match_info["viewer_id"]
        if viewer_id not in peer.viewers:
            raise ApiError(404, f"no viewer {viewer_id!r} of session {peer.session.id!r}")
        await self._close_viewer(peer, viewer_id)
        return web.json_response({"closed": viewer_id, "session_id": peer.session.id})

    async def _open_viewer(self, peer: PeerSession, outputs: SessionOutputs, sdp: str) -> Viewer:
        session_id = peer.session.id
        pc = RTCPeerConnection(rtc_configuration())
        viewer = Viewer(uuid.uuid4().hex[:12], pc)
        peer.viewers[viewer.id] = viewer  # holds its place under MAX_VIEWERS while it is set up

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                viewer.connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self._spawn(self._close_viewer(peer, viewer.id), f"close-viewer-{viewer.id}")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            kinds: set[str] = set()
            for transceiver in pc.getTransceivers():
                if transceiver.kind in kinds:
                    transceiver.direction = "inactive"
                    continue
                kinds.add(transceiver.kind)
                track = outputs.subscribe(transceiver.kind)
                viewer.tracks.append(track)
                pc.addTrack(track)
                # A viewer only receives: media it offers to send is refused, not received and left unread.
                transceiver.direction = "sendonly"
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises many types for a bad SDP; all are the peer's fault here
            peer.viewers.pop(viewer.id, None)
            await viewer.aclose()
            if self.gateway.peers.get(session_id) is not peer:
                raise ApiError(404, f"session {session_id!r} ended while the viewer was set up") from exc
            self._observer.rejected("bad_sdp")
            logger.info("WHEP offer refused: %s", exc, extra={"session_id": session_id})
            raise ApiError(400, f"cannot use this offer: {exc}") from exc
        if self.gateway.peers.get(session_id) is not peer or peer.viewers.get(viewer.id) is not viewer:
            await viewer.aclose()  # the session ended meanwhile (and closed this viewer), or the viewer left
            raise ApiError(404, f"session {session_id!r} ended while the viewer was set up")
        viewer.deadline = asyncio.create_task(self._expire(peer, viewer), name=f"viewer-deadline-{viewer.id}")
        return viewer

    async def _expire(self, peer: PeerSession, viewer: Viewer) -> None:
        """Close a viewer that has not connected in time (the same deadline as a session's)."""
        timeout = self.gateway.config.connect_timeout_s
        try:
            await asyncio.wait_for(viewer.connected.wait(), timeout)
        except TimeoutError:
            logger.info(
                "viewer %s did not connect within %g s: closing",
                viewer.id,
                timeout,
                extra={"session_id": peer.session.id},
            )
            self._observer.rejected("connect_timeout")
            await self._close_viewer(peer, viewer.id)

    async def _close_viewer(self, peer: PeerSession, viewer_id: str) -> None:
        viewer = peer.viewers.pop(viewer_id, None)  # whoever takes it out closes it, once
        if viewer is None:
            return
        await viewer.aclose()
        logger.info("WHEP viewer %s left", viewer_id, extra={"session_id": peer.session.id})


def _options(allowed: str, *, accepts_post: bool):
    """OPTIONS: the methods, and the offer type POST takes (RFC 9725 section 4.2); no token needed (CORS preflight)."""

    async def handler(_request: web.Request) -> web.Response:
        headers = {"Allow": allowed}
        if accepts_post:
            headers["Accept-Post"] = SDP_TYPE
        return web.Response(status=204, headers=headers)

    return handler


def _not_allowed(allowed: str):
    async def handler(request: web.Request) -> web.Response:
        detail = " (trickle ICE and ICE restarts are not supported: put every candidate in the offer)"
        raise ApiError(
            405,
            f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
            + (detail if request.method == "PATCH" else ""),
            Allow=allowed,
        )

    return handler
