"""An enrolled avatar end to end: the offline command, the gateway with a real aiortc peer, and the
avatar's own model exported and served by a real tritonserver beside the default one.

The avatar (tests/conftest.py `enrolled_avatar`) is the shipped generator with a shifted last bias,
so its mouths are unlike the default model's; each frame of its loop carries its index in the
corner, so a returned presenter frame names the loop frame it was made from.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import av
import cv2
import numpy as np
import pytest
from aiohttp import web

from lipsync.benchmarks.peer import BLOCK, GatewayClient, mouth_difference, read_index
from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.audio import load_audio
from lipsync.client.avatar import load_avatar
from lipsync.client.backends.triton import TritonBackend
from lipsync.client.triton_server import EmbeddedTritonServer
from lipsync.export import model_repository, verify
from lipsync.streaming.avatars import avatar_backend
from lipsync.streaming.config import GatewayConfig
from lipsync.streaming.frames import CLOCK_RATE
from lipsync.streaming.server import Gateway

if TYPE_CHECKING:
    from tests.conftest import EnrolledAvatar

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FPS = 25
# peer.mouth_difference (90th percentile of |difference| in the lower middle of the face box, 0..255).
# Measured on this avatar: a codec alone (x264 re-encode, or VP8 on the way back) stays under 10;
# the avatar's mouths differ from its loop by a median of 22, the default model's by 7.
CHANGED = 15.0
# The Python model runs the exported ONNX on ONNX Runtime; against the avatar's PyTorch weights only
# the summation order differs: export's own FP32 tolerance (max abs on faces in [0, 1]).
SERVED_TOLERANCE = verify.FP32_TOLERANCE[0]
SPEECH = "this is the speech that drives the avatar mouth, for a little longer than its loop lasts"


def speech_file(tmp_path: Path, text: str = SPEECH) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    return path


def decode_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def luma(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(np.float32)


def run_lipsync(*args: str | Path) -> dict:
    """Run the command; its report (the JSON written next to the output)."""
    command = [sys.executable, "-m", "lipsync.client.lipsync", "--quiet", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outfile = Path(args[list(args).index("--outfile") + 1])
    return json.loads(outfile.with_suffix(".json").read_text())["report"]


# -- (a) the offline command


def test_lipsync_with_an_avatar_and_no_face_dubs_its_loop_with_its_own_weights(
    enrolled_avatar: EnrolledAvatar, tmp_path: Path
) -> None:
    folder, boxes = enrolled_avatar.folder, enrolled_avatar.boxes
    speech = speech_file(tmp_path)
    report = run_lipsync("--avatar", folder, "--audio", speech, "--outfile", tmp_path / "avatar.mp4")
    assert report["avatar"] == "anna" and report["backend"] == "pytorch", report  # no model.onnx yet: pytorch
    assert str(folder / "wav2lip.pt") in report["weights"]
    # The same face through the default (shipped) weights, for comparison.
    run_lipsync(
        "--face", folder / "loop.mp4", "--audio", speech, "--outfile", tmp_path / "default.mp4", "--backend", "pytorch"
    )

    loop = decode_frames(folder / "loop.mp4")
    got, default = decode_frames(tmp_path / "avatar.mp4"), decode_frames(tmp_path / "default.mp4")
    n = len(loop)
    seconds = len(load_audio(speech)) / contract.SAMPLE_RATE
    assert abs(len(got) - seconds * FPS) <= 2 and len(got) > n, (len(got), n)  # the loop plays more than once
    assert len(default) == len(got) == report["frames"] == report["frames_with_face"]

    # Output frame k is loop frame k % n: it carries that frame's index stamp, and above the mouth (the
    # stamp's rows left out) it is that frame up to two encodes (measured: mean 1.9-2.1 levels of luma).
    assert [read_index(frame) for frame in got] == [k % n for k in range(len(got))]
    top, bottom = 2 * BLOCK, min(int(b.y1 + 0.4 * b.height) for b in boxes)
    upper = [np.abs(luma(frame)[top:bottom] - luma(loop[k % n])[top:bottom]).mean() for k, frame in enumerate(got)]
    assert max(upper) < 3.0, np.round(upper, 2)

    # The reference: the loop pushed through the same encoder untouched, so its codec noise cancels out.
    from lipsync.client.video_io import Mp4Writer

    with Mp4Writer(
        tmp_path / "loop.mp4", width=loop[0].shape[1], height=loop[0].shape[0], fps=FPS, with_audio=False
    ) as w:
        for k in range(len(got)):
            w.write_video(loop[k % n])
    reference = decode_frames(tmp_path / "loop.mp4")

    def mouths(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
        return np.array([mouth_difference(a[k], b[k], boxes[k % n]) for k in range(len(got))])

    avatar_vs_loop, default_vs_loop, avatar_vs_default = (
        mouths(got, reference),
        mouths(default, reference),
        mouths(got, default),
    )
    assert np.median(avatar_vs_loop) > CHANGED, np.round(avatar_vs_loop, 1)
    # The avatar's weights ran, not the default ones: its mouths are far from the default model's,
    # further than the default model's are from the loop itself.
    assert np.median(avatar_vs_default) > 10, np.round(avatar_vs_default, 1)
    assert np.median(avatar_vs_default) > 1.5 * np.median(default_vs_loop), (
        np.median(avatar_vs_default),
        np.median(default_vs_loop),
    )


# -- (b) the gateway, a presenter session of the avatar over a real aiortc peer


class ReturnedVideo:
    """The presenter frames that come back, matched to the loop frames they were made from.

    A frame is matched by the index stamped in its corner when the band between the stamp and the mouth
    is that loop frame's (mean luma difference under 10 through x264 and VP8): VP8's blurred first
    frames and frames it garbled (a lost packet, a bitrate dip on a loaded machine) are left out.
    """

    SETTLED_FRAMES = 10  # matched frames in a row: the returned video shows the loop

    def __init__(self, client: GatewayClient, loop: list[np.ndarray], boxes) -> None:
        self.client, self.loop, self.boxes = client, loop, boxes
        self.band = slice(2 * BLOCK, min(int(b.y1 + 0.4 * b.height) for b in boxes))

    def _clean(self, index: int | None, image: np.ndarray | None) -> bool:
        if index is None or image is None or index >= len(self.loop):
            return False
        return float(np.abs(luma(image)[self.band] - luma(self.loop[index])[self.band]).mean()) < 10.0

    async def settled(self) -> float:
        """Wait for SETTLED_FRAMES matched frames in a row from now on; the arrival time of the last."""
        seen, run = len(self.client.received.video), 0
        while True:
            video = self.client.received.video
            while seen < len(video):
                arrived, index, image = video[seen]
                seen += 1
                run = run + 1 if self._clean(index, image) else 0
                if run >= self.SETTLED_FRAMES:
                    return arrived
            await asyncio.sleep(0.05)

    def matched(self) -> list[tuple[float, int, float]]:
        """(arrival time, loop frame, mouth difference from that loop frame) of every matched frame."""
        return [
            (arrived, index, mouth_difference(image, self.loop[index], self.boxes[index]))
            for arrived, index, image in self.client.received.video
            if self._clean(index, image)
        ]


async def test_gateway_presenter_session_of_an_avatar_moves_its_mouth_with_pushed_speech(
    enrolled_avatar: EnrolledAvatar, tmp_path: Path
) -> None:
    folder, boxes = enrolled_avatar.folder, enrolled_avatar.boxes
    silence = np.zeros(int(0.2 * CLOCK_RATE), np.float32)
    words = load_audio(speech_file(tmp_path, "the avatar speaks to you now, sentence after sentence"))
    speech = np.concatenate([silence, words, silence])
    seconds = len(speech) / CLOCK_RATE
    loop = decode_frames(folder / "loop.mp4")  # what the gateway presents
    # In-process PyTorch: the default model and the avatar's are both built from the config at start-up.
    # A generous compute budget: correctness is tested here, timings are the benchmarks' (2 shared cores).
    config = GatewayConfig(
        port=0, ice_loopback=True, backend="pytorch", avatars=(str(folder),), compute_budget_ms=1000,
        session_idle_s=3.0, vad_hangover_ms=120,
    )  # fmt: skip
    delay = config.delay_ms("push") / 1000
    gateway = Gateway(config)
    # One intra-op thread for both in-process models, as the Triton tests give ONNX Runtime: with one per
    # core, PyTorch's workers fight the event loop (both peers' RTP and codecs) for the 2 shared cores.
    # Measured here: inference p50 170 ms against 15-30 ms with one thread, and more frames come back garbled.
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runner = web.AppRunner(gateway.app)
    try:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
            health = await resp.json()
        assert health["avatars"] == {"anna": True} and health["presenter"] is False, health
        async with GatewayClient(url) as client:
            video = ReturnedVideo(client, loop, boxes)
            await client.connect(None, None, speech_mode="push", mode="presenter", avatar="anna")
            await asyncio.wait_for(client.connected.wait(), 20)
            async with asyncio.timeout(15):
                settled = await video.settled()  # then a second more of the loop in silence
            await asyncio.sleep(1.0)
            pushed = time.monotonic()
            result = await client.push_speech(speech)
            started = time.monotonic()  # the speech began to play in between, when its body arrived
            assert result["status"] == 200, result
            # A frame captured at t is sent at t + D: the speech comes back from `pushed` + D on.
            await asyncio.sleep(max(0.0, pushed + delay + seconds + 1.0 - time.monotonic()))
            async with asyncio.timeout(15):
                ended = await video.settled()
            await asyncio.sleep(1.0)
            stats = await client.stats()
    finally:
        await runner.cleanup()
        torch.set_num_threads(threads)
    assert all(a.backend.model is None for a in gateway.avatars.values()), "the avatar's backend was not closed"
    assert (stats["avatar"], stats["mode"], stats["speech"]) == ("anna", "presenter", "push"), stats
    # Frames the model could not finish in time pass through unchanged, by design, and a loaded machine
    # has some: the gateway counts them, so the share of changed mouths is held to what it reports.
    outcomes = stats["outcomes"]
    missed = ("timeout", "error", "no_audio", "backend_unavailable", "overloaded")
    generated = outcomes.get("generated", 0)
    generated_share = generated / max(generated + sum(outcomes.get(k, 0) for k in missed), 1)
    assert generated >= 10 and generated_share > 0.5, stats

    frames = video.matched()
    assert client.received.video[0][2].shape == loop[0].shape
    # The presenter plays the loop in order (forward, then back): returned frames are neighbours in it.
    assert np.median(np.abs(np.diff([index for _, index, _ in frames]))) == 1
    # The margins leave out the VAD's hangover, the mel window and the way back (encode, network, decode).
    before = np.array([d for t, _, d in frames if settled - 1.0 < t < pushed + delay])
    during = np.array([d for t, _, d in frames if started + delay + 0.4 < t < pushed + delay + seconds - 0.4])
    after = np.array([d for t, _, d in frames if t > max(ended - 1.0, started + delay + seconds + 1.0)])
    # Before and after the speech: the loop itself up to the codec (measured 4-7); while it plays, the
    # avatar's mouths (measured 12-57, most over 15: the avatar's weights make them dark).
    for silent in (before, after):
        assert len(silent) > 10 and np.median(silent) < 10 and np.mean(silent < CHANGED) >= 0.9, np.round(silent, 1)
    assert len(during) >= 10 and np.mean(during > CHANGED) > 0.6 * generated_share, (np.round(during, 1), stats)
    assert np.median(during) > 2 * max(np.median(before), np.median(after))


# -- (c) the avatar's own model: exported, then served by a real tritonserver beside the default


@dataclass(frozen=True)
class AvatarExport:
    folder: Path
    repository: Path
    default_files: dict[str, str]  # the default model's files (relative path -> sha256) before the export
    stdout: str


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def avatar_export(
    enrolled_avatar: EnrolledAvatar, triton_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> AvatarExport:
    root = tmp_path_factory.mktemp("avatar_export")
    folder = Path(shutil.copytree(enrolled_avatar.folder, root / "anna"))  # export writes model.onnx into it
    repository = root / "model_repository"
    shutil.copytree(triton_repository / contract.EMBEDDED_MODEL, repository / contract.EMBEDDED_MODEL)
    before = file_hashes(repository)
    command = [
        sys.executable, "-m", "lipsync.export.cli", "--avatar", str(folder), "--output-dir", str(repository),
        "--verify-samples", "2",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return AvatarExport(folder, repository, before, result.stdout)


@pytest.fixture(scope="module")
def avatar_server(avatar_export: AvatarExport) -> Iterator[EmbeddedTritonServer]:
    # What `lipsync-server --models wav2lip_python avatar_anna` runs.
    with EmbeddedTritonServer(avatar_export.repository, (contract.EMBEDDED_MODEL, "avatar_anna")) as server:
        yield server


def test_export_writes_the_avatars_model_and_leaves_the_default_alone(avatar_export: AvatarExport) -> None:
    repository, folder = avatar_export.repository, avatar_export.folder
    assert "ONNX FP32 vs PyTorch FP32 on random inputs" in avatar_export.stdout
    assert "ONNX FP32 vs PyTorch FP32 on real inputs" in avatar_export.stdout
    assert "FAILED" not in avatar_export.stdout
    assert (folder / "model.onnx").is_file()
    model = repository / "avatar_anna"
    for name in ("config.pbtxt", "1/model.py", "1/model.onnx", "1/model.pt"):
        assert (model / name).is_file(), name
    assert (model / "config.pbtxt").read_text() == model_repository.render_avatar_config("avatar_anna")
    assert (model / "1/model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    # The default model is exactly as it was, and nothing else was added beside the two.
    after = file_hashes(repository)
    assert {
        k: v for k, v in after.items() if k.startswith(contract.EMBEDDED_MODEL + "/")
    } == avatar_export.default_files
    assert sorted(p.name for p in repository.iterdir()) == ["avatar_anna", contract.EMBEDDED_MODEL]
    # The record of this export is the avatar model's, not the repository's (the default's stays its own).
    record = json.loads((model / layout.EXPORT_REPORT_FILE).read_text())
    assert record["avatar"]["name"] == "anna" and record["config"]["avatar"] == str(folder)
    assert all(r["max_abs"] <= r["max_tolerance"] for r in record["verification"]) and record["verification"]


def test_the_served_avatar_model_is_the_avatars_weights(avatar_server: EmbeddedTritonServer, avatar_export) -> None:
    from lipsync.client.backends.pytorch import PyTorchBackend

    mel, faces = verify.real_inputs(6, seed=4)
    with (
        TritonBackend(avatar_server.grpc_url, "avatar_anna") as served,
        TritonBackend(avatar_server.grpc_url, contract.EMBEDDED_MODEL) as default,
    ):
        got, default_out = served.infer(mel, faces), default.infer(mel, faces)
    want = PyTorchBackend(load_avatar(avatar_export.folder).weights).infer(mel, faces)
    shipped = PyTorchBackend(layout.SHIPPED_GENERATOR).infer(mel, faces)
    assert np.abs(got - want).max() <= SERVED_TOLERANCE
    # Not the server's default model, and not the weights the avatar was made from.
    assert np.abs(got - default_out).max() > 100 * SERVED_TOLERANCE
    assert np.abs(got - shipped).max() > 100 * SERVED_TOLERANCE


def test_lipsync_and_the_gateway_reach_the_avatars_served_model(
    avatar_server: EmbeddedTritonServer, avatar_export: AvatarExport, tmp_path: Path
) -> None:
    folder = avatar_export.folder
    speech = speech_file(tmp_path, "a short line")
    served = run_lipsync(
        "--avatar", folder, "--audio", speech, "--outfile", tmp_path / "served.mp4",
        "--backend", "triton", "--triton_url", avatar_server.grpc_url,
    )  # fmt: skip
    assert served["backend"] == "triton" and "avatar_anna" in served["weights"] and served["avatar"] == "anna"
    local = run_lipsync("--avatar", folder, "--audio", speech, "--outfile", tmp_path / "local.mp4")
    assert local["backend"] == "onnxruntime", local  # auto: the avatar has its model.onnx now
    a, b = decode_frames(tmp_path / "served.mp4"), decode_frames(tmp_path / "local.mp4")
    assert len(a) == len(b) > 10
    assert max(np.abs(x.astype(np.int16) - y.astype(np.int16)).max() for x, y in zip(a, b, strict=True)) <= 2

    # The gateway's backend for the avatar (backend=triton): the avatar's model on the same server.
    # (A generous deadline: the default, 150 ms per frame, is for live frames, not a loaded test machine.)
    config = GatewayConfig(
        backend="triton", triton_url=avatar_server.grpc_url, avatars=(str(folder),), compute_budget_ms=5000,
        backend_timeout_s=5.0,
    )  # fmt: skip
    backend = avatar_backend(config, load_avatar(folder))
    mel, faces = verify.random_inputs(2, seed=5)
    try:
        assert isinstance(backend, TritonBackend) and backend.model == "avatar_anna" and backend.timeout_s == 5.0
        with TritonBackend(avatar_server.grpc_url, "avatar_anna") as direct:
            assert np.abs(backend.infer(mel, faces) - direct.infer(mel, faces)).max() <= 1e-6
    finally:
        backend.close()
