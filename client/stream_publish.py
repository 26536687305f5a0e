"""Publishing lip-synced video live: H.264 + AAC in FLV to an RTMP server (MPEG-TS over SRT where FFmpeg
has it), through PyAV only, with reconnection; the offline command and the gateway both use it.

One worker thread owns the connection: it encodes, muxes and writes, so a slow or dead server never
blocks whoever makes the frames. Frames reach it through a bounded queue. While the server is away
the worker keeps consuming the queue and drops (and counts) what it cannot send, reconnecting with
back-off (0.5 s doubling to 8 s); the stream then goes on from the current position, as a live
stream must, with timestamps that never go back. docs/rtmp.md has the command lines and behaviour.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import av
import cv2
import numpy as np

from lipsync.client.video_io import SYNTHETIC_NOTICE, fps_fraction

logger = logging.getLogger(__name__)

# The container each transport carries: RTMP ingest takes FLV; SRT carries MPEG-TS.
FORMATS = {"rtmp": "flv", "rtmps": "flv", "srt": "mpegts"}
AUDIO_RATE = 48_000
VIDEO_TIME_BASE = Fraction(1, 1000)  # FLV stamps are milliseconds; an RTMP timestamp is too
TITLE = "Lip-synced video (synthetic)"


class PublishError(RuntimeError):
    """Publishing cannot start; the message names the (redacted) target and why."""


class PublishUrlError(PublishError, ValueError):
    """A publish URL that cannot be used: wrong scheme, no host, no stream key, a protocol FFmpeg lacks."""


class PublishUnreachable(PublishError):
    """The server did not take the stream within the start-up attempts."""


def protocol_available(scheme: str) -> bool:
    """Whether this PyAV's FFmpeg has the `scheme` protocol (the PyPI wheels have rtmp/rtmps, not srt).

    PyAV lists formats, not protocols. Opening a URL with a whitelist that excludes it asks without
    touching the network: FFmpeg finds the protocol first (or answers "Protocol not found"), then
    refuses it as not whitelisted.
    """
    try:
        av.open(f"{scheme}://127.0.0.1:9/probe/probe", "r", options={"protocol_whitelist": "file"}).close()
    except av.error.ProtocolNotFoundError:
        return False
    except (av.FFmpegError, OSError):
        return True
    return True


def redact_url(url: str | None) -> str | None:
    """The URL without credentials, query (SRT passphrases and stream ids) or stream key (the last path
    segment of an RTMP URL): what logs, /healthz and written configs may show."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    path = parts.path
    if parts.scheme.lower() in ("rtmp", "rtmps"):
        segments = [s for s in path.split("/") if s]
        path = "/" + "/".join([*segments[:-1], "***"]) if len(segments) >= 2 else path
    query = "?***" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{path}{query}"


@dataclass(frozen=True)
class PublishUrl:
    """A validated publish target: rtmp(s)://HOST[:PORT]/APP/KEY, or srt://HOST:PORT[?...] where FFmpeg has SRT."""

    url: str

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise PublishUrlError(f"a publish URL is a string such as rtmp://HOST/APP/KEY, got {self.url!r}")
        parts = urlsplit(self.url)
        scheme = parts.scheme.lower()
        # The bad value is named, never the whole URL: it may hold a stream key.
        if scheme not in FORMATS:
            raise PublishUrlError(
                f"publish URL scheme must be one of {', '.join(FORMATS)} (rtmp://HOST[:PORT]/APP/KEY), got "
                f"{parts.scheme + '://' if parts.scheme else 'no scheme'}"
            )
        if not parts.hostname:
            raise PublishUrlError(f"publish URL has no host: {redact_url(self.url)}")
        try:
            port = parts.port
        except ValueError as exc:
            raise PublishUrlError(f"publish URL has a bad port: {exc}") from exc
        if scheme == "srt" and port is None:
            raise PublishUrlError(f"an srt:// URL needs a port (srt://HOST:PORT), got {redact_url(self.url)}")
        if scheme != "srt" and len([s for s in parts.path.split("/") if s]) < 2:
            raise PublishUrlError(
                f"an {scheme}:// URL needs an application and a stream key (rtmp://HOST[:PORT]/APP/KEY), "
                f"got {redact_url(self.url)}"
            )
        if not protocol_available(scheme):
            raise PublishUrlError(
                f"{scheme}:// is not in this PyAV's FFmpeg (PyAV {av.__version__} was built without it); "
                "use rtmp:// or rtmps://"
            )

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    @property
    def format(self) -> str:
        return FORMATS[self.scheme]

    @property
    def redacted(self) -> str:
        return redact_url(self.url) or ""


