"""The HTTP boundary's shared pieces: JSON refusals, reading a bounded JSON body, the token check, log redaction."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re

from aiohttp import web

from lipsync.streaming.metrics import GatewayObserver


class ApiError(web.HTTPException):
    """A refusal with a JSON body naming what was wrong."""

    def __init__(self, status: int, message: str, **headers: str) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": message, "status": status}),
            content_type="application/json",
            headers=headers or None,
        )


@web.middleware
async def json_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (413 from client_max_size, 404, 405) get the same JSON shape.
        raise ApiError(exc.status, exc.reason or exc.text or "refused") from exc


async def read_body(request: web.Request, limit: int, observer: GatewayObserver, what: str, timeout_s: float) -> bytes:
    """The request's body, read to its end (it may arrive in several TCP segments), at most `limit`
    bytes, within `timeout_s`: a client that stalls mid-body gets 408 instead of holding a handler."""
    if (request.content_length or 0) > limit:
        observer.rejected("too_large")
        raise ApiError(413, f"{what} body of {request.content_length} bytes is over the {limit}-byte limit")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while len(body) <= limit:
                piece = await request.content.read(limit + 1 - len(body))
                if not piece:
                    break
                body += piece
    except TimeoutError as exc:
        observer.rejected("slow_client")
        raise ApiError(408, f"{what} body not received within {timeout_s:g} s ({len(body)} bytes arrived)") from exc
    if len(body) > limit:
        observer.rejected("too_large")
        raise ApiError(413, f"{what} body is over the {limit}-byte limit")
    return bytes(body)


async def read_json_body(
    request: web.Request, limit: int, observer: GatewayObserver, what: str, timeout_s: float = 10.0
) -> object:
    """The request's JSON body (read_body's rules), parsed."""
    if request.content_type != "application/json":
        observer.rejected("content_type")
        raise ApiError(415, f"POST /{what} needs Content-Type application/json, got {request.content_type!r}")
    body = await read_body(request, limit, observer, what, timeout_s)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        observer.rejected(f"bad_{what}")
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        observer.rejected(f"bad_{what}")
        raise ApiError(400, f"{what} JSON is nested too deeply") from exc


def authorize(request: web.Request, token: str | None, observer: GatewayObserver) -> None:
    """Refuse with 401 unless the request carries the token ("Authorization: Bearer" or ?token=)."""
    if not token:
        return
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    # The scheme is case-insensitive (RFC 9110 section 11.1): "bearer" is as good as "Bearer".
    given = credentials.strip() if scheme.lower() == "bearer" else request.query.get("token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        observer.rejected("unauthorized")
        raise ApiError(401, "missing or wrong token", **{"WWW-Authenticate": "Bearer"})


class RedactTokens(logging.Filter):
    """Replaces the value of every `token=` query parameter in a log line: access logs are read by many."""

    PATTERN = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.PATTERN.sub(r"\1REDACTED", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def redact_access_log() -> None:
    """Install RedactTokens on aiohttp's access logger once (whoever runs the app logs through it)."""
    access = logging.getLogger("aiohttp.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
