"""The gateway's web page in real Chromium: fake camera and microphone from files, a real WebRTC call;
and a presenter session with no camera or microphone, driven by text typed into the page.

Debian's /usr/bin/chromium is driven by Python playwright (no browser download). The camera is a
y4m of the synthetic moving face, the microphone a wav of espeak-ng speech; the typed text is spoken
by the gateway's espeak-ng (POST /say).
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

from lipsync.client import avatar as avatar_format
from lipsync.client import contract
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.streaming.config import GatewayConfig
from lipsync.streaming.server import Gateway
from tests.media import ASTRONAUT_FACE_BOX, astronaut_bgr, moving_face_clip

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
            # The camera's own picture is shown beside the output.
            local_width = await page.evaluate("document.getElementById('local').videoWidth")
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
    assert local_width == 320
    assert float(figures["fps"]) > 10, figures
    assert figures["delay"].endswith("ms"), figures
    assert stats["outcomes"].get("generated", 0) > 0, stats  # the microphone's speech moved the mouth
    assert figures["mouth-p50"].endswith("ms"), figures


# The mouth in the astronaut picture as fractions of its width and height (x, y, w, h): the lower middle
# of her face box, where the generated mouth is pasted.
def mouth_region(size: tuple[int, int]) -> list[float]:
    box = ASTRONAUT_FACE_BOX
    x1, y1, w, h = box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1
    width, height = size
    return [(x1 + 0.25 * w) / width, (y1 + 0.62 * h) / height, 0.5 * w / width, 0.3 * h / height]


# Luma of a region of the frame the remote <video> shows now (drawn into a canvas, as a viewer sees it).
REGION_LUMA = """([x, y, w, h]) => {
  const v = document.getElementById('remote');
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(v, 0, 0);
  const d = ctx.getImageData(Math.round(x * c.width), Math.round(y * c.height),
                             Math.max(1, Math.round(w * c.width)), Math.max(1, Math.round(h * c.height))).data;
  const luma = [];
  for (let i = 0; i < d.length; i += 4) luma.push(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]);
  return luma;
}"""

# Pixels of the chart canvas in its series' colours (mouth #4fc3f7, delay #ffb74d): it was drawn, with data.
CHART_PIXELS = """() => {
  const c = document.getElementById('chart');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let mouth = 0, delay = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - 0x4f) < 40 && Math.abs(d[i + 1] - 0xc3) < 40 && Math.abs(d[i + 2] - 0xf7) < 40) mouth++;
    if (Math.abs(d[i] - 0xff) < 40 && Math.abs(d[i + 1] - 0xb7) < 40 && Math.abs(d[i + 2] - 0x4d) < 40) delay++;
  }
  return { mouth, delay };
}"""


async def region_samples(page, region: list[float], seconds: float, every_s: float = 0.08) -> np.ndarray:
    samples = []
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        luma = await page.evaluate(REGION_LUMA, region)
        if luma:
            samples.append(np.asarray(luma, np.float32))
        await asyncio.sleep(every_s)
    return np.stack(samples)


def motion(samples: np.ndarray) -> float:
    """Mean absolute luma change between consecutive samples of the region."""
    return float(np.abs(np.diff(samples, axis=0)).mean())


async def test_typed_text_moves_the_presenter_mouth(lipsync_backend, avatar_factory, unused_tcp_port, tmp_path) -> None:
    """No camera, no microphone: an avatar's presenter face, text typed into the page and spoken by the server."""
    playwright_api = pytest.importorskip("playwright.async_api")
    from aiohttp import web

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    face = astronaut_bgr()
    # A still loop: whatever moves in the output is the generated mouth, not the face.
    avatar = avatar_factory("anna", frames=[face] * 3)
    # Its ONNX model is the shared test model (what `lipsync-export --avatar` would write there).
    shutil.copy2(lipsync_backend.model_path, avatar / avatar_format.ONNX_FILE)
    avatar_backend = OnnxRuntimeBackend(avatar / avatar_format.ONNX_FILE, threads=1)
    config = GatewayConfig(
        backend="onnxruntime", port=unused_tcp_port, ice_loopback=True, compute_budget_ms=500, avatars=(str(avatar),)
    )
    gateway = Gateway(config, backend=lipsync_backend, avatar_backends={"anna": avatar_backend})
    runner = web.AppRunner(gateway.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    region = mouth_region((face.shape[1], face.shape[0]))
    screenshot = tmp_path / "page_typed_text.png"
    try:
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, env={**os.environ, "HOME": str(tmp_path)}
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{unused_tcp_port}/")
            # The page learns the avatars from /healthz; without a presenter picture on the gateway,
            # the presenter option needs one chosen.
            await page.wait_for_selector("#avatar option[value=anna]", state="attached", timeout=10_000)
            presenter_without_avatar = await page.locator("#source option[value=presenter]").is_disabled()
            await page.select_option("#avatar", "anna")
            await page.select_option("#source", "presenter")
            await page.select_option("#speech", "push")
            assert await page.locator("#say-panel").is_visible()
            assert await page.locator("#say").is_disabled()  # no session yet
            await page.click("#start")
            await page.wait_for_function("window.lipsync.connected === true", timeout=30_000)
            await page.wait_for_function(
                "document.getElementById('remote').getVideoPlaybackQuality().totalVideoFrames > 25", timeout=30_000
            )
            await page.wait_for_function("!document.getElementById('say').disabled", timeout=10_000)
            before = await region_samples(page, region, 2.5)
            generated_before = (await page.evaluate("window.lipsync.stats"))["outcomes"].get("generated", 0)
            await page.fill(
                "#say-text",
                "Hello there. I am the presenter, and I am speaking the words that you typed into this page.",
            )
            await page.click("#say")
            await page.wait_for_function("window.lipsync.said !== null", timeout=20_000)
            said = await page.evaluate("window.lipsync.said")
            during = await region_samples(page, region, 2.0)
            # The screenshot once the figures show generated mouths (the speech is playing, not queued).
            await page.wait_for_function(
                f"(window.lipsync.stats.outcomes.generated || 0) > {generated_before + 10}", timeout=15_000
            )
            await page.screenshot(path=str(screenshot))
            during = np.concatenate([during, await region_samples(page, region, 2.0)])
            await page.wait_for_function("window.lipsync.chartDraws > 4", timeout=10_000)
            chart = await page.evaluate(CHART_PIXELS)
            stats = await page.evaluate("window.lipsync.stats")
            placeholder = await page.locator("#local-placeholder").is_visible()
            say_status = await page.locator("#say-status").inner_text()
            synthetic = await page.locator("#synthetic-mark").is_visible()
            await page.click("#stop")
            await browser.close()
    finally:
        await runner.cleanup()
    print(f"screenshot: {screenshot}")
    still, moving = motion(before), motion(during)
    print(f"mouth motion: {still:.2f} before the text, {moving:.2f} while it is spoken (luma levels per sample)")
    assert not errors, errors
    assert presenter_without_avatar
    assert placeholder and synthetic
    assert stats["avatar"] == "anna" and stats["mode"] == "presenter" and stats["speech"] == "push", stats
    assert said["speech_s"] > 3 and said["voice"] == "en-us", said
    assert "Queued" in say_status, say_status
    assert stats["outcomes"].get("generated", 0) > generated_before + 10, stats  # the speech moved the mouth
    assert moving > 3 * still + 0.5, (still, moving)
    assert chart["mouth"] > 20 and chart["delay"] > 20, chart
    assert screenshot.stat().st_size > 10_000
