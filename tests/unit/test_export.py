"""Export stages on a small random generator: ONNX FP32/FP16 against PyTorch, the CLI's checks and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from lipsync.client import contract
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.export import model_repository, verify
from lipsync.export.cli import ExportConfig, main, parse_config
from lipsync.export.onnx_export import check_onnx_io, convert_fp16
from lipsync.export.tensorrt_build import tensorrt_unavailable

torch = pytest.importorskip("torch")
from lipsync.client.networks import Wav2Lip, Wav2LipConfig  # noqa: E402

pytestmark = pytest.mark.unit
WIDTH = 0.25


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """One CLI run (random weights, seed 0) shared by the tests: exporting costs seconds."""
    repo = tmp_path_factory.mktemp("repository")
    args = ["--random-weights", "--width", str(WIDTH), "--output-dir", str(repo), "--verify-samples", "2"]
    return repo, main(args)


@pytest.fixture(scope="module")
def model() -> Wav2Lip:
    torch.manual_seed(0)  # the weights the CLI exported
    return Wav2Lip(Wav2LipConfig(width=WIDTH)).eval()


@pytest.fixture(scope="module")
def onnx_fp32(exported: tuple[Path, int]) -> Path:
    return exported[0] / contract.ONNX_MODEL / "1" / "model.onnx"


def torch_run(model: Wav2Lip, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(mel), torch.from_numpy(faces)).numpy()


def test_onnx_has_the_contract_io_with_only_the_batch_dynamic(onnx_fp32: Path) -> None:
    graph = onnx.load(str(onnx_fp32)).graph
    assert [i.name for i in graph.input] == [s.name for s in contract.INPUTS]
    assert [o.name for o in graph.output] == [s.name for s in contract.OUTPUTS]
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value, "batch axis must be symbolic"
        assert all(d.dim_value > 0 for d in dims[1:])
    assert max(o.version for o in onnx.load(str(onnx_fp32)).opset_import if o.domain in ("", "ai.onnx")) >= 17


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_fp32_equals_pytorch_at_any_batch(model: Wav2Lip, onnx_fp32: Path, batch: int) -> None:
    mel, faces = verify.random_inputs(batch, seed=batch)
    got = OnnxRuntimeBackend(onnx_fp32).infer(mel, faces)
    result = verify.compare("fp32", "random", torch_run(model, mel, faces), got, verify.FP32_TOLERANCE)
    assert result.ok, result.describe()


def test_fp16_variant_keeps_fp32_io_and_meets_its_tolerance(model: Wav2Lip, onnx_fp32: Path, tmp_path: Path) -> None:
    fp16 = convert_fp16(onnx_fp32, tmp_path / "model_fp16.onnx")
    graph = onnx.load(str(fp16)).graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer), "weights must be half"
    assert fp16.stat().st_size < 0.6 * onnx_fp32.stat().st_size
    mel, faces = verify.real_inputs(4)
    got = OnnxRuntimeBackend(fp16).infer(mel, faces)
    assert got.dtype == np.float32
    result = verify.compare("fp16", "real", torch_run(model, mel, faces), got, verify.FP16_TOLERANCE)
    assert result.ok, result.describe()
    assert result.max_abs > 0, "an FP16 model that matches FP32 bit for bit was not converted"


def test_check_onnx_io_names_the_mismatch(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "wrong.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match=contract.MEL_INPUT.name):
        check_onnx_io(path)


def test_real_inputs_are_a_masked_face_and_speech() -> None:
    mel, faces = verify.real_inputs(6)
    contract.check_batch(mel, faces)
    assert (faces[:, :3, contract.MASK_START_ROW :] == 0).all()
    assert faces[:, 3:, contract.MASK_START_ROW :].std() > 0.05, "the reference half shows a real face"
    assert mel.min() >= -4 and mel.max() <= 4 and mel.std() > 0.5, "speech, not silence"


def test_verify_raises_with_the_measured_error() -> None:
    def reference(mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return faces[:, :3]

    def off_by_a_bit(mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return faces[:, :3] + 0.01

    with pytest.raises(verify.VerificationError, match=r"max abs 0\.01 \(tolerance 0\.0001\).*FAILED") as info:
        verify.verify("stage", reference, off_by_a_bit, verify.FP32_TOLERANCE, samples=2, input_sets=("random",))
    assert info.value.result.max_abs == pytest.approx(0.01, rel=1e-3)
    nan = verify.compare("stage", "random", np.zeros((1, 3)), np.full((1, 3), np.nan), verify.FP16_TOLERANCE)
    assert not nan.ok


# ---------------------------------------------------------------------------------------------- the CLI


def test_cli_writes_a_complete_repository(exported: tuple[Path, int]) -> None:
    repo, code = exported
    assert code == 0
    for model in contract.SERVED_MODELS:
        assert (repo / model / "config.pbtxt").read_text() == model_repository.render_config(model)
    onnx_file = repo / contract.ONNX_MODEL / "1" / "model.onnx"
    python_copy = repo / contract.EMBEDDED_MODEL / "1" / "model.onnx"
    assert onnx_file.read_bytes() == python_copy.read_bytes()
    props = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    assert props["weights"] == "random" and float(props["width"]) == WIDTH
    assert (repo / contract.ONNX_MODEL / "1" / "model_fp16.onnx").is_file()
    # The INT8 model beside the FP32 one it was quantized from, and in the Python model's folder, which runs it.
    int8_file = repo / contract.ONNX_MODEL / "1" / model_repository.EMBEDDED_PARAMETERS["int8_onnx_file"]
    int8_copy = repo / contract.EMBEDDED_MODEL / "1" / model_repository.EMBEDDED_PARAMETERS["int8_onnx_file"]
    assert int8_file.read_bytes() == int8_copy.read_bytes()
    assert (repo / contract.EMBEDDED_MODEL / "1" / "model.py").is_file()
    reloaded = Wav2Lip.from_checkpoint(repo / contract.EMBEDDED_MODEL / "1" / "model.pt")
    assert reloaded.config.width == WIDTH

    resolved = json.loads((repo / "export_config.json").read_text())
    assert resolved["config"]["width"] == WIDTH and resolved["config"]["random_weights"] is True
    stages = {(v["stage"], v["inputs"]) for v in resolved["verification"]}
    assert stages == {
        ("ONNX FP32 vs PyTorch FP32", "random"),
        ("ONNX FP32 vs PyTorch FP32", "real"),
        ("ONNX FP16 vs PyTorch FP32", "random"),
        ("ONNX FP16 vs PyTorch FP32", "real"),
        ("ONNX INT8 vs ONNX FP32", "real"),  # calibrated on real inputs, checked on them alone
    }
    assert all(v["max_abs"] <= v["max_tolerance"] for v in resolved["verification"])


def test_cli_fails_with_the_measured_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        ["--random-weights", "--width", str(WIDTH), "--output-dir", str(tmp_path), "--verify-samples", "1",
         "--fp32-tolerance", "1e-12", "--real-inputs", "false", "--fp16", "false"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "verification failed" in err and "max abs" in err and "tolerance 1e-12" in err
    assert not (tmp_path / "export_config.json").exists()


def test_config_file_rejects_unknown_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"widht": 0.5}))
    with pytest.raises(SystemExit) as info:
        parse_config(["--config", str(path)])
    assert info.value.code == 2
    assert "unknown ExportConfig keys: widht" in capsys.readouterr().err


def test_config_file_round_trips_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"config": {"random_weights": True, "width": 0.5, "verify_samples": 4}}))
    config = parse_config(["--config", str(path), "--verify-samples", "2"])
    assert (config.random_weights, config.width, config.verify_samples) == (True, 0.5, 2)


def test_unknown_flag_and_invalid_values_are_rejected(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--widht", "0.5"])
    with pytest.raises(SystemExit):
        parse_config(["--width", "0.5"])  # a checkpoint carries its own width
    assert "only to --random-weights" in capsys.readouterr().err
    with pytest.raises(ValueError, match="opset"):
        ExportConfig(random_weights=True, opset=13)


def test_missing_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--output-dir", str(tmp_path)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="TensorRT is available here; see tests/gpu")
def test_tensorrt_stage_stops_with_a_clear_message_without_tensorrt(tmp_path: Path, capsys) -> None:
    code = main(["--random-weights", "--width", str(WIDTH), "--output-dir", str(tmp_path), "--tensorrt"])
    assert code == 1
    err = capsys.readouterr().err
    assert "TensorRT stage cannot run here" in err
    assert not (tmp_path / contract.ONNX_MODEL).exists(), "it stops before doing any work"


def test_composite_head_exports_with_the_contract_io_and_equals_pytorch(tmp_path: Path) -> None:
    from lipsync.client.networks.checkpoints import save_checkpoint

    torch.manual_seed(1)
    composite = Wav2Lip(Wav2LipConfig(width=WIDTH, head="composite")).eval()
    checkpoint = tmp_path / "composite.pt"
    save_checkpoint(checkpoint, model=composite, config=composite.config, step=0)
    repo = tmp_path / "repository"
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(repo), "--verify-samples", "1"]) == 0
    onnx_path = repo / contract.ONNX_MODEL / "1" / "model.onnx"
    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == [s.name for s in contract.INPUTS]
    assert [o.name for o in graph.output] == [s.name for s in contract.OUTPUTS]
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta.get("head") == "composite"
    mel, faces = verify.random_inputs(2, seed=5)
    got = OnnxRuntimeBackend(onnx_path).infer(mel, faces)
    result = verify.compare("fp32", "random", torch_run(composite, mel, faces), got, verify.FP32_TOLERANCE)
    assert result.ok, result.describe()
