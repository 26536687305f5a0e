"""`lipsync-train enroll` on real video files: bad recordings are refused with a clear message and leave no
avatar behind; a short recording enrols within a small budget into a complete avatar folder."""

from __future__ import annotations

import asyncio
import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from lipsync.benchmarks.synthetic_media import astronaut_bgr, frame_without_face
from lipsync.client.avatar import load_avatar
from lipsync.client.model_repository import SHIPPED_GENERATOR
from lipsync.client.networks.wav2lip import Wav2Lip
from lipsync.training import cli
from lipsync.training.data.preprocess import frames_at_fps
from lipsync.training.data.synthetic.recording import write_recording

pytestmark = pytest.mark.integration

SIZE = (320, 240)


def _speech(seconds: float, rate: int = 16_000) -> np.ndarray:
    """Syllable-like bursts: loud enough to count as speech."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2).astype(np.float32)


def _mux(path: Path, frames: list[np.ndarray], audio: np.ndarray | None, rate: int = 16_000) -> Path:
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = None
        if audio is not None:  # every stream is added before the first packet is muxed
            sound = container.add_stream("aac", rate=rate)
            sound.layout = "mono"
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = k, Fraction(1, 25)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            for start in range(0, len(audio), 1024):
                frame = av.AudioFrame.from_ndarray(
                    audio[None, start : start + 1024].copy(), format="flt", layout="mono"
                )
                frame.sample_rate, frame.pts = rate, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """8 s of a synthetic person talking (H.264 + AAC 44.1 kHz)."""
    return write_recording(tmp_path_factory.mktemp("rec") / "person.mp4", person=3, session=0, seconds=8.0, size=SIZE)


def _person_frames(recording: Path, count: int) -> list[np.ndarray]:
    return [image for k, image in frames_at_fps(recording) if k < count]


def _enroll(video: Path, out: Path, *extra: str) -> int:
    return cli.main(["enroll", "--video", str(video), "--out", str(out), *extra])


def _two_faces(_recording: Path) -> list[np.ndarray]:
    face = cv2.resize(astronaut_bgr(), (256, 256))
    return [np.ascontiguousarray(np.hstack([face, face])) for _ in range(150)]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unreadable", "cannot read"),
        ("too_short", "at least 5 s"),
        ("no_audio", "no audio track"),
        ("silence", "no speech"),
        ("no_face", "a face was found on 0 %"),
        ("two_faces", "more than one face"),
    ],
)
def test_bad_recordings_are_refused_and_leave_nothing(recording, tmp_path, caplog, case, message) -> None:
    video = tmp_path / f"{case}.mp4"
    if case == "unreadable":
        video.write_text("this is not a video")
    elif case == "too_short":
        write_recording(video, person=3, session=1, seconds=3.0, size=SIZE)
    elif case == "no_audio":
        _mux(video, _person_frames(recording, 150), None)
    elif case == "silence":
        _mux(video, _person_frames(recording, 150), np.zeros(16_000 * 6, np.float32))
    elif case == "no_face":
        _mux(video, [frame_without_face(SIZE, seed=k % 3) for k in range(150)], _speech(6.0))
    elif case == "two_faces":
        _mux(video, _two_faces(recording), _speech(6.0))
    out = tmp_path / "avatar"
    assert _enroll(video, out, "--minutes", "0.5") == 2
    assert message in caplog.text, caplog.text[-2000:]
    assert not out.exists(), "a refused recording must leave no folder behind"


@pytest.fixture(scope="module")
def enrolled(recording, tmp_path_factory) -> Path:
    """The recording enrolled with a small budget (about 50 s on 2 cores)."""
    out = tmp_path_factory.mktemp("avatars") / "anna"
    assert _enroll(recording, out, "--minutes", "0.8", "--eval-every-s", "10", "--report-seconds", "1.2") == 0
    return out


@pytest.mark.slow
def test_a_short_recording_enrols_into_a_complete_avatar(recording, enrolled, caplog) -> None:
    out = enrolled
    avatar = load_avatar(out)
    assert avatar.name == "anna"
    report = json.loads(avatar.report.read_text())
    assert report["enrolment_seconds"] < 0.8 * 60 + 30, report["stage_seconds"]
    for model in ("generic", "enrolled"):
        for item in ("held_out_own_speech", "held_out_new_speech"):
            figures = report["figures"][model][item]
            assert np.isfinite(figures["lower_face_psnr_db"]) and figures["lower_face_psnr_db"] > 20, figures
            assert np.isfinite(figures["sync_lip_vs_loudness"]), figures
    history = report["validation_history"]
    assert history[0]["step"] == 0 and len(history) >= 2 and history[-1]["step"] > 0, history
    png = cv2.imread(str(out / "report.png"))
    assert png is not None and png.shape[1] >= 5 * 200
    # The weights are a generator; trained ones differ from the shipped default (the best may be step 0).
    enrolled_state = Wav2Lip.from_checkpoint(avatar.weights).state_dict()
    shipped = Wav2Lip.from_checkpoint(SHIPPED_GENERATOR).state_dict()
    changed = any(not np.array_equal(enrolled_state[k].numpy(), shipped[k].numpy()) for k in shipped)
    assert changed == (report["training"]["best_step"] > 0)
    still = cv2.imread(str(avatar.still))
    assert still is not None and still.shape[:2] == (SIZE[1], SIZE[0])
    with av.open(str(avatar.loop)) as loop:
        assert loop.streams.video[0].frames >= 25
    boxes = np.load(avatar.track)["boxes"]
    assert len(boxes) == 8 * 25 and np.isfinite(boxes[:, 0]).mean() > 0.9

    # An avatar already there is kept unless --overwrite; --resume continues from the checkpoint and the
    # cached face track (no second tracking pass), and the manifest is rewritten with the new step count.
    assert _enroll(recording, out, "--minutes", "0.5") == 2
    assert "already holds avatar 'anna'" in caplog.text
    steps = json.loads((out / "avatar.json").read_text())["training"]["steps"]
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert _enroll(recording, out, "--minutes", "0.5", "--resume", "--report-seconds", "1.2") == 0
    assert "found in the cache" in caplog.text and "resumed enroll" in caplog.text
    assert json.loads((out / "avatar.json").read_text())["training"]["steps"] > steps


@pytest.mark.slow
async def test_an_enrolled_avatar_drives_the_offline_command_the_gateway_and_triton(enrolled, tmp_path) -> None:
    """The avatar enrolled above, used everywhere: its mouths come out of `lipsync --avatar`, a presenter
    session of the gateway over real WebRTC, and its own model served by a real tritonserver."""
    import aiohttp
    from aiohttp import web

    from lipsync.benchmarks.peer import GatewayClient, mouth_difference
    from lipsync.client.audio import load_audio, mel_windows, melspectrogram
    from lipsync.client.backends.pytorch import PyTorchBackend
    from lipsync.client.backends.triton import TritonBackend
    from lipsync.client.face_crop import crop_face, model_face_input, pad_box
    from lipsync.client.face_tracking import FaceBox
    from lipsync.client.triton_server import EmbeddedTritonServer
    from lipsync.export import cli as export_cli
    from lipsync.streaming.config import GatewayConfig
    from lipsync.streaming.frames import CLOCK_RATE
    from lipsync.streaming.server import Gateway
    from tests.integration.test_avatar_serving import (
        SERVED_TOLERANCE,
        decode_frames,
        run_lipsync,
        speech_file,
    )

    avatar = load_avatar(enrolled)
    manifest = json.loads((enrolled / "avatar.json").read_text())
    start, stop = manifest["reference"]["loop_frames"]
    boxes = [FaceBox(*b) for b in np.load(avatar.track)["boxes"][start:stop]]
    speech = speech_file(  # longer than the 4 s loop, so the loop plays more than once
        tmp_path, "the enrolled avatar says something new with its own mouth, and then it goes on talking for a while"
    )

    # 1. offline: no face given, the avatar's loop is dubbed with its own weights
    report = run_lipsync("--avatar", enrolled, "--audio", speech, "--outfile", tmp_path / "out.mp4")
    assert report["avatar"] == "anna" and str(avatar.weights) in report["weights"], report
    loop, got = decode_frames(avatar.loop), decode_frames(tmp_path / "out.mp4")
    assert len(got) == report["frames_with_face"] > len(loop)
    changed = [mouth_difference(got[k], loop[k % len(loop)], boxes[k % len(loop)]) for k in range(len(got))]
    assert np.percentile(changed, 75) > 8, np.round(changed, 1)  # a codec alone stays under ~5 on this face

    # 2. Triton: the avatar's own model beside nothing else, answering as its PyTorch weights do
    repo = tmp_path / "repository"
    assert export_cli.main(["--avatar", str(enrolled), "--output-dir", str(repo), "--quiet"]) == 0
    mel = mel_windows(melspectrogram(load_audio(speech)), 25.0, 8)[:, None].astype(np.float32)
    still = cv2.imread(str(avatar.still))
    box = boxes[0]
    faces = np.stack([model_face_input(crop_face(still, pad_box(box, still.shape, (0, 10, 0, 0))))] * 8)
    expected = PyTorchBackend(avatar.weights).infer(mel, faces)
    with EmbeddedTritonServer(repo, (avatar.triton_model,)) as server:
        backend = TritonBackend(url=server.grpc_url, model=avatar.triton_model)
        try:
            served = backend.infer(mel, faces)
        finally:
            backend.close()
    assert np.abs(served - expected).max() < SERVED_TOLERANCE

    # 3. the gateway: a presenter session of the avatar, speech pushed, its frames generated
    words = load_audio(speech_file(tmp_path, "hello from the avatar, speaking over the gateway"))
    pcm = np.concatenate([np.zeros(int(0.2 * CLOCK_RATE), np.float32), words])
    config = GatewayConfig(port=0, ice_loopback=True, backend="pytorch", avatars=(str(enrolled),),
                           compute_budget_ms=1000, session_idle_s=3.0)  # fmt: skip
    gateway = Gateway(config)
    runner = web.AppRunner(gateway.app)
    try:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
            assert (await resp.json())["avatars"] == {"anna": True}
        async with GatewayClient(url) as client:
            await client.connect(None, None, speech_mode="push", mode="presenter", avatar="anna")
            await asyncio.wait_for(client.connected.wait(), 20)
            await asyncio.sleep(1.5)
            assert (await client.push_speech(pcm))["status"] == 200
            await asyncio.sleep(len(pcm) / CLOCK_RATE + config.delay_ms("push") / 1000 + 1.5)
            stats = await client.stats()
    finally:
        await runner.cleanup()
    assert stats["avatar"] == "anna" and stats["mode"] == "presenter", stats
    assert stats["outcomes"].get("generated", 0) >= 10, stats
    assert client.received.video and client.received.video[-1][2].shape == loop[0].shape