@dataclass(frozen=True)
class ReconnectPolicy:
    """How often to try: waits of first_s doubling to max_s between attempts.

    `start_attempts` bounds the tries of `StreamPublisher.connect` (the offline command's start-up);
    None retries forever. After a drop mid-stream the worker always retries, for as long as it runs.
    """

    first_s: float = 0.5
    max_s: float = 8.0
    start_attempts: int | None = 5
    io_timeout_s: float = 5.0  # one connect or write may block this long (a server that stopped reading)

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"need 0 < first_s <= max_s, got first_s={self.first_s}, max_s={self.max_s}")
        if self.start_attempts is not None and self.start_attempts < 1:
            raise ValueError(f"start_attempts must be >= 1 or None (forever), got {self.start_attempts}")
        if self.io_timeout_s <= 0:
            raise ValueError(f"io_timeout_s must be positive, got {self.io_timeout_s}")

    def waits(self) -> Iterator[float]:
        wait = self.first_s
        while True:
            yield wait
            wait = min(2 * wait, self.max_s)


@dataclass(frozen=True)
class StreamSpec:
    """What is published: picture size, frame rate, audio channels, bit rates, keyframe interval."""

    width: int
    height: int
    fps: float = 25.0
    audio_channels: int = 1
    video_kbps: int = 2500  # the encoder's peak (VBV), so a live link sees a bounded rate
    audio_kbps: int = 128
    keyframe_s: float = 2.0  # ingest servers (YouTube, Twitch) ask for 2 s
    crf: int = 23
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2:
            raise ValueError(f"frame size must be at least 2x2, got {self.width}x{self.height}")
        if not (math.isfinite(self.fps) and 1 <= self.fps <= 120):
            raise ValueError(f"fps must be in 1..120, got {self.fps}")
        if self.audio_channels not in (1, 2):
            raise ValueError(f"audio_channels must be 1 or 2, got {self.audio_channels}")
        if self.video_kbps < 100 or self.audio_kbps < 16 or self.keyframe_s <= 0:
            raise ValueError("video_kbps >= 100, audio_kbps >= 16 and keyframe_s > 0 are needed")

    @property
    def even_size(self) -> tuple[int, int]:
        return self.width + self.width % 2, self.height + self.height % 2

    @property
    def gop(self) -> int:
        return max(1, round(self.keyframe_s * self.fps))


@dataclass
class PublishStats:
    """What happened to a published stream; `as_dict` is what /healthz and the offline summary show."""

    url: str
    state: str = "connecting"  # connecting, live, reconnecting, closed, failed
    connects: int = 0
    drops: int = 0  # live connections lost
    reconnects: int = 0  # connections made again after a drop (or after failed start-up attempts)
    frames_sent: int = 0
    audio_sent_s: float = 0.0
    frames_dropped: dict[str, int] = field(default_factory=dict)  # by reason: offline, queue_full, out_of_order
    audio_dropped_s: float = 0.0
    stalls: int = 0  # paced publishing: the source fell behind real time and the clock was set again
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state,
            "connects": self.connects,
            "drops": self.drops,
            "reconnects": self.reconnects,
            "frames_sent": self.frames_sent,
            "audio_sent_s": round(self.audio_sent_s, 3),
            "frames_dropped": dict(self.frames_dropped),
            "audio_dropped_s": round(self.audio_dropped_s, 3),
            "stalls": self.stalls,
            "last_error": self.last_error,
        }


