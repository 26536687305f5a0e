"""What a POST /offer body must hold, checked once: the SDP, and the session's options."""

from __future__ import annotations

from collections.abc import Collection

from lipsync.streaming.api import ApiError
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.session import SessionOptions

OFFER_KEYS = {"sdp", "type", "speech", "mode", "avatar"}


def parse_offer(
    data: object,
    max_sdp_bytes: int,
    observer: GatewayObserver,
    *,
    presenter: bool,
    avatars: Collection[str] = (),
) -> tuple[str, SessionOptions]:
    """(sdp, options) from a decoded offer body, or ApiError naming the first thing wrong with it.

    The speech, mode and avatar values are checked by SessionOptions itself, so the rule lives in one
    place; whether the avatar is one this gateway serves (`avatars`) is checked here.
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
        options = SessionOptions(
            speech=data.get("speech", "microphone"), mode=data.get("mode", "camera"), avatar=data.get("avatar")
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    if options.avatar is not None and options.avatar not in avatars:
        known = ", ".join(sorted(avatars)) if avatars else "none (start the gateway with --avatar DIR)"
        raise ApiError(400, f"unknown avatar {options.avatar!r}; this gateway serves: {known}")
    # An avatar brings its own presenter face (its loop); only the default needs one configured.
    if options.mode == "presenter" and not presenter and options.avatar is None:
        raise ApiError(400, "presenter mode needs --presenter_image or --presenter_clip on the gateway")
    return sdp, options
