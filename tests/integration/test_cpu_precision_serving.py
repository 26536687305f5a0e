"""The embedded model's `precision` parameter through a real tritonserver: int8 serves the INT8 model
(within its tolerance of FP32), auto logs its measurements and choice, an unknown value stops the load."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.backends import cpu_paths
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.client.backends.triton import TritonBackend
from lipsync.client.triton_server import EmbeddedTritonServer, TritonServerError
from lipsync.export import model_repository, quantize, verify

pytestmark = pytest.mark.integration

# The server runs the same INT8 file with the same ONNX Runtime as in-process: integer convolutions sum
# exactly, so only the float parts may round differently with the batch and thread count.
SAME_FILE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped generator exported with its INT8 model (real inputs, the default), no FP16 variant."""
    pytest.importorskip("torch")
    from lipsync.export.cli import ExportConfig, run

    repo = tmp_path_factory.mktemp("int8_repository")
    run(ExportConfig(output_dir=repo, fp16=False, verify_samples=2, quiet=True))
    return repo


def set_precision(repository: Path, precision: str) -> None:
    """Rewrite the embedded model's precision parameter through Triton's own config schema."""
    path = layout.config_path(repository, contract.EMBEDDED_MODEL)
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config.parameters["precision"].string_value = precision
    path.write_text(text_format.MessageToString(config))


def version_file(repository: Path, key: str) -> Path:
    return layout.artifact_path(repository, contract.EMBEDDED_MODEL, model_repository.EMBEDDED_PARAMETERS[key])


@pytest.fixture
def serve(repository: Path) -> Iterator[Callable[[str], EmbeddedTritonServer]]:
    """serve(precision) -> a started server on the repository (one at a time); fp32 again afterwards."""
    servers: list[EmbeddedTritonServer] = []

    def start(precision: str) -> EmbeddedTritonServer:
        set_precision(repository, precision)
        server = EmbeddedTritonServer(repository, startup_timeout_s=120)
        servers.append(server)
        return server.__enter__()

    yield start
    for server in servers:
        server.stop()
    set_precision(repository, "fp32")


def test_precision_int8_serves_the_int8_model_within_its_tolerance(serve, repository: Path) -> None:
    server = serve("int8")
    mel, faces = verify.real_inputs(12, seed=5)
    with TritonBackend(server.grpc_url) as backend:
        served = backend.infer(mel, faces)
    with OnnxRuntimeBackend(version_file(repository, "int8_onnx_file")) as int8:
        same = verify.compare("served vs in-process INT8", "real", int8.infer(mel, faces), served, (1e-5, 1e-6))
    with OnnxRuntimeBackend(version_file(repository, "onnx_file")) as fp32:
        against_fp32 = verify.compare(
            "served INT8 vs FP32", "real", fp32.infer(mel, faces), served, quantize.INT8_TOLERANCE,
            quantize.INT8_MIN_PSNR_DB,
        )  # fmt: skip
    assert same.max_abs <= SAME_FILE_TOLERANCE, same.describe()
    assert against_fp32.ok, against_fp32.describe()
    assert against_fp32.max_abs > 100 * SAME_FILE_TOLERANCE, "the server ran FP32, not INT8"
    assert "precision int8: ONNX Runtime INT8 on the CPU (chosen explicitly)" in server.log_tail()


def test_precision_auto_logs_every_measured_path_and_its_choice(serve) -> None:
    server = serve("auto")
    log = server.log_tail()
    with TritonBackend(server.grpc_url) as backend:
        mel, faces = verify.real_inputs(2)
        assert backend.infer(mel, faces).shape == (2, *contract.FACE_OUTPUT.shape)
    line = next(line for line in log.splitlines() if "precision auto:" in line)
    chosen = re.search(r"precision auto: (.+?) on the CPU \(auto: the fastest measured here", line)
    assert chosen, line
    runnable = ["ONNX Runtime FP32", "ONNX Runtime INT8"] + (["PyTorch bf16"] if cpu_paths.native_bf16() else [])
    figures = {label: re.search(rf"{label} batch 1: ([\d.]+) ms/frame, batch 8: ([\d.]+) ms/frame", line)
               for label in runnable}  # fmt: skip
    assert all(figures.values()), line
    scores = {label: np.sqrt(float(m[1]) * float(m[2])) for label, m in figures.items()}
    assert chosen[1] == min(scores, key=scores.get), "the log's choice is the fastest of its own figures"


def test_an_unknown_precision_stops_the_model_load_naming_it(serve) -> None:
    with pytest.raises(TritonServerError, match=r"parameter precision: unknown precision 'int4'"):
        serve("int4")
