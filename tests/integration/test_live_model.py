"""The live default end to end: `lipsync-export --live` writes wav2lip_live from the shipped 75 ms weights,
lipsync-server's default loads it beside the embedded model, and a client learns its 75 ms look-ahead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.client.backends.triton import TritonBackend
from lipsync.client.triton_server import EmbeddedTritonServer, default_models
from lipsync.export.verify import random_inputs
from tests.conftest import TEST_WIDTH

pytestmark = pytest.mark.integration


def test_the_live_model_is_exported_served_by_default_and_needs_75_ms(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from lipsync.export.cli import ExportConfig, run

    repo = tmp_path / "repository"
    common = {"output_dir": repo, "fp16": False, "real_inputs": False, "verify_samples": 1, "quiet": True}
    run(ExportConfig(random_weights=True, width=TEST_WIDTH, **common))
    report = run(ExportConfig(live=True, **common))
    assert "wav2lip_cpu_lookahead75.pt" in report["model"]
    live_onnx = layout.live_onnx_model(repo)
    assert live_onnx.is_file() and not layout.missing_files(repo, contract.LIVE_MODEL)

    models = default_models(repo)
    assert models == (contract.EMBEDDED_MODEL, contract.LIVE_MODEL)
    mel, faces = random_inputs(3, seed=2)
    with EmbeddedTritonServer(repo, models) as server, TritonBackend(server.grpc_url, contract.LIVE_MODEL) as live:
        server.wait_ready()
        assert live.wait_until_ready(30)
        assert live.mel_offset == -10 and live.lookahead_ms == 75.0
        served = live.infer(mel, faces)
    # precision "auto" may pick bf16 where the CPU has it: served within bf16's stated tolerance of FP32 ONNX.
    with OnnxRuntimeBackend(live_onnx) as local:
        assert local.mel_offset == -10
        assert np.abs(served - local.infer(mel, faces)).max() <= 0.03