class _Connection:
    """One connection to the server with its own encoders: each reconnection starts a fresh H.264 stream
    (its first frame a keyframe, its parameter sets in the new FLV header) at the current timestamps."""

    def __init__(self, target: PublishUrl, spec: StreamSpec, io_timeout_s: float) -> None:
        options = {"rw_timeout": str(int(io_timeout_s * 1e6))}
        if target.format == "flv":
            # RTMP cannot seek back: without this, closing tries to patch duration and size into the header.
            options["flvflags"] = "no_duration_filesize"
        self.container = av.open(target.url, "w", format=target.format, container_options=options)
        try:
            # The same label as the MP4 files (client/video_io.py); FLV carries it in onMetaData.
            self.container.metadata["comment"] = SYNTHETIC_NOTICE
            self.container.metadata["description"] = SYNTHETIC_NOTICE
            self.container.metadata["title"] = TITLE
            width, height = spec.even_size
            self.video = self.container.add_stream(
                "libx264",
                rate=fps_fraction(spec.fps),
                options={
                    "tune": "zerolatency",  # no B-frames, no look-ahead: a frame leaves as soon as it is encoded
                    "preset": spec.preset,
                    "crf": str(spec.crf),
                    "maxrate": f"{spec.video_kbps}k",
                    "bufsize": f"{2 * spec.video_kbps}k",
                    "g": str(spec.gop),
                    "keyint_min": str(spec.gop),
                    "sc_threshold": "0",  # keyframes on the interval only, where ingest servers expect them
                },
            )
            self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
            self.video.codec_context.time_base = VIDEO_TIME_BASE
            self.audio = self.container.add_stream("aac", rate=AUDIO_RATE)
            self.audio.layout = "mono" if spec.audio_channels == 1 else "stereo"
            self.audio.bit_rate = spec.audio_kbps * 1000
            self.container.start_encoding()  # connects: TCP, the RTMP handshake, publish; raises on refusal
        except BaseException:
            self.abort()
            raise
        self.width, self.height = width, height
        self.layout = self.audio.layout.name

    def write_video(self, image: np.ndarray, ms: int) -> None:
        if image.shape[1] != self.width or image.shape[0] != self.height:
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = ms, VIDEO_TIME_BASE
        self.container.mux(self.video.encode(frame))

    def write_audio(self, samples: np.ndarray, start: int) -> None:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32), format="fltp", layout=self.layout)
        frame.sample_rate = AUDIO_RATE
        frame.pts, frame.time_base = start, Fraction(1, AUDIO_RATE)
        self.container.mux(self.audio.encode(frame))

    def finish(self) -> None:
        """Flush both encoders and end the stream properly (the server sees an unpublish)."""
        try:
            self.container.mux(self.video.encode(None))
            self.container.mux(self.audio.encode(None))
        finally:
            self.abort()

    def abort(self) -> None:
        """Close without caring whether the server is still there (a broken pipe raises from the trailer)."""
        try:
            self.container.close()
        except (av.FFmpegError, OSError):
            pass


_STOP = object()


