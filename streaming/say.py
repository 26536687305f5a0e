"""POST /say/{session_id}: the gateway speaks typed text (espeak-ng, streaming/tts.py) into a push-speech session.

Body {"text": ..., "voice"?: "en-us", "rate"?: words per minute, "interrupt"?: true}. The speech is queued
exactly like PCM pushed to /speech (resampled there to 16 kHz), so a presenter or push-speech session can
be tried with no microphone and no TTS service. The reply: {"speech_s", "sample_rate", "voice", "rate",
"queued_s", "received_s"} (and "dropped_s" after an interrupt); refusals are JSON 4xx like every route's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from lipsync.streaming import tts
from lipsync.streaming.api import ApiError, authorize, read_json_body
from lipsync.streaming.speech_source import SpeechQueueFull, SpeechRefused

if TYPE_CHECKING:
    from lipsync.streaming.server import Gateway

SAY_KEYS = {"text", "voice", "rate", "interrupt"}
MAX_BODY_BYTES = 16 * 1024  # 500 characters, even escaped as \uXXXX, fit with room to spare
# Syntheses at once per gateway: espeak-ng takes a core while it runs, and the sessions need the cores.
MAX_CONCURRENT = 2


class SayRoute:
    """The /say route of one gateway; it reads the gateway's sessions, config and observer."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.running = 0

    def register(self, app: web.Application) -> None:
        app.router.add_post("/say/{session_id}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        gateway = self.gateway
        authorize(request, gateway.config.token, gateway.observer)
        session_id = request.match_info["session_id"]
        peer = gateway.peers.get(session_id)
        if peer is None:
            raise ApiError(404, f"no session {session_id!r}")
        push = peer.session.push_speech
        if push is None:
            raise ApiError(
                409, f'session {session_id} uses its microphone; /say needs one opened with "speech": "push"'
            )
        data = await read_json_body(request, MAX_BODY_BYTES, gateway.observer, "say", gateway.config.client_timeout_s)
        if not isinstance(data, dict):
            raise ApiError(400, f"say body must be a JSON object, got {type(data).__name__}")
        if unknown := sorted(set(data) - SAY_KEYS):
            raise ApiError(400, f"unknown say keys {unknown}; allowed: {sorted(SAY_KEYS)}")
        interrupt = data.get("interrupt", False)
        if not isinstance(interrupt, bool):
            raise ApiError(400, f"'interrupt' must be true or false, got {interrupt!r}")
        if self.running >= MAX_CONCURRENT:
            gateway.observer.rejected("say_busy")
            raise ApiError(429, f"{MAX_CONCURRENT} texts are being spoken already; try again", **{"Retry-After": "1"})
        self.running += 1
        try:
            speech = await tts.synthesize(data.get("text"), data.get("voice"), data.get("rate"))
        except tts.TextRefused as exc:
            gateway.observer.rejected("bad_say")
            raise ApiError(413 if isinstance(exc, tts.TextTooLong) else 400, str(exc)) from exc
        except tts.SynthesisError as exc:
            raise ApiError(503, f"cannot speak now: {exc}") from exc
        finally:
            self.running -= 1
        if gateway.peers.get(session_id) is not peer:
            raise ApiError(410, f"session {session_id} closed while its text was being spoken")
        reply: dict[str, object] = {}
        if interrupt:
            reply["dropped_s"] = round(push.interrupt(), 3)
        try:
            await push.push(speech.samples, speech.sample_rate)
        except SpeechRefused as exc:
            raise ApiError(413 if isinstance(exc, SpeechQueueFull) else 400, str(exc)) from exc
        reply |= {
            "speech_s": round(speech.seconds, 4),
            "sample_rate": speech.sample_rate,
            "voice": speech.voice,
            "rate": speech.rate_wpm,
            "queued_s": round(push.queued_s, 3),
            "received_s": round(push.received_s, 4),
        }
        return web.json_response(reply)
