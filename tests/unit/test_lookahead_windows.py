"""A low-look-ahead model's windows: cut with its stored mel offset, the same offline, in training
and live; the gateway's added delay follows the served model's look-ahead."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lipsync.client import contract
from lipsync.client.audio import SILENCE_VALUE, mel_windows, melspectrogram
from lipsync.streaming.frames import CLOCK_RATE, AudioChunk
from lipsync.streaming.speech_source import SpeechTimeline
from lipsync.streaming.vad import VoiceActivity
from lipsync.training.data.lrs2 import mel_window
from tests.unit.test_streaming_session import speech_like

pytestmark = pytest.mark.unit

FPS = 25


def test_lookahead_follows_the_offset() -> None:
    assert contract.lookahead_ms(0) == 200.0
    assert contract.lookahead_ms(-10) == 75.0
    assert contract.lookahead_ms(-13) == 37.5
    for bad in (1, -17, 0.5, True, "-10"):
        with pytest.raises(ValueError, match="mel_offset"):
            contract.lookahead_ms(bad)


@pytest.mark.parametrize("offset", [0, -10, -13])
def test_offline_windows_move_back_by_the_offset_with_silence_before_the_audio(offset: int) -> None:
    mel = melspectrogram(speech_like(3.0))
    n = 70
    windows = mel_windows(mel, FPS, n, mel_offset=offset)
    plain = mel_windows(mel, FPS, n)
    assert windows.shape == plain.shape == (n, 80, 16)
    for i in range(n):
        start = int(i * 80 / FPS) + offset
        if start >= 0:
            assert np.array_equal(windows[i], mel[:, start : start + 16]), i
            # The training layout cuts the same window for the same frame (the datasets' mel_window).
            assert np.array_equal(mel_window(mel, i, offset)[0], windows[i]), i
        else:
            assert (windows[i][:, :-start] == SILENCE_VALUE).all()
            assert np.array_equal(windows[i][:, -start:], mel[:, : 16 + start])
            assert mel_window(mel, i, offset) is None  # training rejects a window before the audio
    if offset:
        assert not np.array_equal(windows[30], plain[30])


@pytest.mark.parametrize("offset", [0, -10, -13])
async def test_live_windows_equal_the_offline_ones_for_the_stored_offset(offset: int) -> None:
    """The session clock runs at 16 kHz from 0: frame i of a 25 fps stream is captured at pts i * 640."""
    wav = speech_like(3.0)
    timeline = SpeechTimeline(VoiceActivity())
    for start in range(0, len(wav), 320):  # 20 ms packets, as a microphone delivers them
        await timeline.append(AudioChunk(start, wav[start : start + 320]))
    offline = mel_windows(melspectrogram(wav), FPS, 60, mel_offset=offset)
    loop = asyncio.get_running_loop()
    for i in range(60):
        live = await timeline.mel_window(i * CLOCK_RATE // FPS, loop.time() + 1.0, offset)
        assert live is not None, i
        np.testing.assert_allclose(live, offline[i], atol=1e-5, err_msg=f"frame {i}")


async def test_a_low_lookahead_window_is_ready_with_less_future_audio() -> None:
    """The live path's wait: frame at 1.0 s needs audio to ~1.21 s at offset 0, to ~1.09 s at -10."""
    timeline = SpeechTimeline(VoiceActivity())
    await timeline.append(AudioChunk(0, speech_like(1.12)))
    loop = asyncio.get_running_loop()
    assert await timeline.mel_window(CLOCK_RATE, loop.time() + 0.05, 0) is None
    assert (await timeline.mel_window(CLOCK_RATE, loop.time() + 0.05, -10)).shape == (80, 16)


async def test_the_gateway_delay_follows_the_served_models_lookahead() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from lipsync.streaming.config import GatewayConfig
    from lipsync.streaming.server import Gateway
    from tests.unit.test_streaming_server import real_offer
    from tests.unit.test_streaming_session import GreyMouthBackend

    async def served(offset: int) -> tuple[dict, dict]:
        backend = GreyMouthBackend()
        backend.mel_offset = offset  # what a backend reads from a model trained with this offset
        gateway = Gateway(GatewayConfig(backend="onnxruntime", compute_budget_ms=150), backend=backend)
        client = TestClient(TestServer(gateway.app, host="127.0.0.1"))
        await client.start_server()
        try:
            health = await (await client.get("/healthz")).json()
            pc, sdp = await real_offer()
            sid = (await (await client.post("/offer", json={"sdp": sdp, "type": "offer"})).json())["session_id"]
            stats = await (await client.get(f"/sessions/{sid}/stats")).json()
            assert gateway.peers[sid].session.delay == stats["added_delay_ms"] * CLOCK_RATE // 1000
            await pc.close()
            return health, stats
        finally:
            await client.close()

    health, stats = await served(-10)
    assert health["lookahead_ms"] == 75.0
    assert health["added_delay_ms"] == {"microphone": 75 + 100 + 150, "push": 150}
    assert stats["added_delay_ms"] == 325
    health, stats = await served(0)
    assert health["lookahead_ms"] == 200.0 and stats["added_delay_ms"] == 450