class StreamPublisher:
    """Sends BGR frames and float32 audio, stamped in seconds on one timeline, to a live server.

    `send_video`/`send_audio` only queue (bounded): with `wait=False` a full queue drops the item and
    counts it (a live source must never block); with `wait=True` the caller waits (an offline source that
    can). With `pace=True` the worker sends each item at its time (anchor + pts), so a file goes out at
    1x; a source that falls behind real time gets the clock set again (counted as a stall) rather than
    a burst. Without pacing the caller's timing is kept (the gateway's A/V synchronizer paces).
    Timestamps sent never go back: a video frame not after the last one sent is dropped and counted, and
    audio that overlaps what was sent is cut.
    """

    def __init__(
        self,
        url: str | PublishUrl,
        spec: StreamSpec,
        *,
        policy: ReconnectPolicy | None = None,
        pace: bool = False,
        queue_s: float = 1.0,
        log_extra: dict[str, Any] | None = None,
    ) -> None:
        self.target = url if isinstance(url, PublishUrl) else PublishUrl(url)
        self.spec = spec
        self.policy = policy or ReconnectPolicy()
        self.stats = PublishStats(url=self.target.redacted)
        self._pace = pace
        # Items: one per video frame and one per audio chunk (a frame's worth or 20 ms).
        self._queue: queue.Queue = queue.Queue(maxsize=max(8, math.ceil(queue_s * (spec.fps + 50))))
        self._log = log_extra or {}
        self._conn: _Connection | None = None
        self._waits = self.policy.waits()
        self._next_attempt = 0.0
        self._down_since: float | None = None
        self._last_ms: int | None = None
        self._audio_next: int | None = None  # the next audio sample (48 kHz) on the timeline
        self._audio_conn: _Connection | None = None  # the connection that sent the audio up to there
        self._anchor: float | None = None
        self._discard = threading.Event()  # closing without draining: what is queued is dropped
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # stats are read from other threads

    # -- producer side
    def connect(self) -> None:
        """Connect now, in the caller's thread, with up to policy.start_attempts tries (None: until it
        works); raises PublishUnreachable naming the target and the last error."""
        attempts = self.policy.start_attempts
        started = time.monotonic()
        tried = 0
        while True:
            tried += 1
            if self._try_connect(force=True):
                return
            if self.stats.state == "failed" or (attempts is not None and tried >= attempts):
                break
            time.sleep(max(0.0, self._next_attempt - time.monotonic()))
        self.stats.state = "failed"
        raise PublishUnreachable(
            f"cannot publish to {self.target.redacted}: {self.stats.last_error} "
            f"({tried} tries over {time.monotonic() - started:.1f} s)"
        )

    def start(self) -> StreamPublisher:
        """Start the worker (it connects on the first item if `connect` was not called)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stream-publish", daemon=True)
            self._thread.start()
        return self

    def send_video(self, image: np.ndarray, pts_s: float, *, wait: bool = False) -> bool:
        return self._put(("video", image, pts_s), wait)

    def send_audio(self, samples: np.ndarray, pts_s: float, *, wait: bool = False) -> bool:
        """float32 samples at 48 kHz, (n,) or (channels, n), the first one at pts_s."""
        samples = np.asarray(samples, np.float32)
        if samples.ndim == 1:
            samples = samples[None, :]
        if samples.shape[0] != self.spec.audio_channels:
            samples = np.repeat(samples.mean(axis=0, keepdims=True), self.spec.audio_channels, axis=0)
        return self._put(("audio", samples, pts_s), wait)

    def _put(self, item: tuple, wait: bool) -> bool:
        if self._thread is None:
            raise RuntimeError("call start() before sending")
        if wait:
            while self._thread.is_alive():
                try:
                    self._queue.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self._dropped(item, "queue_full")
            return False

    def close(self, *, drain: bool = True, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop: with `drain`, what is queued is sent first (at its time when paced); then both encoders are
        flushed and the stream ended. Returns the final stats."""
        if self._thread is not None:
            if not drain:
                self._discard.set()
            while self._thread.is_alive():
                try:
                    self._queue.put(_STOP, timeout=0.2)
                    break
                except queue.Full:
                    continue
            self._thread.join(timeout_s)
        elif self._conn is not None:  # connected but never started
            self._end_connection()
        with self._lock:
            self.stats.state = "closed" if self.stats.state != "failed" else "failed"
        return self.snapshot()

    @property
    def clock_origin(self) -> float | None:
        """Paced: the time.monotonic() at which timeline 0 is due (set again by each stall); else None."""
        return self._anchor

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.stats.as_dict()

    # -- worker
    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if self._discard.is_set():
                    self._dropped(item, "closing")
                    continue
                try:
                    self._send(item)
                except Exception:  # a bug must not silently end a live stream: log, count, go on
                    logger.exception("publishing a %s item failed", item[0], extra=self._log)
                    self._dropped(item, "error")
        finally:
            self._end_connection()

    def _send(self, item: tuple) -> None:
        kind, data, pts_s = item
        if self._pace:
            self._wait_until(pts_s)
        if self._conn is None and not self._try_connect():
            self._dropped(item, "offline")
            return
        try:
            if kind == "video":
                self._write_video(data, pts_s)
            else:
                self._write_audio(data, pts_s)
        except (av.FFmpegError, OSError) as exc:
            self._lost(exc)
            self._dropped(item, "offline")

    def _wait_until(self, pts_s: float) -> None:
        now = time.monotonic()
        if self._anchor is None:
            self._anchor = now - pts_s
        due = self._anchor + pts_s
        if now - due > 0.2:  # the source fell behind: go on at 1x from here instead of bursting
            with self._lock:
                self.stats.stalls += 1
            logger.info("the source is %.0f ms behind real time; publishing goes on from here", 1000 * (now - due))
            self._anchor = now - pts_s
        elif due > now:
            self._discard.wait(due - now)

    def _write_video(self, image: np.ndarray, pts_s: float) -> None:
        ms = round(pts_s * 1000)
        if self._last_ms is not None and ms <= self._last_ms:
            self._dropped(("video", image, pts_s), "out_of_order")
            return
        self._conn.write_video(image, ms)
        self._last_ms = ms
        with self._lock:
            self.stats.frames_sent += 1

    def _write_audio(self, samples: np.ndarray, pts_s: float) -> None:
        start = round(pts_s * AUDIO_RATE)
        if self._audio_next is not None:
            gap = start - self._audio_next
            if gap < 0:  # overlaps what was sent: cut it, timestamps never go back
                if -gap >= samples.shape[1]:
                    return
                samples, start = samples[:, -gap:], self._audio_next
            elif gap and self._audio_conn is self._conn and gap <= AUDIO_RATE:
                # A short hole on one connection (the source skipped ahead): silence keeps the AAC stream
                # continuous. A new connection starts a new encoder wherever the timeline is.
                samples = np.concatenate([np.zeros((samples.shape[0], gap), np.float32), samples], axis=1)
                start = self._audio_next
        self._conn.write_audio(samples, start)
        self._audio_next = start + samples.shape[1]
        self._audio_conn = self._conn
        with self._lock:
            self.stats.audio_sent_s += samples.shape[1] / AUDIO_RATE

    def _try_connect(self, force: bool = False) -> bool:
        now = time.monotonic()
        if self.stats.state == "failed" or (not force and now < self._next_attempt):
            return False
        try:
            conn = _Connection(self.target, self.spec, self.policy.io_timeout_s)
        except (av.FFmpegError, OSError) as exc:
            wait = next(self._waits)
            self._next_attempt = time.monotonic() + wait
            permanent = isinstance(exc, av.error.ProtocolNotFoundError)
            with self._lock:
                self.stats.last_error = _describe(exc)
                if permanent:
                    self.stats.state = "failed"
            if permanent:
                logger.error("cannot publish to %s: %s", self.target.redacted, _describe(exc), extra=self._log)
            else:  # the first failure of a run is a warning; the retries that follow are routine
                logger.log(
                    logging.WARNING if self._down_since is None else logging.INFO,
                    "publish to %s: cannot connect (%s); next try in %.1f s",
                    self.target.redacted,
                    _describe(exc),
                    wait,
                    extra=self._log,
                )
            if self._down_since is None:
                self._down_since = now
            return False
        self._conn = conn
        self._waits = self.policy.waits()
        with self._lock:
            self.stats.connects += 1
            again = self.stats.connects > 1  # a later connection always follows a drop
            if again:
                self.stats.reconnects += 1
            self.stats.state = "live"
        down = time.monotonic() - self._down_since if self._down_since is not None else 0.0
        if again:
            logger.warning(
                "publish to %s: reconnected after %.1f s (drops %d, reconnects %d, frames dropped %d)",
                self.target.redacted,
                down,
                self.stats.drops,
                self.stats.reconnects,
                sum(self.stats.frames_dropped.values()),
                extra=self._log,
            )
        else:
            waited = f" after {down:.1f} s of tries" if self._down_since is not None else ""
            logger.info("publishing to %s%s", self.target.redacted, waited, extra=self._log)
        self._down_since = None
        return True

    def _lost(self, exc: BaseException) -> None:
        """The server went away mid-stream: count it, let the connection go, retry after the first wait."""
        if self._conn is not None:
            self._conn.abort()
            self._conn = None
        self._down_since = time.monotonic()
        self._waits = self.policy.waits()
        wait = next(self._waits)
        self._next_attempt = self._down_since + wait
        with self._lock:
            self.stats.drops += 1
            self.stats.state = "reconnecting"
            self.stats.last_error = _describe(exc)
        logger.warning(
            "publish to %s lost (%s): drop %d; reconnecting in %.1f s, frames are dropped meanwhile",
            self.target.redacted,
            _describe(exc),
            self.stats.drops,
            wait,
            extra=self._log,
        )

    def _end_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.finish()
        except (av.FFmpegError, OSError) as exc:
            logger.info("publish to %s: ending the stream: %s", self.target.redacted, _describe(exc), extra=self._log)

    def _dropped(self, item: tuple, reason: str) -> None:
        kind, data, _ = item
        first = False
        with self._lock:
            if kind == "video":
                first = not self.stats.frames_dropped.get(reason)
                self.stats.frames_dropped[reason] = self.stats.frames_dropped.get(reason, 0) + 1
            else:
                self.stats.audio_dropped_s += data.shape[1] / AUDIO_RATE
        if first and reason in ("queue_full", "out_of_order"):  # offline drops are logged with the drop itself
            logger.warning("publish: a frame dropped (%s); counted from here on", reason, extra=self._log)


