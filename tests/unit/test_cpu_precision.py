"""The CPU paths: INT8 ONNX and PyTorch bf16 against FP32 at their stated tolerances, the chooser (on fakes
with a virtual clock, and on the real paths), explicit and unknown precisions, and the failing INT8 stage."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.backends import cpu_paths, create_backend
from lipsync.client.backends.base import BackendError, LipSyncBackend
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.export import quantize, verify
from lipsync.export.cli import ExportConfig, main

torch = pytest.importorskip("torch")
from lipsync.client.backends.pytorch import PyTorchBackend, fold_batchnorm  # noqa: E402
from lipsync.client.networks import Wav2Lip  # noqa: E402
from lipsync.export.onnx_export import export_onnx  # noqa: E402

pytestmark = pytest.mark.unit

needs_native_bf16 = pytest.mark.skipif(
    cpu_paths.native_bf16() is None,
    reason=f"this CPU has no native bf16 ({' or '.join(cpu_paths.NATIVE_BF16_FLAGS)}): the bf16 path is refused here",
)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> cpu_paths.CpuArtifacts:
    """The shipped generator as export writes it: FP32 ONNX, its INT8 sibling, the checkpoint (trained weights:
    the tolerances were measured on them)."""
    folder = tmp_path_factory.mktemp("shipped")
    model = Wav2Lip.from_checkpoint(layout.SHIPPED_GENERATOR)
    metadata = {contract.MEL_OFFSET_METADATA_KEY: str(model.config.mel_offset), "weights": "trained"}
    fp32 = export_onnx(model, folder / layout.ONNX_FILE, max_batch=contract.MAX_BATCH, metadata=metadata)
    quantize.quantize_int8(fp32, cpu_paths.int8_path(fp32))
    return cpu_paths.CpuArtifacts.beside(fp32, layout.SHIPPED_GENERATOR)


@pytest.fixture(scope="module")
def fp32(shipped: cpu_paths.CpuArtifacts) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(shipped.onnx_fp32)


# ---------------------------------------------------------------------------------------------- accuracy


def test_int8_matches_fp32_within_its_tolerance_on_held_out_real_inputs(
    shipped: cpu_paths.CpuArtifacts, fp32: OnnxRuntimeBackend
) -> None:
    with OnnxRuntimeBackend(shipped.onnx_int8) as int8:
        # Seed 7: real inputs the calibration (seeds from quantize.CALIBRATION_SEED) never saw.
        results = quantize.check_int8(fp32.infer, int8.infer, samples=8, seed=7)
        assert int8.mel_offset == fp32.mel_offset, "the INT8 model keeps the export's metadata"
        assert quantize.INT8_METADATA_KEY in int8.metadata
    assert all(r.ok for r in results)
    assert min(r.max_abs for r in results) > 0, "an INT8 model equal to FP32 bit for bit was not quantized"
    assert shipped.onnx_int8.stat().st_size < 0.7 * shipped.onnx_fp32.stat().st_size
    graph = onnx.load(str(shipped.onnx_int8)).graph
    assert any(n.op_type == "QLinearConv" for n in graph.node)


@needs_native_bf16
def test_bf16_matches_fp32_within_its_tolerance(shipped: cpu_paths.CpuArtifacts, fp32: OnnxRuntimeBackend) -> None:
    backend = PyTorchBackend(shipped.checkpoint, bf16=True)
    assert backend.dtype == torch.bfloat16
    mel, faces = verify.real_inputs(8, seed=7)
    got = backend.infer(mel, faces)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (8, *contract.FACE_OUTPUT.shape)
    result = verify.compare("bf16", "real", fp32.infer(mel, faces), got, verify.BF16_TOLERANCE, verify.BF16_MIN_PSNR_DB)
    assert result.ok, result.describe()
    assert result.max_abs > 0, "a bf16 path equal to FP32 bit for bit did not run in bf16"


def test_folding_batchnorm_keeps_the_fp32_outputs() -> None:
    model = Wav2Lip.from_checkpoint(layout.SHIPPED_GENERATOR).eval()
    mel, faces = (torch.from_numpy(a) for a in verify.real_inputs(2))
    with torch.inference_mode():
        want = model(mel, faces).numpy()
        folded = fold_batchnorm(copy.deepcopy(model))
        got = folded(mel, faces).numpy()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.skipif(cpu_paths.native_bf16() is not None, reason="this CPU has native bf16: nothing to refuse")
def test_bf16_is_refused_on_a_cpu_without_native_bf16() -> None:
    with pytest.raises(BackendError, match="native bf16"):
        PyTorchBackend(layout.SHIPPED_GENERATOR, bf16=True)


def test_bf16_is_the_cpu_path_only() -> None:
    # "meta" stands for any device other than the CPU, CUDA included, and exists on every host.
    with pytest.raises(ValueError, match="bf16 is the CPU path .* device='meta'"):
        PyTorchBackend(layout.SHIPPED_GENERATOR, bf16=True, device="meta")


# ---------------------------------------------------------------------------------------------- the chooser


class VirtualClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class TimedFake(LipSyncBackend):
    """A backend that costs `ms_per_frame` of virtual time per frame (and more on its first call)."""

    def __init__(self, name: str, clock: VirtualClock, ms_per_frame: dict[int, float]) -> None:
        self.name, self.clock, self.ms_per_frame = name, clock, ms_per_frame
        self.calls = 0
        self.closed = False

    def _infer_batch(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        n = mel.shape[0]
        first_call = 50.0 if self.calls == 0 else 0.0  # a warm-up that the figures must not include
        self.clock.now_s += (first_call + self.ms_per_frame[n] * n) / 1000
        self.calls += 1
        return np.zeros((n, *contract.FACE_OUTPUT.shape), np.float32)

    def close(self) -> None:
        self.closed = True


def test_the_chooser_keeps_the_measured_fastest_and_closes_the_rest() -> None:
    clock = VirtualClock()
    fakes = {
        "fp32": TimedFake("fp32", clock, {1: 8.0, 8: 7.0}),
        "int8": TimedFake("int8", clock, {1: 6.0, 8: 4.5}),
        "bf16": TimedFake("bf16", clock, {1: 5.0, 8: 6.0}),  # fastest alone, slower batched: geomean 5.48 > 5.20
    }
    choice = cpu_paths.choose_fastest({k: lambda k=k: fakes[k] for k in fakes}, budget_s=0.5, clock=clock)
    assert choice.precision == "int8" and choice.backend is fakes["int8"]
    assert not fakes["int8"].closed and fakes["fp32"].closed and fakes["bf16"].closed
    figures = {t.precision: t.ms_per_frame for t in choice.timings}
    assert figures == {k: pytest.approx(f.ms_per_frame) for k, f in fakes.items()}
    # Warm-up (0.309 s of virtual time) and rounds (0.159 s each) until the budget is spent.
    assert choice.measure_s == pytest.approx(0.309 + 2 * 0.159)
    assert "int8" in choice.describe() and "batch 8: 4.50 ms/frame" in choice.describe()


def test_the_chooser_runs_one_round_however_slow_and_never_a_batch_past_max_batch() -> None:
    clock = VirtualClock()
    slow = TimedFake("slow", clock, {1: 900.0, 2: 900.0})
    slow.max_batch = 2
    choice = cpu_paths.choose_fastest({"fp32": lambda: slow}, budget_s=0.1, clock=clock)
    assert choice.timings[0].ms_per_frame == {1: pytest.approx(900.0), 2: pytest.approx(900.0)}
    assert slow.calls == 4  # warm-up and one timed call at each batch


def test_auto_on_the_real_paths_keeps_the_one_it_measured_fastest(shipped: cpu_paths.CpuArtifacts) -> None:
    choice = cpu_paths.choose("auto", shipped, threads=1)
    try:
        runnable = [p for p in cpu_paths.CPU_PATHS if shipped.missing(p) is None]
        assert [t.precision for t in choice.timings] == runnable
        assert all(set(t.ms_per_frame) == {1, 8} for t in choice.timings)
        assert choice.precision == min(choice.timings, key=lambda t: t.score).precision
        assert choice.measure_s < 2.0, "auto must cost well under 2 s at start"
        mel, faces = verify.real_inputs(2)
        assert choice.backend.infer(mel, faces).shape == (2, *contract.FACE_OUTPUT.shape)
    finally:
        choice.backend.close()


def test_an_explicit_precision_is_honoured_unmeasured(shipped: cpu_paths.CpuArtifacts) -> None:
    choice = cpu_paths.choose("int8", shipped)
    assert choice.timings == () and choice.reason == "chosen explicitly"
    assert isinstance(choice.backend, OnnxRuntimeBackend) and choice.backend.model_path == shipped.onnx_int8
    with create_backend("onnxruntime", weights=shipped.onnx_fp32, precision="int8") as backend:
        assert backend.model_path == shipped.onnx_int8
    with create_backend("onnxruntime", weights=shipped.onnx_fp32) as backend:
        assert backend.model_path == shipped.onnx_fp32, "the default stays fp32"


@needs_native_bf16
def test_create_backend_runs_pytorch_bf16_when_asked(shipped: cpu_paths.CpuArtifacts) -> None:
    with create_backend("pytorch", weights=shipped.checkpoint, precision="bf16") as backend:
        assert isinstance(backend, PyTorchBackend) and backend.dtype == torch.bfloat16


def test_auto_with_one_runnable_path_opens_it_without_measuring(shipped: cpu_paths.CpuArtifacts) -> None:
    only_fp32 = cpu_paths.CpuArtifacts(onnx_fp32=shipped.onnx_fp32, onnx_int8=shipped.onnx_fp32.with_name("absent"))
    choice = cpu_paths.choose("auto", only_fp32)
    assert choice.precision == "fp32" and choice.timings == ()
    assert f"int8 (no ONNX Runtime INT8 model at {only_fp32.onnx_int8}" in choice.reason
    assert "bf16 (no file given for PyTorch bf16)" in choice.reason


@pytest.mark.parametrize("value", ["int4", "FP32", "", None])
def test_an_unknown_precision_is_refused_by_name(value: object, shipped: cpu_paths.CpuArtifacts) -> None:
    with pytest.raises(ValueError, match=f"unknown precision {value!r}"):
        cpu_paths.choose(value, shipped)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"unknown precision {value!r}"):
        create_backend("onnxruntime", weights=shipped.onnx_fp32, precision=value)  # type: ignore[arg-type]


def test_a_path_that_cannot_run_is_refused_with_the_reason(shipped: cpu_paths.CpuArtifacts, tmp_path: Path) -> None:
    missing = tmp_path / layout.ONNX_FILE
    with pytest.raises(
        BackendError, match=f"precision int8 cannot run: no .* at {re.escape(str(cpu_paths.int8_path(missing)))}"
    ):
        create_backend("onnxruntime", weights=missing, precision="int8")
    with pytest.raises(BackendError, match="not a path of this backend"):
        create_backend("pytorch", weights=shipped.checkpoint, precision="int8")
    with pytest.raises(ValueError, match="in-process backends"):
        create_backend("triton", precision="int8")


# ---------------------------------------------------------------------------------------------- export stage


def test_the_int8_check_fails_past_its_tolerance_naming_the_error(
    shipped: cpu_paths.CpuArtifacts, fp32: OnnxRuntimeBackend
) -> None:
    with OnnxRuntimeBackend(shipped.onnx_int8) as int8:
        with pytest.raises(verify.VerificationError, match=r"ONNX INT8 vs ONNX FP32 .*max abs 0\.0\d+ .*FAILED"):
            quantize.check_int8(fp32.infer, int8.infer, samples=2, tolerance=(1e-6, 1e-7))
        with pytest.raises(verify.VerificationError, match=r"PSNR \d+\.\d dB \(min 90\) FAILED") as info:
            quantize.check_int8(fp32.infer, int8.infer, samples=2, min_psnr_db=90.0)
    assert 40 < info.value.result.psnr_db < 90


def test_no_int8_without_real_inputs() -> None:
    assert ExportConfig(random_weights=True).writes_int8
    assert not ExportConfig(random_weights=True, real_inputs=False).writes_int8
    with pytest.raises(ValueError, match="int8_tolerance must be > 0, got 0"):
        ExportConfig(random_weights=True, int8_tolerance=0.0)


def test_export_exits_non_zero_naming_the_int8_error_and_leaves_no_int8_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--random-weights", "--width", "0.25", "--output-dir", str(tmp_path), "--verify-samples", "2"]
    code = main([*args, "--fp16", "false", "--int8-tolerance", "1e-7", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "verification failed: ONNX INT8 vs ONNX FP32 on real inputs" in err and "FAILED" in err
    assert "max abs" in err and "(tolerance 1e-07)" in err
    assert not list(tmp_path.rglob(cpu_paths.INT8_ONNX_FILE)), "an INT8 model that failed its check was left"
