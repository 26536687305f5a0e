"""A real tritonserver tells the Triton client the served weights' mel offset: -10 for a low-look-ahead
export, 0 for the shipped weights; learnt once the server is up, however late that is."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lipsync.client import contract
from lipsync.client.backends.triton import TritonBackend
from lipsync.client.triton_server import EmbeddedTritonServer, free_port
from lipsync.export.verify import random_inputs
from tests.conftest import AVATAR_NAME, TEST_WIDTH, write_avatar_folder

pytestmark = pytest.mark.integration

OFFSET = -10
SHIPPED = f"avatar_{AVATAR_NAME}"  # the shipped weights, served as an avatar's model beside the default one
MODELS = (contract.EMBEDDED_MODEL, SHIPPED)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wav2lip_python exported (the real export path) from a narrow offset -10 checkpoint, and the shipped weights."""
    torch = pytest.importorskip("torch")
    from lipsync.client.networks import Wav2Lip, Wav2LipConfig, save_checkpoint
    from lipsync.export.cli import ExportConfig, run

    root = tmp_path_factory.mktemp("low_lookahead")
    torch.manual_seed(0)
    config = Wav2LipConfig(width=TEST_WIDTH, mel_offset=OFFSET)
    checkpoint = save_checkpoint(root / "low_lookahead.pt", model=Wav2Lip(config).eval(), config=config)
    repo = root / "repository"
    common = {"output_dir": repo, "fp16": False, "real_inputs": False, "verify_samples": 1, "quiet": True}
    run(ExportConfig(checkpoint=checkpoint, **common))
    run(ExportConfig(avatar=write_avatar_folder(root / "avatar"), **common))  # the folder holds the shipped weights
    return repo


@dataclass
class Served:
    """A tritonserver on a port known before it starts, started by the first test that needs it up."""

    server: EmbeddedTritonServer
    url: str
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def up(self) -> None:
        with self._lock:
            if not self.server.is_running():
                self.server.start()
                self.server.wait_ready()


@pytest.fixture(scope="module")
def served(repository: Path) -> Iterator[Served]:
    port = free_port()
    server = EmbeddedTritonServer(repository, MODELS, grpc_port=port)
    try:
        yield Served(server, f"127.0.0.1:{port}")
    finally:
        server.stop()


def test_a_client_made_before_the_server_learns_the_offset_once_it_is_up(served: Served) -> None:
    with TritonBackend(served.url) as backend, TritonBackend(served.url, model=SHIPPED) as shipped:
        if not served.server.is_running():  # alone or first: the client exists before its server
            assert not backend.is_ready()
            assert backend.mel_offset == 0, "nothing could be read yet: the released alignment for now"
            served.up()
        assert backend.wait_until_ready(30)
        assert backend.mel_offset == OFFSET and backend.lookahead_ms == 75.0
        # Never asked about readiness: reading it asks the server.
        assert shipped.mel_offset == 0 and shipped.lookahead_ms == contract.FULL_LOOKAHEAD_MS


async def test_an_asyncio_client_learns_it_at_its_first_answer_or_readiness_check(served: Served) -> None:
    await asyncio.to_thread(served.up)
    framed, checked = TritonBackend(served.url), TritonBackend(served.url)
    try:
        assert framed.mel_offset == 0, "inside the loop a read never calls the server"
        mel, faces = random_inputs(1)
        out = await framed.infer_frame(mel[0], faces[0])
        assert out.shape == contract.FACE_OUTPUT.shape
        assert framed.mel_offset == OFFSET
        assert await checked.is_ready_async()
        assert checked.mel_offset == OFFSET
    finally:
        await framed.aclose()
        await checked.aclose()