def _describe(exc: BaseException) -> str:
    """FFmpeg's message without the URL PyAV appends (it holds the stream key)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}"


class FilePublisher:
    """The offline command's live output: frame i at i/fps with the file's audio under it, paced at 1x.

    The audio is decoded whole at 48 kHz (client.audio.decode_audio: corrupt packets concealed, the same
    decoder as the model's input) and cut to the video's length, as the MP4's soundtrack is.
    """

    def __init__(
        self, url: str, audio_path, spec: StreamSpec, n_frames: int, policy: ReconnectPolicy | None = None
    ) -> None:
        from lipsync.client.audio import decode_audio

        self.spec = spec
        samples = decode_audio(audio_path, AUDIO_RATE).samples
        total = round(n_frames / spec.fps * AUDIO_RATE)
        self._audio = np.pad(samples[:total], (0, max(0, total - len(samples))))
        self._frames = 0
        self._audio_sent = 0
        # Two seconds queued: the next batch of frames is made while these play.
        self.publisher = StreamPublisher(url, spec, policy=policy, pace=True, queue_s=2.0)

    def connect(self) -> None:
        self.publisher.connect()
        self.publisher.start()

    def send_frame(self, image: np.ndarray) -> None:
        """Frame i and the audio up to frame i + 1; waits while two seconds are queued."""
        pts = self._frames / self.spec.fps
        self.publisher.send_video(image, pts, wait=True)
        self._frames += 1
        end = min(round(self._frames / self.spec.fps * AUDIO_RATE), len(self._audio))
        if end > self._audio_sent:
            self.publisher.send_audio(self._audio[self._audio_sent : end], self._audio_sent / AUDIO_RATE, wait=True)
            self._audio_sent = end

    def close(self, *, drain: bool = True) -> dict[str, Any]:
        return self.publisher.close(drain=drain)
