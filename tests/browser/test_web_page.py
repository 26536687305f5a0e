"""The gateway's web page in real Chromium: fake camera and microphone from files, a real WebRTC call.

Debian's /usr/bin/chromium is driven by Python playwright (no browser download). The camera is a
y4m of the synthetic moving face, the microphone a wav of espeak-ng speech.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync.client import contract
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.streaming.config import GatewayConfig
from lipsync.streaming.server import Gateway
from tests.media import moving_face_clip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/bin/chromium").exists(),
        reason="Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
    ),
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-loopback-in-peer-connection", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    h, w = frames[0].shape[:2]
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())


def write_speech_wav(path: Path, text: str) -> None:
    """espeak-ng speech with a second of silence on each side (the fake microphone loops it)."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    with wave.open(str(raw)) as src:
        rate, data = src.getframerate(), src.readframes(src.getnframes())
    silence = b"\0\0" * rate
    with wave.open(str(path), "wb") as dst:
        dst.setnchannels(1)
        dst.setsampwidth(2)
        dst.setframerate(rate)
        dst.writeframes(silence + data + silence)


@pytest.fixture
def lipsync_backend(triton_repository: Path) -> OnnxRuntimeBackend:
    """The in-process backend (the gateway's no-server option) on the shared test model, one thread."""
    return OnnxRuntimeBackend(triton_repository / contract.EMBEDDED_MODEL / "1" / "model.onnx", threads=1)


@pytest.fixture
def fake_media(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    video, audio = tmp_path / "camera.y4m", tmp_path / "microphone.wav"
    write_y4m(video, moving_face_clip(100, (320, 240)))
    write_speech_wav(audio, "hello, this is the lip sync gateway speaking")
    return video, audio


async def test_page_connects_shows_video_and_figures(fake_media, lipsync_backend, unused_tcp_port) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    from aiohttp import web

    video, audio = fake_media
    config = GatewayConfig(backend="onnxruntime", port=unused_tcp_port, ice_loopback=True, compute_budget_ms=500)
    gateway = Gateway(config, backend=lipsync_backend)
    runner = web.AppRunner(gateway.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    flags = [
        *CHROMIUM_FLAGS,
        f"--use-file-for-fake-video-capture={video}",
        f"--use-file-for-fake-audio-capture={audio}",
    ]
    try:
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM), args=flags, env={**os.environ, "HOME": str(video.parent)}
            )
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{unused_tcp_port}/")
            assert await page.locator("#synthetic-mark").inner_text() == "SYNTHETIC VIDEO"
            assert await page.locator("#synthetic-mark").is_visible()
            await page.click("#start")
            await page.wait_for_function("window.lipsync.connected === true", timeout=30_000)
            # Video arrives: the element has a size and keeps decoding frames.
            await page.wait_for_function(
                "document.getElementById('remote').videoWidth > 0 && "
                "document.getElementById('remote').getVideoPlaybackQuality().totalVideoFrames > 25",
                timeout=30_000,
            )
            width = await page.evaluate("document.getElementById('remote').videoWidth")
            # The figures fill in from the gateway's stats.
            await page.wait_for_function(
                "window.lipsync.stats && window.lipsync.stats.frames_out > 25 && "
                "document.getElementById('stat-fps').textContent !== '–'",
                timeout=30_000,
            )
            await asyncio.sleep(4)  # let the looping speech reach the mouth
            figures = {
                name: await page.locator(f"#stat-{name}").inner_text()
                for name in ("mouth-p50", "mouth-p99", "delay", "fps", "drops", "outcomes")
            }
            stats = await page.evaluate("window.lipsync.stats")
            await page.screenshot(path=str(video.parent / "page.png"))
            await page.click("#stop")
            await browser.close()
    finally:
        await runner.cleanup()
    assert not errors, errors
    assert width == 320
    assert float(figures["fps"]) > 10, figures
    assert figures["delay"].endswith("ms"), figures
    assert stats["outcomes"].get("generated", 0) > 0, stats  # the microphone's speech moved the mouth
    assert figures["mouth-p50"].endswith("ms"), figures
