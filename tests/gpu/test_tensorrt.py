"""GPU-only paths: the TensorRT FP16 engine (build, profile, timing cache, parity with ONNX Runtime) and the
embedded Python model's PyTorch FP16 + CUDA graphs path behind a real tritonserver.

They run where TensorRT / a CUDA GPU exist (NVIDIA's containers on GPU hosts) and skip elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync.client import contract
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.export import verify
from lipsync.export.tensorrt_build import tensorrt_unavailable

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
needs_tensorrt = pytest.mark.skipif(tensorrt_unavailable() is not None, reason=str(tensorrt_unavailable()))
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
WIDTH = 0.5


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lipsync.export.cli import ExportConfig, run

    repository = tmp_path_factory.mktemp("repository")
    run(ExportConfig(random_weights=True, width=WIDTH, output_dir=repository, fp16=False, quiet=True))
    return repository


@needs_tensorrt
def test_engine_matches_onnxruntime_across_the_profile(exported: Path, tmp_path: Path) -> None:
    from lipsync.export.tensorrt_build import EngineSpec, TensorRTRunner, build_engine

    onnx_path = exported / contract.ONNX_MODEL / "1" / "model.onnx"
    cache = tmp_path / "timing.cache"
    spec = EngineSpec()
    engine = build_engine(onnx_path, tmp_path / "model.plan", spec=spec, timing_cache=cache)
    assert cache.stat().st_size > 0, "the timing cache is written for the next build"
    runner = TensorRTRunner(engine)
    assert runner.max_batch == contract.MAX_BATCH
    reference = OnnxRuntimeBackend(onnx_path)
    results = verify.verify(
        "TensorRT FP16 vs ONNX Runtime FP32",
        reference.infer,
        runner,
        verify.FP16_TOLERANCE,
        samples=contract.OPT_BATCH,
        batches=(spec.min_batch, spec.opt_batch, spec.max_batch),
    )
    assert all(r.ok for r in results)
    with pytest.raises(ValueError, match="exceeds the engine's profile max"):
        runner(*verify.random_inputs(contract.MAX_BATCH + 1))

    # A second build reuses the timing cache (and yields a working engine again).
    again = build_engine(onnx_path, tmp_path / "again.plan", spec=spec, timing_cache=cache)
    mel, faces = verify.random_inputs(3)
    assert np.abs(TensorRTRunner(again)(mel, faces) - runner(mel, faces)).max() <= verify.FP16_TOLERANCE[0]


@needs_tensorrt
def test_export_cli_tensorrt_stage(tmp_path: Path) -> None:
    from lipsync.export.cli import main

    args = ["--random-weights", "--width", str(WIDTH), "--output-dir", str(tmp_path), "--tensorrt"]
    args += ["--timing-cache", str(tmp_path / "timing.cache")]
    assert main(args) == 0
    assert (tmp_path / contract.TENSORRT_MODEL / "1" / "model.plan").stat().st_size > 0


@needs_cuda
def test_embedded_model_runs_pytorch_fp16_with_cuda_graphs_on_a_gpu(exported: Path) -> None:
    from lipsync.client.backends.triton import TritonBackend
    from lipsync.client.triton_server import EmbeddedTritonServer

    mel, faces = verify.real_inputs(12)
    want = OnnxRuntimeBackend(exported / contract.ONNX_MODEL / "1" / "model.onnx").infer(mel, faces)
    with EmbeddedTritonServer(exported) as server, TritonBackend(server.grpc_url) as backend:
        got = backend.infer(mel, faces)
        log = server.log_tail()
    assert "PyTorch FP16 with CUDA graphs" in log
    result = verify.compare("Triton PyTorch FP16", "real", want, got, verify.FP16_TOLERANCE)
    assert result.ok, result.describe()
