"""POST /say/{id}: typed text spoken by the real espeak-ng into a push-speech session, and every refusal.

The gateway runs on loopback with a fake backend (the project's own interface); the sessions come from
real aiortc offers, the speech from the real espeak-ng binary, compared with its own -w output.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from lipsync.streaming import tts
from tests.unit.test_streaming_server import error_of, make_client, real_offer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
    ),
]

TEXT = "The quick brown fox jumps over the lazy dog."


def espeak_file_seconds(tmp_path: Path, text: str, voice: str, rate: int) -> tuple[float, int]:
    """What espeak-ng itself writes to a WAV file for the same text, voice and rate: (seconds, sample rate)."""
    path = tmp_path / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True)
    with wave.open(str(path)) as wav:
        return wav.getnframes() / wav.getframerate(), wav.getframerate()


async def test_synthesize_matches_espeak_ng_file_output(tmp_path: Path) -> None:
    speech = await tts.synthesize(TEXT, "en-us", 180)
    seconds, rate = espeak_file_seconds(tmp_path, TEXT, "en-us", 180)
    assert speech.sample_rate == rate
    assert speech.seconds == pytest.approx(seconds, abs=1 / rate)
    assert speech.samples.dtype == np.float32 and 0.05 < np.abs(speech.samples).max() <= 1.0


@pytest.mark.parametrize(
    ("text", "voice", "rate", "error"),
    [
        ("", None, None, "empty"),
        ("  \n ", None, None, "empty"),
        (42, None, None, "must be a string"),
        ("x" * (tts.MAX_TEXT_CHARS + 1), None, None, f"over the {tts.MAX_TEXT_CHARS}-character limit"),
        ("hello", "../../etc/passwd", None, "language code"),
        ("hello", "-w /tmp/x", None, "language code"),
        ("hello", "zz", None, "no espeak-ng voice 'zz'"),
        ("hello", "en-us+nosuchvariant", None, "no espeak-ng voice variant"),
        ("hello", None, 1000, "words per minute"),
        ("hello", None, "fast", "words per minute"),
        ("hello", None, True, "words per minute"),
    ],
)  # fmt: skip
async def test_synthesize_refuses_bad_input(text, voice, rate, error: str) -> None:
    with pytest.raises(tts.TextRefused, match=error.replace("+", r"\+").replace(".", r"\.")):
        await tts.synthesize(text, voice, rate)


async def test_text_that_looks_like_an_option_is_spoken_not_obeyed(tmp_path: Path) -> None:
    """The text goes in on stdin: '-w FILE' in it is words, and no file appears."""
    target = tmp_path / "written.wav"
    speech = await tts.synthesize(f"-w {target}")
    assert speech.seconds > 0.3 and not target.exists()


async def test_say_refusals() -> None:
    client, _ = await make_client()
    peers = []
    try:
        assert (await client.post("/say/nope", json={"text": "hi"})).status == 404
        pc, sdp = await real_offer()
        peers.append(pc)
        mic = (await (await client.post("/offer", json={"sdp": sdp, "type": "offer"})).json())["session_id"]
        response = await client.post(f"/say/{mic}", json={"text": "hello"})
        assert response.status == 409 and "uses its microphone" in await error_of(response)
        pc, sdp = await real_offer(speech=False)
        peers.append(pc)
        body = {"sdp": sdp, "type": "offer", "speech": "push"}
        sid = (await (await client.post("/offer", json=body)).json())["session_id"]
        cases = [
            ({"data": "hello", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type application/json"),
            ({"data": "{nope", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
            ({"json": ["hello"]}, 400, "must be a JSON object"),
            ({"json": {"text": ""}}, 400, "'text' is empty"),
            ({"json": {}}, 400, "'text' must be a string"),
            ({"json": {"text": "a" * 501}}, 413, "over the 500-character limit"),
            ({"json": {"text": "hi", "voice": "zz"}}, 400, "no espeak-ng voice 'zz'"),
            ({"json": {"text": "hi", "rate": 5}}, 400, "words per minute in [80, 400]"),
            ({"json": {"text": "hi", "interrupt": "yes"}}, 400, "'interrupt' must be true or false"),
            ({"json": {"text": "hi", "speed": 2}}, 400, "unknown say keys ['speed']"),
            ({"data": "x" * 20_000, "headers": {"Content-Type": "application/json"}}, 413, "over the 16384-byte"),
        ]
        for kwargs, status, message in cases:
            response = await client.post(f"/say/{sid}", **kwargs)
            assert response.status == status, (kwargs, await response.text())
            assert message in await error_of(response), kwargs
        stats = await (await client.get(f"/sessions/{sid}/stats")).json()
        assert stats["speech_queued_s"] == 0  # nothing refused was queued
    finally:
        for pc in peers:
            await pc.close()
        await client.close()


async def test_say_requires_the_token_where_configured() -> None:
    client, _ = await make_client(token="s3cret")
    try:
        pc, sdp = await real_offer(speech=False)
        auth = {"Authorization": "Bearer s3cret"}
        body = {"sdp": sdp, "type": "offer", "speech": "push"}
        sid = (await (await client.post("/offer", json=body, headers=auth)).json())["session_id"]
        assert (await client.post(f"/say/{sid}", json={"text": "hi"})).status == 401
        assert (await client.post(f"/say/{sid}", json={"text": "hi"}, headers=auth)).status == 200
        await pc.close()
    finally:
        await client.close()


async def test_said_speech_is_queued_whole_and_interrupt_replaces_it(tmp_path: Path) -> None:
    client, gateway = await make_client(max_speech_seconds=30.0)
    try:
        pc, sdp = await real_offer(speech=False)
        body = {"sdp": sdp, "type": "offer", "speech": "push"}
        sid = (await (await client.post("/offer", json=body)).json())["session_id"]
        response = await client.post(f"/say/{sid}", json={"text": TEXT, "voice": "en-gb", "rate": 150})
        assert response.status == 200, await response.text()
        reply = await response.json()
        seconds, rate = espeak_file_seconds(tmp_path, TEXT, "en-gb", 150)
        # Exactly what espeak-ng writes for the text, pushed in full (resampled to 16 kHz in the session).
        assert reply["speech_s"] == pytest.approx(seconds, abs=1 / rate)
        assert reply["received_s"] == pytest.approx(seconds, abs=1 / rate)
        assert reply["sample_rate"] == rate and reply["voice"] == "en-gb" and reply["rate"] == 150
        push = gateway.peers[sid].session.push_speech
        # Queued at 16 kHz: all of it but the resampler's few-ms look-ahead and what already played.
        assert seconds - 0.5 < reply["queued_s"] <= seconds + 0.01, reply
        again = await (
            await client.post(f"/say/{sid}", json={"text": "Stop. Something else.", "interrupt": True})
        ).json()
        assert again["dropped_s"] > 0.5, again  # the first text was still queued: dropped, replaced
        assert again["queued_s"] == pytest.approx(again["speech_s"], abs=0.25), again
        assert push.received_s == pytest.approx(seconds + again["speech_s"], abs=2 / rate)
        await pc.close()
    finally:
        await client.close()
