"""The gateway with real peers on loopback: an aiortc client, a real tritonserver, real media.

The client stamps each frame's index into its corner, so every returned frame is matched with the
one sent; the mouth region of a returned frame is compared with the sent one: it changes while
speech plays and stays the input (up to the codec) in silence. A/V alignment is measured from the
arrival times of the returned video and audio (streaming.peer.av_offsets).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from aiohttp import web

from client.audio import load_audio
from client.backends.triton import TritonBackend
from streaming.config import GatewayConfig
from streaming.frames import CLOCK_RATE
from streaming.peer import GatewayClient, av_offsets, mouth_difference, speech_intervals
from streaming.server import Gateway
from tests.media import make_moving_face_clip

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FPS = 25
SIZE = (320, 240)
# Mean absolute difference (0..255) in the mouth region between a returned frame and the sent one:
# pass-through frames differ only by VP8's loss (measured 4-7), generated mouths by tens.
CHANGED = 15.0
HANGOVER_S = 0.12


def espeak(text: str) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-w", f.name, text], check=True)
        return load_audio(f.name)


def bursts(*texts: str, gap_s: float = 1.5) -> np.ndarray:
    """Speech bursts separated by (and framed in) gap_s of silence."""
    silence = np.zeros(int(gap_s * CLOCK_RATE), np.float32)
    parts = [silence]
    for text in texts:
        parts += [espeak(text), silence]
    return np.concatenate(parts).astype(np.float32)


class RunningGateway:
    def __init__(self, gateway: Gateway, runner: web.AppRunner, port: int) -> None:
        self.gateway, self.runner, self.port = gateway, runner, port
        self.url = f"http://127.0.0.1:{port}"


async def start_gateway(config: GatewayConfig, backend) -> RunningGateway:
    gateway = Gateway(config, backend=backend)
    runner = web.AppRunner(gateway.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return RunningGateway(gateway, runner, site._server.sockets[0].getsockname()[1])


@pytest.fixture
async def gateway(triton_server):
    config = GatewayConfig(port=0, ice_loopback=True, vad_hangover_ms=int(HANGOVER_S * 1000), session_idle_s=3.0)
    running = await start_gateway(config, TritonBackend(triton_server.grpc_url, triton_server.model, timeout_s=2.0))
    yield running
    await running.runner.cleanup()


def mouth_changes(client: GatewayClient, clip) -> dict[int, float]:
    """Returned frame index -> mouth-region difference from the frame that was sent (first arrival only)."""
    out: dict[int, float] = {}
    for _, index, image in client.received.video:
        if index is not None and index < len(clip.frames) and index not in out:
            out[index] = mouth_difference(image, clip.frames[index], clip.boxes[index])
    return out


async def stream(client: GatewayClient, seconds: float) -> None:
    await asyncio.wait_for(client.connected.wait(), 20)
    await asyncio.sleep(seconds)


async def test_mouth_follows_speech_and_av_stay_aligned(gateway) -> None:
    speech = bursts("hello there, this is the gateway", "and this is the second sentence")
    n = int(len(speech) / CLOCK_RATE * FPS)
    clip = make_moving_face_clip(n, SIZE, FPS)
    async with GatewayClient(gateway.url) as client:
        await client.connect(clip.frames, speech)
        await stream(client, n / FPS + 1.5)
        stats = await client.stats()

    changes = mouth_changes(client, clip)
    assert len(changes) > 0.85 * n, f"only {len(changes)} of {n} frames came back"
    intervals = speech_intervals(speech)
    assert len(intervals) == 2
    inside, outside = [], []
    for index, diff in changes.items():
        # The speech time this frame was captured with, from the client's own send times.
        t = client.video_track.sent[index] - client.speech_track.started
        if any(a + 1 / FPS <= t <= b - 1 / FPS for a, b in intervals):
            inside.append(diff)
        elif all(t + 1 / FPS < a - 1 / FPS or t > b + HANGOVER_S + 1 / FPS for a, b in intervals):
            outside.append(diff)
    inside, outside = np.array(inside), np.array(outside)
    # While speech plays the mouth is generated; in silence the face is the input's (codec noise only).
    assert (inside > CHANGED).mean() > 0.8, np.round(inside, 1)
    assert (outside < CHANGED).all(), np.round(outside, 1)
    # The returned audio and video are aligned to within one frame (40 ms).
    offsets = av_offsets(client, speech)
    assert len(offsets) > 0.8 * n
    assert abs(np.median(offsets)) < 1 / FPS, f"A/V offset {1000 * np.median(offsets):.0f} ms"
    assert stats["outcomes"]["generated"] > 0 and stats["mouth_ms"]["p99"] is not None
