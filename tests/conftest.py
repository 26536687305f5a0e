"""Shared integration fixtures: a real tritonserver serving a small random generator on free loopback ports.

`triton_repository` exports a narrow random-weight generator once per session (through the real
export path); `triton_server` starts the embedded tritonserver on it. The streaming tests reuse both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lipsync.client import contract
from lipsync.client import model_repository as layout
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
