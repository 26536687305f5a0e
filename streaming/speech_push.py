"""The two ways to push speech into a session: a WebSocket of PCM messages, or one HTTP POST of PCM.

Both carry PCM s16le mono at a declared rate, cut anywhere (PcmStream), into a session's PushSpeech;
protocol details are in the module docstring of streaming/server.py and in streaming/README.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from lipsync.streaming.api import ApiError
from lipsync.streaming.speech_source import PcmStream, PushSpeech, SpeechQueueFull, SpeechRefused

logger = logging.getLogger(__name__)


def sample_rate(value: str | None) -> int | None:
    """The ?rate= query value as an int, None when absent, 400 when it is not an integer."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ApiError(400, f"rate must be an integer sample rate in Hz, got {value!r}") from exc


class _ClientNotReading(Exception):
    """A reply could not be written within the client timeout: the client has stopped reading."""


class SpeechSocket:
    """One /speech WebSocket: PCM in, a JSON reply per message out, each reply written within a deadline.

    A client that pushes but never reads its replies would fill the socket's buffers and stall the
    handler in a write forever (aiohttp waits for the buffer to drain): past `reply_timeout_s` the
    connection is aborted instead, and `on_stalled` is told.
    """

    def __init__(
        self,
        request: web.Request,
        target: PushSpeech,
        max_message_bytes: int,
        reply_timeout_s: float,
        on_stalled: Callable[[], None] = lambda: None,
    ) -> None:
        self.request = request
        self.target = target
        self.reply_timeout_s = reply_timeout_s
        self.on_stalled = on_stalled
        self.ws = web.WebSocketResponse(max_msg_size=max_message_bytes, heartbeat=20)

    async def reply(self, payload: dict) -> None:
        try:
            await asyncio.wait_for(self.ws.send_json(payload), self.reply_timeout_s)
        except TimeoutError as exc:
            raise _ClientNotReading from exc

    def abort(self) -> None:
        """Drop the connection without a closing handshake (which a stalled client would not read either)."""
        if self.request.transport is not None:
            self.request.transport.abort()

    async def close(self, message: str) -> None:
        """End the socket from the server side (its session closed), aborting if the close cannot be sent."""
        try:
            await asyncio.wait_for(self.ws.close(code=WSCloseCode.GOING_AWAY, message=message.encode()), 1.0)
        except (TimeoutError, ConnectionError):
            self.abort()

    async def serve(self) -> web.WebSocketResponse:
        """Binary messages are PCM; text messages are JSON controls (config, interrupt); each is answered."""
        rate = sample_rate(self.request.query.get("rate"))
        await self.ws.prepare(self.request)
        try:
            await self._messages(rate)
        except _ClientNotReading:
            logger.warning("speech socket: the client read no reply for %g s; disconnected", self.reply_timeout_s)
            self.on_stalled()
            self.abort()
        return self.ws

    async def _messages(self, rate: int | None) -> None:
        pcm = PcmStream()
        target = self.target
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                if rate is None:
                    await self.reply(
                        {"type": "error", "error": "declare the sample rate first (?rate= or a config message)"}
                    )
                    continue
                try:
                    await target.push_pcm(pcm.feed(msg.data), rate)
                    await self.reply({"type": "queued", "queued_s": round(target.queued_s, 3)})
                except SpeechRefused as exc:
                    await self.reply({"type": "error", "error": str(exc)})
            elif msg.type == WSMsgType.TEXT:
                try:
                    control = json.loads(msg.data)
                    kind = control["type"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    await self.reply(
                        {"type": "error", "error": f"text messages must be JSON with a 'type': {msg.data[:80]!r}"}
                    )
                    continue
                if kind == "interrupt":
                    await self.reply({"type": "interrupted", "dropped_s": round(target.interrupt(), 3)})
                elif kind == "config" and isinstance(control.get("sample_rate"), int):
                    rate = control["sample_rate"]
                    await self.reply({"type": "config", "sample_rate": rate})
                else:
                    await self.reply({"type": "error", "error": f"unknown control message {repr(control)[:80]}"})
            elif msg.type == WSMsgType.ERROR:
                logger.info("speech socket closed with %s", self.ws.exception())


async def http_body(request: web.Request, target: PushSpeech, idle_timeout_s: float = 10.0) -> web.Response:
    """The (chunked) body is PCM at ?rate=; answered once it has all been read.

    The body may stream for as long as the speech lasts, but a pause of `idle_timeout_s` with no byte
    ends it with 408 (what arrived before stays queued): a stalled uploader holds no handler."""
    rate = sample_rate(request.query.get("rate"))
    if rate is None:
        raise ApiError(400, "POST /speech needs ?rate=<sample rate in Hz>")
    if request.query.get("interrupt") in ("1", "true"):
        target.interrupt()
    pcm = PcmStream()
    try:
        while chunk := await asyncio.wait_for(request.content.read(64 * 1024), idle_timeout_s):
            await target.push_pcm(pcm.feed(chunk), rate)
    except SpeechRefused as exc:
        raise ApiError(413 if isinstance(exc, SpeechQueueFull) else 400, str(exc)) from exc
    except TimeoutError as exc:
        raise ApiError(408, f"no speech bytes for {idle_timeout_s:g} s; {target.received_s:.2f} s were queued") from exc
    reply = {"queued_s": round(target.queued_s, 3), "received_s": round(target.received_s, 3)}
    if pcm.pending_bytes:  # a body that ends in half a sample: said, not silently dropped
        reply["unpaired_trailing_bytes"] = pcm.pending_bytes
    return web.json_response(reply)
