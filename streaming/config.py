"""The gateway's settings: one frozen dataclass, validated on creation; the CLI is generated from it."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.avatar import load_avatars
from lipsync.client.backends import BACKEND_NAMES, DEFAULT_TRITON_URL
from lipsync.client.blend import BLEND_MODES, DEFAULT_BLEND
from lipsync.client.cli_config import add_dataclass_arguments, config_from_args, config_from_mapping
from lipsync.client.stream_publish import PublishUrl, redact_url

BACKENDS = BACKEND_NAMES  # one list, client.backends
logger = logging.getLogger(__name__)

TOKEN_ENV = "LIPSYNC_GATEWAY_TOKEN"
# Live audio reaches the session about this late: aiortc's receiver holds each audio frame until
# 4 more 20 ms packets arrived, and a packet's first sample was captured 20 ms before it was sent.
# Measured on loopback by benchmarks/input_hold.py (results/input_hold.json); a session adds the
# arrival jitter it sees on top (streaming/delay.py).
MIC_INPUT_MS = 100


def _opt(help: str, **kwargs: Any) -> Any:
    return field(metadata={"help": help, **kwargs.pop("meta", {})}, **kwargs)


class AppendTuple(argparse.Action):
    """A repeatable flag collected into a tuple: `--avatar A --avatar B` -> ("A", "B").

    argparse's own "append" appends to the default in place, which a frozen config's tuple default
    cannot take; this builds a new tuple each time instead.
    """

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, (*(getattr(namespace, self.dest) or ()), values))


@dataclass(frozen=True)
class GatewayConfig:
    host: str = _opt("address to listen on", default="127.0.0.1")
    port: int = _opt("TCP port (0 picks a free one)", default=8080)
    token: str | None = _opt(f"bearer token required for /offer, /speech and stats (or set {TOKEN_ENV})", default=None)
    backend: str = _opt("where the generator runs", default="triton", meta={"choices": BACKENDS})
    triton_url: str = _opt("Triton gRPC address (backend=triton)", default=DEFAULT_TRITON_URL)
    model: str = _opt(
        "served model name (backend=triton); the default is the live model, which needs 75 ms of future audio",
        default=contract.LIVE_MODEL,
    )
    model_path: str | None = _opt(
        "ONNX model or checkpoint for the in-process backends (default: the live model's, "
        "model_repository/wav2lip_live/1/model.onnx or training/weights/wav2lip_cpu_lookahead75.pt)",
        default=None,
    )
    backend_timeout_s: float = _opt("give up on one inference request after this long", default=1.0)
    backend_retry_s: float = _opt(
        "after the backend is found down, pass frames through this long before retrying", default=1.0
    )
    fps: float = _opt("frame rate of the presenter and of the mel window indexing", default=25.0)
    compute_budget_ms: int = _opt(
        "time a frame may spend once its audio is in (inference and blending): with adaptive_budget, the ceiling "
        "of the measured budget (and the budget until frames have been timed)",
        default=150,
    )
    adaptive_budget: bool = _opt(
        "let the compute budget follow the p99 of recent frames' inference + blend times (within "
        "budget_floor_ms..compute_budget_ms); "
        "a session's delay follows it in 20 ms steps taken in silence",
        default=True,
    )
    budget_floor_ms: int = _opt("the adaptive compute budget never goes below this", default=30)
    warmup: bool = _opt("send warm-up requests of every batch size up to 8 at start", default=True)
    inference_concurrency: int = _opt("requests in flight per session", default=6)
    max_sessions: int = _opt("concurrent sessions; more get 503", default=4)
    max_request_bytes: int = _opt("largest /offer body", default=128 * 1024)
    max_sdp_bytes: int = _opt("largest SDP inside an offer", default=64 * 1024)
    max_frame_width: int = _opt("wider incoming video frames are scaled down to fit and counted", default=1920)
    max_frame_height: int = _opt("taller incoming video frames are scaled down to fit and counted", default=1080)
    max_speech_seconds: float = _opt(
        "pushed speech queued ahead of playback per session; more is refused", default=60.0
    )
    max_speech_message_bytes: int = _opt("largest binary message on /speech", default=1024 * 1024)
    vad_mode: int = _opt("webrtcvad aggressiveness 0..3", default=3)
    vad_hangover_ms: int = _opt("keep the mouth moving this long after speech stops", default=120)
    vad_energy_dbfs: float = _opt("frames quieter than this are silence whatever the VAD says", default=-50.0)
    blend: str = _opt(
        "mouth: only lips, mouth and chin change, colours matched to the face; lower_face: the whole lower half",
        default=DEFAULT_BLEND,
        meta={"choices": BLEND_MODES},
    )
    landmark_every: int = _opt(
        "blend=mouth: measure the face mesh every N frames (about 4.5 ms each on 2 cores); between runs the "
        "mouth shape follows the tracked face box. 3 keeps the mouth blend's extra cost near 3 ms per frame",
        default=3,
    )
    presenter_image: str | None = _opt("still face for presenter sessions", default=None)
    presenter_clip: str | None = _opt("looping face clip for presenter sessions", default=None)
    publish: str | None = _opt(
        "publish one server-owned presenter session (no WebRTC peer) live to rtmp://HOST[:PORT]/APP/KEY (or "
        "rtmps://); needs presenter_image or presenter_clip. Its speech is pushed to /speech/{id} (the id is logged "
        "and in /healthz); the stream reconnects forever with back-off (docs/rtmp.md)",
        default=None,
    )
    avatars: tuple[str, ...] = _opt(
        "an enrolled avatar folder (lipsync-train enroll); repeat for several. Each gets its own model "
        "(backend=triton: its served model avatar_<name>; in-process: its own weights) and its loop as the "
        'presenter face; an offer picks one with "avatar": NAME',
        default=(),
        meta={"flag": "--avatar", "action": AppendTuple, "metavar": "DIR"},
    )
    ice_loopback: bool = _opt(
        "offer 127.0.0.1 as an ICE host candidate (loopback tests, same-host peers)", default=False
    )
    session_idle_s: float = _opt("close a session whose peer sent nothing for this long", default=30.0)
    connect_timeout_s: float = _opt(
        "close a session whose peer has not connected (ICE + DTLS) this long after its offer", default=15.0
    )
    client_timeout_s: float = _opt(
        "a client gets this long to send a request body, and a speech socket this long to read each reply; "
        "slower ones are answered 408 or disconnected, so a stalled client holds nothing",
        default=10.0,
    )
    log_level: str = _opt("logging level", default="INFO")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0 < self.connect_timeout_s <= 300:
            raise ValueError(f"connect_timeout_s must be in (0, 300], got {self.connect_timeout_s}")
        if not 0 < self.client_timeout_s <= 300:
            raise ValueError(f"client_timeout_s must be in (0, 300], got {self.client_timeout_s}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not 1 <= self.fps <= 60:
            raise ValueError(f"fps must be in 1..60, got {self.fps}")
        if not 10 <= self.compute_budget_ms <= 5000:
            raise ValueError(f"compute_budget_ms must be in 10..5000, got {self.compute_budget_ms}")
        if not 10 <= self.budget_floor_ms <= self.compute_budget_ms:
            raise ValueError(
                f"budget_floor_ms must be in 10..compute_budget_ms ({self.compute_budget_ms}), got {self.budget_floor_ms}"
            )
        if self.blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")
        if not 0 <= self.vad_mode <= 3:
            raise ValueError(f"vad_mode must be in 0..3, got {self.vad_mode}")
        for name in (
            "max_sessions",
            "inference_concurrency",
            "max_request_bytes",
            "max_sdp_bytes",
            "max_frame_width",
            "max_frame_height",
            "max_speech_message_bytes",
            "landmark_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.backend_timeout_s <= 0 or self.backend_retry_s < 0 or self.max_speech_seconds <= 0:
            raise ValueError("backend_timeout_s and max_speech_seconds must be positive, backend_retry_s not negative")
        if self.publish is not None:
            PublishUrl(self.publish)  # a bad scheme, host or key, or a protocol FFmpeg lacks: said at start
            if not (self.presenter_image or self.presenter_clip):
                raise ValueError("publish needs presenter_image or presenter_clip: the face it publishes")
        if self.presenter_image and self.presenter_clip:
            raise ValueError("give presenter_image or presenter_clip, not both")
        for name in ("presenter_image", "presenter_clip"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name} {path!r} is not a file")
        if isinstance(self.avatars, str) or not all(isinstance(a, str | Path) for a in self.avatars):
            raise ValueError(f"avatars must be a list of avatar folders, got {self.avatars!r}")
        object.__setattr__(self, "avatars", tuple(str(a) for a in self.avatars))  # a JSON list becomes a tuple
        # Checked here, so a bad folder (or one without the files this backend runs) stops the gateway at start.
        for avatar in load_avatars(self.avatars).values():
            if self.backend != "triton":
                avatar.weights_for(self.backend)

    def delay_ms(self, speech: str = "microphone", lookahead_ms: float = contract.FULL_LOOKAHEAD_MS) -> int:
        """The added delay a session starts with before anything was measured (the budget at its ceiling);
        streaming/delay.py moves it with the measured budget and input jitter.

        Live microphone speech: the served model's look-ahead (how far past a frame its mel window
        reaches: 200 ms for the released alignment, less for a low-look-ahead model; the backend
        reads it from the model), plus the receive path of live audio (aiortc holds audio 80 ms,
        plus one 20 ms packet), plus the compute budget. Pushed speech is fed into the session a
        look-ahead ahead of the clock, so only the compute budget remains.
        """
        if speech == "push":
            return self.compute_budget_ms
        return round(lookahead_ms) + MIC_INPUT_MS + self.compute_budget_ms

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments for client.backends.create_backend."""
        # The server drops requests still queued after this: a frame past its budget is passed through anyway.
        timeout = min(self.backend_timeout_s, self.compute_budget_ms / 1000)
        return {
            "weights": self.model_path or live_weights(self.backend),
            "triton_url": self.triton_url,
            "triton_model": self.model,
            "timeout_s": timeout,
        }

    def avatar_backend_options(self, avatar) -> dict[str, Any]:
        """create_backend keyword arguments for an avatar (client.avatar.Avatar): its own weights in-process,
        its own served model on Triton; the deadline is the default backend's."""
        options = self.backend_options()
        options["triton_model"] = avatar.triton_model
        options["weights"] = None if self.backend == "triton" else avatar.weights_for(self.backend)
        return options

    def public(self) -> dict[str, Any]:
        """The resolved config without the secret, for logs and /healthz."""
        data = asdict(self)
        data["token"] = "***" if self.token else None
        data["publish"] = redact_url(self.publish)  # the stream key is a secret too
        return data


def live_weights(backend: str) -> Path | None:
    """The live default's weights for an in-process backend (the served model's name covers backend=triton);
    None, so the backend takes its own default (the 200 ms model), where they were not exported."""
    path = {"onnxruntime": layout.live_onnx_model(), "pytorch": layout.SHIPPED_LIVE_GENERATOR}.get(backend)
    if path is None or path.is_file():
        return path
    logger.warning("the live model %s is missing (`lipsync-export --live` writes it); using the 200 ms model", path)
    return None


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser(prog="lipsync-gateway", description="WebRTC lip-sync gateway")
    parser.add_argument("--config", type=Path, default=None, help="JSON file of GatewayConfig keys (flags override)")
    add_dataclass_arguments(parser, GatewayConfig)
    args = parser.parse_args(argv)
    config = config_from_args(GatewayConfig, args)
    if args.config is not None:
        explicit = {k: v for k, v in vars(args).items() if k != "config" and v != parser.get_default(k)}
        config = config_from_mapping(GatewayConfig, {**json.loads(args.config.read_text()), **explicit})
    if config.token is None and os.environ.get(TOKEN_ENV):
        config = replace(config, token=os.environ[TOKEN_ENV])
    return config
