"""What a POST /offer body must hold, checked once: the SDP, and the session's options."""

from __future__ import annotations

from lipsync.streaming.api import ApiError
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.session import SessionOptions

OFFER_KEYS = {"sdp", "type", "speech", "mode"}


def parse_offer(
    data: object, max_sdp_bytes: int, observer: GatewayObserver, *, presenter: bool
) -> tuple[str, SessionOptions]:
    """(sdp, options) from a decoded offer body, or ApiError naming the first thing wrong with it.

    The speech and mode values are checked by SessionOptions itself, so the rule lives in one place.
    """
    if not isinstance(data, dict):
        raise ApiError(400, f"offer must be a JSON object, got {type(data).__name__}")
    if unknown := sorted(set(data) - OFFER_KEYS):
        raise ApiError(400, f"unknown offer keys {unknown}; allowed: {sorted(OFFER_KEYS)}")
    sdp, kind = data.get("sdp"), data.get("type")
    if kind != "offer":
        raise ApiError(400, f"'type' must be 'offer', got {kind!r}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ApiError(400, "'sdp' must be a non-empty string")
    if len(sdp.encode()) > max_sdp_bytes:
        observer.rejected("too_large")
        raise ApiError(413, f"SDP of {len(sdp.encode())} bytes is over the {max_sdp_bytes}-byte limit")
    try:
        options = SessionOptions(speech=data.get("speech", "microphone"), mode=data.get("mode", "camera"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    if options.mode == "presenter" and not presenter:
        raise ApiError(400, "presenter mode needs --presenter_image or --presenter_clip on the gateway")
    return sdp, options
