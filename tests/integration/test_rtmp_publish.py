"""Live output to a real RTMP server: Debian's nginx with its RTMP module on a free loopback port.

Each test reads the stream back with PyAV, as a viewer would, while it is published: what arrives is
checked for length, frame rate, A/V alignment on the stream's own timestamps, the synthetic label, and
a mouth that moves while the speech in the same stream plays. The reconnect test kills nginx mid-stream
and starts it again on the same port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import cv2
import numpy as np
import pytest
from aiohttp import web

from lipsync.benchmarks.peer import mouth_difference, read_index, stamp_index
from lipsync.client.face_tracking import FaceBox
from lipsync.client.stream_publish import AUDIO_RATE, ReconnectPolicy, StreamPublisher, StreamSpec
from lipsync.client.video_io import SYNTHETIC_NOTICE
from lipsync.streaming.config import GatewayConfig
from lipsync.streaming.server import Gateway
from tests.media import ASTRONAUT_FACE_BOX, astronaut_bgr, espeak

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NGINX = Path("/usr/sbin/nginx")
RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
FPS = 25
FRAME_S = 1 / FPS
KEY = "secret-stream-key"
# The region the reader keeps of each frame (the astronaut's face box with a margin): whole 512x512 frames
# for a 10-s stream would hold 200 MB on a machine shared with other test runs.
KEEP = (slice(40, 240), slice(130, 320))
BOX = FaceBox(
    ASTRONAUT_FACE_BOX.x1 - KEEP[1].start,
    ASTRONAUT_FACE_BOX.y1 - KEEP[0].start,
    ASTRONAUT_FACE_BOX.x2 - KEEP[1].start,
    ASTRONAUT_FACE_BOX.y2 - KEEP[0].start,
)
# peer.mouth_difference (90th percentile of |difference|, 0..255, lower middle of the face box). H.264 at the
# publisher's CRF 23 changes a still mouth by less than 5 between frames; generated mouths move it by more.
CHANGED = 15.0


# -- the RTMP server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxRtmp:
    """nginx with only an `rtmp` block, no http server, everything under `root`; restartable on its port."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.error_log = root / "error.log"
        self.conf = root / "nginx.conf"
        # `meta copy`: relay the publisher's onMetaData as sent (the synthetic label); nginx-rtmp's default
        # rebuilds it from the known fields only. A viewer that joins first waits for the publisher
        # (idle_streams is on by default), so it reads the stream from its first frame.
        self.conf.write_text(
            f"load_module {RTMP_MODULE};\n"
            "daemon off;\nmaster_process off;\nworker_processes 1;\n"
            f"pid {root / 'nginx.pid'};\nerror_log {self.error_log} info;\n"
            "events { worker_connections 64; }\n"
            "rtmp {\n"
            f"    server {{\n        listen 127.0.0.1:{port};\n"
            "        application live { live on; record off; meta copy; }\n    }\n}\n"
        )
        self.process: subprocess.Popen | None = None

    def url(self, key: str = KEY) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [str(NGINX), "-p", str(self.root), "-c", str(self.conf), "-e", str(self.error_log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as one
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        log = self.error_log.read_text() if self.error_log.exists() else ""
        self.stop()
        raise RuntimeError(f"nginx did not listen on 127.0.0.1:{self.port} within {timeout_s} s:\n{log[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        self.process = None


@pytest.fixture
def rtmp_server(tmp_path: Path):
    if not NGINX.is_file():
        pytest.skip(f"{NGINX} is missing (apt-get install nginx-light)")
    if not RTMP_MODULE.is_file():
        pytest.skip(f"{RTMP_MODULE} is missing (apt-get install libnginx-mod-rtmp)")
    root = tmp_path / "nginx"
    root.mkdir()
    server = NginxRtmp(root, free_port())
    server.start()
    yield server
    server.stop()


# -- a viewer
@dataclass
class ReadBack:
    """What a viewer received: per video frame (arrival, pts, kept region or full frame), audio by pts."""

    metadata: dict = field(default_factory=dict)
    rate: float | None = None
    video: list[tuple[float, float, np.ndarray]] = field(default_factory=list)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)
    full: dict[int, np.ndarray] = field(default_factory=dict)  # every 5th whole frame, by index
    error: str | None = None

    @property
    def pts(self) -> np.ndarray:
        return np.array([p for _, p, _ in self.video])

    def audio_span(self) -> tuple[float, float]:
        start = self.audio[0][0]
        return start, self.audio[-1][0] + len(self.audio[-1][1]) / AUDIO_RATE

    def audio_samples(self) -> int:
        return sum(len(a) for _, a in self.audio)

    def loudness(self, t0: float, t1: float) -> float:
        """RMS of the received audio between stream times t0 and t1."""
        parts = []
        for start, samples in self.audio:
            a = max(0, round((t0 - start) * AUDIO_RATE))
            b = min(len(samples), round((t1 - start) * AUDIO_RATE))
            if b > a:
                parts.append(samples[a:b])
        return float(np.sqrt(np.mean(np.concatenate(parts) ** 2))) if parts else 0.0


class Viewer(threading.Thread):
    """Plays rtmp://... with PyAV in a thread until the stream stays quiet for `read_timeout_s`."""

    def __init__(self, url: str, *, open_timeout_s: float = 90.0, read_timeout_s: float = 4.0, keep=KEEP) -> None:
        super().__init__(daemon=True)
        self.url, self.timeouts, self.keep = url, (open_timeout_s, read_timeout_s), keep
        self.got = ReadBack()
        self.opened = threading.Event()

    def run(self) -> None:
        got = self.got
        try:
            with av.open(self.url, options={"rtmp_live": "live"}, timeout=self.timeouts) as container:
                self.opened.set()
                got.metadata = dict(container.metadata)
                got.rate = float(container.streams.video[0].average_rate or 0)
                for frame in container.decode(video=0, audio=0):
                    if isinstance(frame, av.VideoFrame):
                        image = frame.to_ndarray(format="bgr24")
                        if len(got.video) % 5 == 0:
                            got.full[len(got.video)] = image
                        region = image[self.keep] if self.keep is not None else image
                        got.video.append((time.monotonic(), float(frame.time), region.copy()))
                    else:
                        got.audio.append((float(frame.time), frame.to_ndarray().mean(axis=0).astype(np.float32)))
        except av.error.ExitError:
            pass  # the read timeout: the publisher stopped
        except (av.FFmpegError, OSError) as exc:
            got.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.opened.set()


# -- media
def speech_with_pauses(*texts: str, gap_s: float = 1.0) -> np.ndarray:
    """16 kHz speech: each text spoken, with gap_s of silence before, between and after."""
    silence = np.zeros(int(gap_s * 16_000), np.float32)
    parts = [silence]
    for text in texts:
        parts += [espeak(text), silence]
    return np.concatenate(parts)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def write_face_video(path: Path, image: np.ndarray, frames: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        stream.options = {"crf": "12"}
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def frame_motion(got: ReadBack) -> np.ndarray:
    """Per received frame, how much the mouth changed since the frame before (0 for the first)."""
    regions = [r for _, _, r in got.video]
    return np.array([0.0] + [mouth_difference(b, a, BOX) for a, b in zip(regions, regions[1:], strict=False)])


def speech_frames(got: ReadBack, loud: float = 0.03, quiet: float = 0.003, margin_s: float = 0.3):
    """Received frames over loud audio, and frames at least margin_s away from any audible audio."""
    level = np.array([got.loudness(p, p + FRAME_S) for p in got.pts])
    near = np.array([got.loudness(p - margin_s, p + margin_s) for p in got.pts])
    return level > loud, near < quiet


def save_frame(image: np.ndarray, name: str) -> Path:
    out = Path(tempfile.gettempdir()) / f"rtmp_readback_{name}.png"
    cv2.imwrite(str(out), image)
    return out


# -- (a) the offline command
def test_offline_command_publishes_in_real_time_and_in_sync(rtmp_server: NginxRtmp, tmp_path: Path) -> None:
    face = astronaut_bgr()
    write_face_video(tmp_path / "face.mp4", face, FPS)  # one second of the still photo, looped by the command
    speech = speech_with_pauses("hello there, this stream is lip synced", "and it goes on", gap_s=1.0)
    write_wav(tmp_path / "speech.wav", speech)
    expected_frames = round(len(speech) / 16_000 * FPS)
    viewer = Viewer(rtmp_server.url())
    viewer.start()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "lipsync.client.lipsync", "--face", str(tmp_path / "face.mp4"),
         "--audio", str(tmp_path / "speech.wav"), "--outfile", str(tmp_path / "out.mp4"),
         "--publish", rtmp_server.url()],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    job_s = time.monotonic() - started
    viewer.join(timeout=60)
    got = viewer.got
    assert result.returncode == 0, result.stderr[-3000:]
    assert KEY not in result.stdout + result.stderr  # the stream key is a secret: never printed
    assert f"published to rtmp://127.0.0.1:{rtmp_server.port}/live/***: {expected_frames} frames" in result.stdout
    report = json.loads((tmp_path / "out.json").read_text())
    assert KEY not in json.dumps(report)
    live = report["report"]["publish"]
    assert live["frames_sent"] == expected_frames and live["drops"] == 0, live
    assert got.error is None, got.error

    # Paced at 1x: the job lasts at least the media's length (it cannot finish earlier).
    assert job_s >= expected_frames / FPS, job_s
    # Everything arrived, at 25 fps, as long as the input (a frame or two).
    assert got.metadata.get("comment") == SYNTHETIC_NOTICE, got.metadata
    assert got.rate == FPS
    pts = got.pts
    assert abs(len(pts) - expected_frames) <= 2, (len(pts), expected_frames)
    assert np.allclose(np.diff(pts), FRAME_S, atol=0.0015), np.diff(pts)  # FLV stamps are whole ms
    audio_start, audio_end = got.audio_span()
    assert abs(got.audio_samples() / AUDIO_RATE - expected_frames / FPS) < 2 * FRAME_S
    # A/V on the stream's timestamps: both start together and end together, within one frame.
    start_offset, end_offset = pts[0] - audio_start, pts[-1] + FRAME_S - audio_end
    assert abs(start_offset) < FRAME_S and abs(end_offset) < FRAME_S, (start_offset, end_offset)

    # The mouth moves while the speech in the same stream plays, and is still in the pauses.
    motion = frame_motion(got)
    speaking, silent = speech_frames(got)
    assert speaking.sum() > 2 * FPS and silent.sum() > FPS // 2, (speaking.sum(), silent.sum())
    assert np.median(motion[speaking]) > 3 * max(np.median(motion[silent]), 1.0), (
        np.round(motion[speaking], 1),
        np.round(motion[silent], 1),
    )
    assert np.mean(motion[silent] < CHANGED / 3) > 0.9, np.round(motion[silent], 1)
    # For a person to look at: the kept frame where the mouth moved most while speech played.
    save_frame(got.full[max(got.full, key=lambda k: motion[k] if speaking[k] else -1)], "offline")
    print(
        f"\noffline: {len(pts)} frames over {pts[-1] + FRAME_S - pts[0]:.3f} s, audio {audio_end - audio_start:.3f} s, "
        f"A/V start {1000 * start_offset:+.1f} ms end {1000 * end_offset:+.1f} ms, job {job_s:.1f} s, "
        f"mouth motion speech {np.median(motion[speaking]):.1f} silence {np.median(motion[silent]):.1f}, "
        f"stalls {live['stalls']}"
    )


# -- (b) the gateway's published presenter
async def test_gateway_publishes_a_presenter_driven_by_pushed_speech(rtmp_server: NginxRtmp, tmp_path: Path) -> None:
    # 320x320: tracking, blending and encoding 512x512 at 25 fps is more than a loaded 2-core machine gives.
    face = cv2.resize(astronaut_bgr(), (320, 320), interpolation=cv2.INTER_AREA)
    b = ASTRONAUT_FACE_BOX
    box = FaceBox(b.x1 * 320 / 512, b.y1 * 320 / 512, b.x2 * 320 / 512, b.y2 * 320 / 512)
    cv2.imwrite(str(tmp_path / "presenter.png"), face)
    speech = espeak("the presenter speaks on the stream, and then it is quiet again")
    config = GatewayConfig(
        port=0,
        backend="onnxruntime",
        presenter_image=str(tmp_path / "presenter.png"),
        publish=rtmp_server.url(),
        # Correctness, not speed: a generous budget keeps a loaded 2-core machine from passing frames through.
        compute_budget_ms=1000,
        adaptive_budget=False,
        warmup=False,
        vad_hangover_ms=120,
    )
    viewer = Viewer(rtmp_server.url(), keep=None)
    viewer.start()
    gateway = Gateway(config)
    runner = web.AppRunner(gateway.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as resp:
                health = await resp.json()
            entry = health["publish"]
            assert entry["url"] == f"rtmp://127.0.0.1:{rtmp_server.port}/live/***", entry
            assert KEY not in json.dumps(health)
            session_id = entry["session_id"]
            # The presenter idles (the still face, silence) for 2 s of published frames before it speaks: on a
            # loaded machine the face tracker's warm-up alone has taken seconds.
            deadline = time.monotonic() + 60
            while entry["frames_sent"] < 2 * FPS and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                async with http.get(f"{base}/healthz") as resp:
                    entry = (await resp.json())["publish"]
            pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()
            async with http.post(f"{base}/speech/{session_id}?rate=16000", data=pcm) as resp:
                assert resp.status == 200, await resp.text()
            await asyncio.sleep(len(speech) / 16_000 + config.compute_budget_ms / 1000 + 2.5)
            async with http.get(f"{base}/healthz") as resp:
                entry = (await resp.json())["publish"]
            async with http.get(f"{base}/sessions/{session_id}/stats") as resp:
                stats = await resp.json()
    finally:
        await runner.cleanup()
    published = gateway.publish.publisher.snapshot()
    await asyncio.to_thread(viewer.join, 30)
    got = viewer.got
    assert entry["state"] == "live" and entry["drops"] == 0 and entry["frames_sent"] > 5 * FPS, entry
    assert published["state"] == "closed" and published["drops"] == 0, published
    assert stats["connection"] == "rtmp-live", stats
    assert got.error is None, got.error
    assert got.metadata.get("comment") == SYNTHETIC_NOTICE, got.metadata

    # 25 fps video and continuous audio on one timeline. Every frame the gateway published arrived. A
    # presenter frame is stamped when the loop takes it, so a loaded machine jitters the stamps, and the
    # gateway drops a frame that would leave late or that tracking could not take: the frames missing from
    # the 25 fps grid are those it counted (on this shared 2-core machine, 0-20 % of them).
    pts = got.pts
    span = pts[-1] + FRAME_S - pts[0]
    steps = np.diff(pts)
    counted = sum(stats["dropped"].values()) + sum(published["frames_dropped"].values())
    assert got.rate == FPS and len(pts) > 5 * FPS, (got.rate, len(pts))
    assert len(pts) == published["frames_sent"], (len(pts), published)
    assert np.all(steps > 0) and np.median(steps) == pytest.approx(FRAME_S, abs=0.0015)
    assert np.mean(np.abs(steps - FRAME_S) < 0.005) > 0.7, np.round(steps, 3)
    assert len(pts) + counted >= 0.95 * span * FPS and len(pts) >= 0.6 * span * FPS, (len(pts), span, counted)
    audio_start, audio_end = got.audio_span()
    assert abs(got.audio_samples() / AUDIO_RATE - (audio_end - audio_start)) < 0.05  # no holes
    assert abs(pts[0] - audio_start) < 2 * FRAME_S and abs(pts[-1] + FRAME_S - audio_end) < 0.1, (
        pts[0],
        audio_start,
        pts[-1],
        audio_end,
    )

    # The idle presenter is the photo itself; while the pushed speech plays in the stream, its mouth moves.
    from_still = np.array([mouth_difference(image, face, box) for _, _, image in got.video])
    speaking, silent = speech_frames(got)
    assert speaking.sum() > FPS and silent.sum() > FPS, (speaking.sum(), silent.sum())
    assert np.mean(from_still[silent] < CHANGED) > 0.9, np.round(from_still[silent], 1)
    assert np.mean(from_still[speaking] > CHANGED) > 0.5, (np.round(from_still[speaking], 1), stats)
    # Where the mouth starts moving against where the speech starts, on the stream's timestamps.
    onset_audio = pts[np.flatnonzero(speaking)[0]]
    onset_mouth = pts[np.flatnonzero(from_still > CHANGED)[0]]
    assert abs(onset_mouth - onset_audio) < 0.25, (onset_mouth, onset_audio)
    save_frame(got.full[max(got.full, key=lambda k: from_still[k] if speaking[k] else -1)], "gateway")
    print(
        f"\ngateway: {len(pts)} frames over {span:.2f} s ({len(pts) / span:.2f} fps), audio "
        f"{audio_end - audio_start:.2f} s, mouth onset - speech onset {1000 * (onset_mouth - onset_audio):+.0f} ms, "
        f"generated {np.mean(from_still[speaking] > CHANGED):.0%} of speech frames, outcomes {stats.get('outcomes')}, "
        f"dropped {stats.get('dropped')}"
    )


# -- (c) reconnection
def test_publisher_reconnects_after_the_server_restarts_and_goes_on_from_now(rtmp_server: NginxRtmp) -> None:
    """nginx killed 2 s in, started again 2 s later on the same port: one drop, one reconnect, the frames of
    the outage dropped and counted, and the stream read back after the restart continues from the present."""
    seconds, kill_at, down_s = 9.0, 2.0, 2.0
    total = int(seconds * FPS)
    face = cv2.resize(astronaut_bgr(), (320, 320), interpolation=cv2.INTER_AREA)
    publisher = StreamPublisher(
        rtmp_server.url(), StreamSpec(320, 320, fps=FPS), policy=ReconnectPolicy(start_attempts=3), pace=True
    )
    publisher.connect()
    publisher.start()

    def produce() -> None:
        tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(int(FRAME_S * AUDIO_RATE)) / AUDIO_RATE)
        for i in range(total):
            publisher.send_video(stamp_index(face, i), i * FRAME_S, wait=True)
            publisher.send_audio(tone, i * FRAME_S, wait=True)

    source = threading.Thread(target=produce, daemon=True)
    started = time.monotonic()
    source.start()
    time.sleep(kill_at)
    rtmp_server.stop(signal.SIGKILL)  # a crash: no goodbye to the publisher
    killed = time.monotonic() - started
    time.sleep(down_s)
    during = publisher.snapshot()
    rtmp_server.start()
    viewer = Viewer(rtmp_server.url(), open_timeout_s=30.0, keep=slice(0, 16))  # the index stamp's row
    viewer.start()
    source.join(timeout=seconds + 30)
    stats = publisher.close()
    viewer.join(timeout=30)
    got = viewer.got

    assert during["state"] == "reconnecting" and during["drops"] == 1, during
    assert stats["drops"] == 1 and stats["reconnects"] == 1 and stats["connects"] == 2, stats
    dropped = stats["frames_dropped"].get("offline", 0)
    # The outage as the publisher saw it: from the kill until a retry (0.5, 1, 2 s apart) found nginx back.
    assert down_s * FPS - 5 <= dropped <= (down_s + 2.5) * FPS, stats
    assert stats["frames_sent"] + dropped == total, stats  # every frame sent or counted
    assert got.error is None, got.error
    # After the restart: from where the source is now (not a backlog from the outage), every frame from the
    # reconnection on, in order, 25 fps, to the end; the index stamped in each frame matches its timestamp.
    pts = got.pts
    indexes = [read_index(region) for _, _, region in got.video]
    assert len(pts) > 3 * FPS, len(pts)
    assert pts[0] >= killed + down_s - 0.2, (pts[0], killed)
    assert all(i is not None and abs(i * FRAME_S - p) < 0.002 for i, p in zip(indexes, pts, strict=True)), indexes
    assert np.allclose(np.diff(pts), FRAME_S, atol=0.0015), np.diff(pts)
    assert indexes[-1] == total - 1
    assert indexes[0] == total - 1 - (len(indexes) - 1)
    audio_start, audio_end = got.audio_span()
    assert abs(audio_start - pts[0]) < 2 * FRAME_S and abs(audio_end - (pts[-1] + FRAME_S)) < 2 * FRAME_S
    # Latency on loopback, encoder + nginx + the viewer's demuxer: a frame's arrival at the viewer after its
    # paced send time (the clock's origin + its timestamp; a stall, counted, moves the origin, so frames after
    # the last one count). The viewer's first frames come late, held while its demuxer probed the stream:
    # the second half is measured.
    half = len(got.video) // 2
    latency = np.array([arrived - (publisher.clock_origin + p) for arrived, p, _ in got.video[half:]])
    print(
        f"\nreconnect: killed at {killed:.2f} s, {dropped} frames dropped, reconnected, {len(pts)} frames read "
        f"back from {pts[0]:.2f} s; latency send -> viewer p50 {1000 * np.median(latency):.0f} ms, "
        f"max {1000 * latency.max():.0f} ms, stalls {stats['stalls']}"
    )


def test_offline_command_says_plainly_when_it_cannot_publish(tmp_path: Path) -> None:
    """A bad scheme stops it before any work; a server that is not there, after 5 tries (0.5..4 s apart)."""
    write_face_video(tmp_path / "face.mp4", cv2.resize(astronaut_bgr(), (128, 128)), 5)
    write_wav(tmp_path / "speech.wav", np.zeros(8000, np.float32))

    def lipsync(url: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lipsync.client.lipsync", "--quiet", "--face", str(tmp_path / "face.mp4"),
             "--audio", str(tmp_path / "speech.wav"), "--outfile", str(tmp_path / "out.mp4"), "--publish", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    bad = lipsync(f"rtmpx://127.0.0.1/live/{KEY}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "publish URL scheme must be one of rtmp, rtmps, srt" in bad.stderr and KEY not in bad.stderr
    port = free_port()  # nothing listens there
    started = time.monotonic()
    away = lipsync(f"rtmp://127.0.0.1:{port}/live/{KEY}")
    assert away.returncode == 2 and "Traceback" not in away.stderr, away.stderr
    assert f"cannot publish to rtmp://127.0.0.1:{port}/live/***: ConnectionRefusedError" in away.stderr
    assert "5 tries over 7." in away.stderr and KEY not in away.stderr, away.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out.mp4").exists()  # nothing written: it stopped before the first frame
