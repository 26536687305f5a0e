"""Shared integration fixtures: a real tritonserver serving a small random generator on free loopback ports.

`triton_repository` exports a narrow random-weight generator once per session (through the real
export path); `triton_server` starts the embedded tritonserver on it. The streaming tests reuse both.
`avatar_factory` writes avatar folders in the format of client/avatar.py (what `lipsync-train
enroll` writes); `enrolled_avatar` is one with weights of its own and a talking loop.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lipsync.client import avatar as avatar_format
from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.face_tracking import FaceBox
from lipsync.client.triton_server import EmbeddedTritonServer

# Narrow enough that a frame costs a few ms on a CPU, wide enough that outputs differ frame to frame.
TEST_WIDTH = 0.25


@dataclass(frozen=True)
class TritonDeployment:
    """A running embedded tritonserver and the repository it serves."""

    server: EmbeddedTritonServer
    repository: Path
    model: str = contract.EMBEDDED_MODEL

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def metrics_url(self) -> str:
        return self.server.metrics_url

    @property
    def onnx_path(self) -> Path:
        """The exact file the served model runs, for in-process comparisons."""
        return layout.artifact_path(self.repository, contract.EMBEDDED_MODEL, layout.ONNX_FILE)


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from lipsync.export.cli import ExportConfig, run

    repository = tmp_path_factory.mktemp("model_repository")
    config = ExportConfig(
        random_weights=True,
        width=TEST_WIDTH,
        output_dir=repository,
        fp16=False,
        real_inputs=False,
        verify_samples=2,
        quiet=True,
    )
    run(config)
    return repository


@pytest.fixture(scope="session")
def triton_server(triton_repository: Path) -> Iterator[TritonDeployment]:
    with EmbeddedTritonServer(triton_repository) as server:
        yield TritonDeployment(server=server, repository=triton_repository)


AVATAR_NAME = "anna"
AVATAR_FPS = 25
# Added to the shipped generator's last bias (content B, G, R, mask logits): a stand-in for
# fine-tuning on a person that makes the avatar's model unmistakable in every output. Its mouths come
# out dark and purple, far beyond the difference any codec makes (tests/integration/test_avatar_serving.py).
AVATAR_BIAS_SHIFT = (2.0, -2.0, 2.0, 3.0)


def _write_loop(path: Path, frames: list[np.ndarray], fps: int = AVATAR_FPS) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_avatar_folder(
    folder: Path,
    name: str = AVATAR_NAME,
    *,
    frames: list[np.ndarray] | None = None,
    weights: Path | None = None,
    manifest: dict | None = None,
) -> Path:
    """An avatar folder as enrolment leaves it: weights, still, loop, and the manifest written last."""
    import cv2

    if frames is None:
        from tests.media import astronaut_bgr

        face = cv2.resize(astronaut_bgr(), (256, 256), interpolation=cv2.INTER_AREA)
        frames = [np.roll(face, shift, axis=1) for shift in range(0, 10, 2)]  # a few frames, slightly moving
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights or layout.SHIPPED_GENERATOR, folder / avatar_format.WEIGHTS_FILE)
    cv2.imwrite(str(folder / avatar_format.STILL_FILE), frames[0])
    _write_loop(folder / avatar_format.LOOP_FILE, frames)
    data = manifest or {
        "format": avatar_format.FORMAT_VERSION,
        "name": name,
        "fps": float(AVATAR_FPS),
        "source": {"video": "tests (synthetic)", "seconds": len(frames) / AVATAR_FPS},
        "training": {"steps": 0, "note": "test fixture"},
    }
    (folder / avatar_format.MANIFEST_FILE).write_text(json.dumps(data))
    return folder


@pytest.fixture
def avatar_factory(tmp_path: Path) -> Callable[..., Path]:
    """make(name="anna", folder=None, **write_avatar_folder options) -> a cheap avatar folder (shipped weights)."""

    def make(name: str = AVATAR_NAME, folder: Path | None = None, **options) -> Path:
        return write_avatar_folder(folder or tmp_path / f"avatar-{name}", name, **options)

    return make


@dataclass(frozen=True)
class EnrolledAvatar:
    """An avatar folder with its own weights, and the face box of each frame of its loop."""

    folder: Path
    boxes: tuple[FaceBox, ...]

    @property
    def name(self) -> str:
        return AVATAR_NAME


@pytest.fixture(scope="session")
def enrolled_avatar(tmp_path_factory: pytest.TempPathFactory) -> EnrolledAvatar:
    """'anna': the shipped generator with AVATAR_BIAS_SHIFT, and a synthetic talking head as her loop.

    Each loop frame carries its index in the top-left corner (benchmarks/peer.stamp_index), so a
    presenter frame that comes back from the gateway names the loop frame it was made from.
    """
    torch = pytest.importorskip("torch")
    from lipsync.benchmarks.peer import stamp_index
    from lipsync.client.networks import save_checkpoint
    from lipsync.client.networks.wav2lip import Wav2Lip
    from lipsync.training.data.synthetic.clip import render_talking_clip

    root = tmp_path_factory.mktemp("enrolled_avatar")
    frames, _, boxes = render_talking_clip(
        7, "hello, my name is anna and this is my avatar", size=(320, 320), fps=AVATAR_FPS
    )
    frames = [stamp_index(frame, i) for i, frame in enumerate(frames)]
    model = Wav2Lip.from_checkpoint(layout.SHIPPED_GENERATOR)
    with torch.no_grad():
        model.output_block[1].bias += torch.tensor(AVATAR_BIAS_SHIFT)
    weights = save_checkpoint(root / "fine_tuned.pt", model=model, config=model.config)
    folder = write_avatar_folder(root / AVATAR_NAME, frames=frames, weights=weights)
    return EnrolledAvatar(folder, tuple(FaceBox(*b) for b in boxes))
