"""The two ways to push speech into a session: a WebSocket of PCM messages, or one HTTP POST of PCM.

Both carry PCM s16le mono at a declared rate, cut anywhere (PcmStream), into a session's PushSpeech;
protocol details are in the module docstring of streaming/server.py and in streaming/README.md.
"""

from __future__ import annotations

import json
import logging

from aiohttp import WSMsgType, web

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


async def websocket(request: web.Request, target: PushSpeech, max_message_bytes: int) -> web.WebSocketResponse:
    """Binary messages are PCM; text messages are JSON controls (config, interrupt); each is answered."""
    rate = sample_rate(request.query.get("rate"))
    ws = web.WebSocketResponse(max_msg_size=max_message_bytes, heartbeat=20)
    await ws.prepare(request)
    pcm = PcmStream()
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            if rate is None:
                await ws.send_json(
                    {"type": "error", "error": "declare the sample rate first (?rate= or a config message)"}
                )
                continue
            try:
                await target.push_pcm(pcm.feed(msg.data), rate)
                await ws.send_json({"type": "queued", "queued_s": round(target.queued_s, 3)})
            except SpeechRefused as exc:
                await ws.send_json({"type": "error", "error": str(exc)})
        elif msg.type == WSMsgType.TEXT:
            try:
                control = json.loads(msg.data)
                kind = control["type"]
            except (json.JSONDecodeError, KeyError, TypeError):
                await ws.send_json(
                    {"type": "error", "error": f"text messages must be JSON with a 'type': {msg.data[:80]!r}"}
                )
                continue
            if kind == "interrupt":
                await ws.send_json({"type": "interrupted", "dropped_s": round(target.interrupt(), 3)})
            elif kind == "config" and isinstance(control.get("sample_rate"), int):
                rate = control["sample_rate"]
                await ws.send_json({"type": "config", "sample_rate": rate})
            else:
                await ws.send_json({"type": "error", "error": f"unknown control message {control!r}"})
        elif msg.type == WSMsgType.ERROR:
            logger.info("speech socket closed with %s", ws.exception())
    return ws


async def http_body(request: web.Request, target: PushSpeech) -> web.Response:
    """The (chunked) body is PCM at ?rate=; answered once it has all been read."""
    rate = sample_rate(request.query.get("rate"))
    if rate is None:
        raise ApiError(400, "POST /speech needs ?rate=<sample rate in Hz>")
    if request.query.get("interrupt") in ("1", "true"):
        target.interrupt()
    pcm = PcmStream()
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            await target.push_pcm(pcm.feed(chunk), rate)
    except SpeechRefused as exc:
        raise ApiError(413 if isinstance(exc, SpeechQueueFull) else 400, str(exc)) from exc
    reply = {"queued_s": round(target.queued_s, 3), "received_s": round(target.received_s, 3)}
    if pcm.pending_bytes:  # a body that ends in half a sample: said, not silently dropped
        reply["unpaired_trailing_bytes"] = pcm.pending_bytes
    return web.json_response(reply)
