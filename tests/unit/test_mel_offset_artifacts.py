"""The weights' mel offset travels into every artefact made from them and back out of every backend:
checkpoint -> PyTorch, `lipsync-export` -> ONNX FP32/FP16 metadata -> ONNX Runtime, -> config.pbtxt ->
the Triton client; files from before the offset was recorded mean 0."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.backends.base import BackendError
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.client.backends.triton import TritonBackend
from lipsync.export import model_repository
from lipsync.export.cli import main

torch = pytest.importorskip("torch")
from lipsync.client.backends.pytorch import PyTorchBackend  # noqa: E402
from lipsync.client.networks import Wav2Lip, Wav2LipConfig  # noqa: E402
from lipsync.client.networks.checkpoints import save_checkpoint  # noqa: E402

pytestmark = pytest.mark.unit

OFFSET = -10  # 75 ms of look-ahead instead of 200
CONFIG = Wav2LipConfig(width=0.25, mel_offset=OFFSET)
KEY = contract.MEL_OFFSET_METADATA_KEY
# Cheap but complete: FP32 and FP16 ONNX, verified on one random batch.
FAST = ["--verify-samples", "1", "--real-inputs", "false", "--quiet"]


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def parameters(config: mc.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def onnx_props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def with_props(source: Path, destination: Path, props: dict[str, str]) -> Path:
    model = onnx.load(str(source))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(destination))
    return destination


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Wav2Lip(CONFIG).eval()
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "low_lookahead.pt", model=model, config=CONFIG, step=3)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """One `lipsync-export` of the offset -10 checkpoint, shared by the tests: exporting costs seconds."""
    repo = tmp_path_factory.mktemp("repository")
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(repo), *FAST]) == 0
    return repo


# ------------------------------------------------------------------------------------------- PyTorch


def test_pytorch_backend_takes_the_offset_of_its_checkpoint_or_module(checkpoint: Path) -> None:
    backend = PyTorchBackend(checkpoint=checkpoint)
    assert backend.mel_offset == OFFSET
    assert backend.lookahead_ms == 75.0
    assert PyTorchBackend(model=Wav2Lip(CONFIG)).mel_offset == OFFSET
    assert PyTorchBackend(model=Wav2Lip(Wav2LipConfig(width=0.25))).lookahead_ms == contract.FULL_LOOKAHEAD_MS


def test_weights_saved_before_the_offset_existed_mean_zero(checkpoint: Path, tmp_path: Path) -> None:
    shipped = PyTorchBackend(checkpoint=layout.SHIPPED_GENERATOR)
    assert shipped.mel_offset == 0 and shipped.lookahead_ms == contract.FULL_LOOKAHEAD_MS
    # A file of ours from before the field: its saved config has no mel_offset at all.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    del state["config"]["mel_offset"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert PyTorchBackend(checkpoint=old).mel_offset == 0


# ------------------------------------------------------------------------------- ONNX and ONNX Runtime


def test_every_exported_onnx_file_carries_the_offset(repository: Path) -> None:
    fp32 = layout.artifact_path(repository, contract.ONNX_MODEL, layout.ONNX_FILE)
    fp16 = layout.artifact_path(repository, contract.ONNX_MODEL, layout.ONNX_FP16_FILE)
    python_copy = layout.artifact_path(repository, contract.EMBEDDED_MODEL, layout.ONNX_FILE)
    for path in (fp32, fp16, python_copy):
        assert onnx_props(path)[KEY] == str(OFFSET), path
        backend = OnnxRuntimeBackend(path)
        assert backend.mel_offset == OFFSET and backend.lookahead_ms == 75.0, path
    assert onnx_props(fp32)["weights"] == "trained"
    # The Python model's GPU path loads the re-saved checkpoint: it keeps the offset too.
    resaved = layout.artifact_path(repository, contract.EMBEDDED_MODEL, layout.CHECKPOINT_FILE)
    assert PyTorchBackend(checkpoint=resaved).mel_offset == OFFSET


def test_onnx_without_the_key_means_zero_and_a_bad_value_is_named(repository: Path, tmp_path: Path) -> None:
    fp32 = layout.artifact_path(repository, contract.ONNX_MODEL, layout.ONNX_FILE)
    props = {k: v for k, v in onnx_props(fp32).items() if k != KEY}
    old = with_props(fp32, tmp_path / "old.onnx", props)
    assert KEY not in onnx_props(old)
    assert OnnxRuntimeBackend(old).mel_offset == 0
    for bad in ("-17", "1", "minus ten", "-2.5"):
        path = with_props(fp32, tmp_path / "bad.onnx", {**props, KEY: bad})
        with pytest.raises(BackendError, match=rf"bad\.onnx: metadata mel_offset='{bad}' is not a mel offset"):
            OnnxRuntimeBackend(path)


def test_random_weights_are_exported_with_offset_zero() -> None:
    from lipsync.export.cli import ExportConfig, _load_model

    _, metadata, description = _load_model(ExportConfig(random_weights=True, width=0.25))
    assert metadata[KEY] == "0" and "200 ms look-ahead" in description


# ---------------------------------------------------------------------------------- Triton model configs


def test_every_rendered_config_names_the_offset(repository: Path) -> None:
    for model in contract.SERVED_MODELS:
        text = layout.config_path(repository, model).read_text()
        assert text == model_repository.render_config(model, mel_offset=OFFSET)
        assert f'parameters {{ key: "{KEY}" value: {{ string_value: "{OFFSET}" }} }}' in text
        assert parameters(parse(text))[KEY] == str(OFFSET), model
    embedded = parameters(parse(layout.config_path(repository, contract.EMBEDDED_MODEL).read_text()))
    assert embedded == {**model_repository.EMBEDDED_PARAMETERS, KEY: str(OFFSET)}


def test_the_committed_configs_name_the_shipped_offset_zero() -> None:
    for model in contract.SERVED_MODELS:
        assert parameters(parse(layout.config_path(layout.DEFAULT_REPOSITORY, model).read_text()))[KEY] == "0"


def test_an_invalid_offset_is_not_rendered() -> None:
    with pytest.raises(ValueError, match="mel_offset"):
        model_repository.render_config(contract.ONNX_MODEL, mel_offset=-17)
    with pytest.raises(ValueError, match="mel_offset"):
        model_repository.render_avatar_config("avatar_anna", mel_offset=3)


def test_an_avatar_export_carries_its_weights_offset(checkpoint: Path, avatar_factory, tmp_path: Path) -> None:
    folder = avatar_factory(weights=checkpoint)
    repo = tmp_path / "repository"
    assert main(["--avatar", str(folder), "--output-dir", str(repo), *FAST]) == 0
    assert onnx_props(folder / "model.onnx")[KEY] == str(OFFSET)
    assert OnnxRuntimeBackend(folder / "model.onnx").mel_offset == OFFSET
    text = layout.config_path(repo, "avatar_anna").read_text()
    assert text == model_repository.render_avatar_config("avatar_anna", mel_offset=OFFSET)
    assert parameters(parse(text))[KEY] == str(OFFSET)


# ---------------------------------------------------------------- the Triton client, without a server


def response(text: str) -> service_pb2.ModelConfigResponse:
    """What the server answers get_model_config with, for a config of this text."""
    return service_pb2.ModelConfigResponse(config=parse(text))


def test_triton_backend_reads_the_offset_from_the_served_config() -> None:
    backend = TritonBackend("127.0.0.1:1")
    backend._take_mel_offset(response(model_repository.render_config(contract.EMBEDDED_MODEL, mel_offset=OFFSET)))
    assert backend.mel_offset == OFFSET and backend.lookahead_ms == 75.0

    old = "\n".join(
        line for line in model_repository.render_config(contract.EMBEDDED_MODEL).splitlines() if KEY not in line
    )
    backend._take_mel_offset(response(old))  # a repository written before the parameter existed
    assert backend.mel_offset == 0


def test_a_bad_served_offset_is_a_clear_error() -> None:
    backend = TritonBackend("127.0.0.1:1")
    line = f'parameters {{ key: "{KEY}" value: {{ string_value: "0" }} }}'
    text = model_repository.render_config(contract.EMBEDDED_MODEL).replace(line, line.replace('"0"', '"ten"'))
    backend._take_mel_offset(response(text))
    with pytest.raises(
        BackendError, match=r"'wav2lip_python' on Triton at 127\.0\.0\.1:1 has parameter mel_offset='ten'"
    ):
        _ = backend.mel_offset


async def test_without_a_server_the_offset_is_zero_and_reading_it_never_blocks_the_loop() -> None:
    backend = TritonBackend("127.0.0.1:1", ready_timeout_s=30)
    assert backend.mel_offset == 0  # in a running loop: no call to the server at all
    assert not await backend.is_ready_async()
    assert backend.mel_offset == 0
    await backend.aclose()


def test_without_a_server_a_synchronous_read_is_zero_for_now() -> None:
    with TritonBackend("127.0.0.1:1") as backend:  # nothing listens on port 1: refused at once
        assert backend.mel_offset == 0
        assert not backend.is_ready()


def test_the_offset_is_read_again_after_the_server_went_away() -> None:
    backend = TritonBackend("127.0.0.1:1")
    backend._take_mel_offset(response(model_repository.render_config(contract.EMBEDDED_MODEL, mel_offset=OFFSET)))
    assert backend._mel_offset_current
    gone = InferenceServerException(msg="failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
    backend._translate(gone, client=None)
    # The last value stands meanwhile; the next successful readiness check or answer reads it again.
    assert not backend._mel_offset_current and backend.mel_offset == OFFSET
    backend._take_mel_offset(response(model_repository.render_config(contract.EMBEDDED_MODEL, mel_offset=-4)))
    assert backend.mel_offset == -4 and backend.lookahead_ms == 150.0
