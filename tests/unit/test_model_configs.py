"""Every config.pbtxt parses with Triton's own model-config schema and agrees with client/contract.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.export import model_repository

pytestmark = pytest.mark.unit

REPOSITORY = layout.DEFAULT_REPOSITORY
KIND = {
    contract.EMBEDDED_MODEL: mc.ModelInstanceGroup.KIND_CPU,
    contract.ONNX_MODEL: mc.ModelInstanceGroup.KIND_GPU,
    contract.TENSORRT_MODEL: mc.ModelInstanceGroup.KIND_GPU,
}


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def load(model: str) -> mc.ModelConfig:
    return parse((REPOSITORY / model / "config.pbtxt").read_text())


def test_the_repository_holds_exactly_the_served_models() -> None:
    # Avatar models (`lipsync-export --avatar`) and the live model (`--live`) are written beside these by
    # export, never committed.
    found = sorted(
        p.parent.name
        for p in REPOSITORY.glob("*/config.pbtxt")
        if not p.parent.name.startswith("avatar_") and p.parent.name != contract.LIVE_MODEL
    )
    assert found == sorted(contract.SERVED_MODELS)


def test_the_live_model_is_the_embedded_one_on_its_own_weights_at_the_fastest_cpu_path() -> None:
    from lipsync.export import model_repository

    live = parse(model_repository.render_live_config(mel_offset=-10))
    embedded = parse(model_repository.render_config(contract.EMBEDDED_MODEL))
    assert live.name == contract.LIVE_MODEL and live.backend == embedded.backend == "python"
    params = {k: v.string_value for k, v in live.parameters.items()}
    assert params.pop("precision") == "auto" and params.pop("mel_offset") == "-10"
    expected = {k: v.string_value for k, v in embedded.parameters.items() if k not in ("precision", "mel_offset")}
    assert params == expected
    assert live.dynamic_batching == embedded.dynamic_batching and live.instance_group == embedded.instance_group


def check_tensors(declared, specs) -> None:
    assert [t.name for t in declared] == [s.name for s in specs]
    for tensor, spec in zip(declared, specs, strict=True):
        assert mc.DataType.Name(tensor.data_type) == f"TYPE_{spec.dtype}", tensor.name
        assert tuple(tensor.dims) == spec.shape, tensor.name


@pytest.mark.parametrize("model", contract.SERVED_MODELS)
def test_config_matches_the_contract(model: str) -> None:
    config = load(model)
    assert config.name == model
    assert config.max_batch_size == contract.MAX_BATCH
    check_tensors(config.input, contract.INPUTS)
    check_tensors(config.output, contract.OUTPUTS)

    batching = config.dynamic_batching
    assert config.HasField("dynamic_batching")
    assert tuple(batching.preferred_batch_size) == contract.PREFERRED_BATCHES
    assert all(b <= config.max_batch_size for b in batching.preferred_batch_size)
    if model == contract.EMBEDDED_MODEL:
        check_embedded_batcher(config)
    else:
        # A queue delay is microseconds: a few ms buys batches without hurting a 40 ms frame budget.
        assert 0 < batching.max_queue_delay_microseconds <= 10_000
        policy = batching.default_queue_policy
        assert policy.allow_timeout_override and policy.timeout_action == mc.ModelQueuePolicy.REJECT
        assert 0 < policy.max_queue_size, "the server queue must be bounded"

    assert [g.kind for g in config.instance_group] == [KIND[model]]
    assert all(g.count >= 1 for g in config.instance_group)

    assert config.model_warmup, "every model warms up before it reports ready"
    for warmup in config.model_warmup:
        assert 1 <= warmup.batch_size <= config.max_batch_size
        assert sorted(warmup.inputs) == sorted(s.name for s in contract.INPUTS)
        for spec in contract.INPUTS:
            sample = warmup.inputs[spec.name]
            assert tuple(sample.dims) == spec.shape
            assert mc.DataType.Name(sample.data_type) == f"TYPE_{spec.dtype}"


def check_embedded_batcher(config: mc.ModelConfig) -> None:
    # No queue policy: any (deadlines or a max queue size) turns off Triton's payload prefetch, and the one
    # instance's batcher then sleeps up to 500 ms with frames queued (export/model_repository.py). No delay:
    # on the CPU a batch costs per frame what single frames do, so waiting for company only adds latency.
    assert not config.dynamic_batching.HasField("default_queue_policy")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0


def test_models_on_the_embedded_body_share_its_batcher() -> None:
    check_embedded_batcher(parse(model_repository.render_avatar_config("avatar_someone")))


def test_backends_and_platforms() -> None:
    assert load(contract.EMBEDDED_MODEL).backend == "python"
    assert load(contract.ONNX_MODEL).platform == "onnxruntime_onnx"
    assert load(contract.TENSORRT_MODEL).platform == "tensorrt_plan"


def test_python_model_parameters_name_its_files() -> None:
    config = load(contract.EMBEDDED_MODEL)
    params = {key: value.string_value for key, value in config.parameters.items()}
    # Beside the Python model's settings, the shipped weights' mel offset, which the Triton client reads.
    assert params == {**model_repository.EMBEDDED_PARAMETERS, contract.MEL_OFFSET_METADATA_KEY: "0"}
    assert params["onnx_file"] in layout.REQUIRED_FILES[contract.EMBEDDED_MODEL]
    assert (REPOSITORY / contract.EMBEDDED_MODEL / "1" / "model.py").is_file()


@pytest.mark.parametrize("model", contract.SERVED_MODELS)
def test_committed_config_is_what_export_writes(model: str) -> None:
    committed = (REPOSITORY / model / "config.pbtxt").read_text()
    assert committed == model_repository.render_config(model), "run lipsync-export (or edit export/model_repository.py)"


def test_a_smaller_max_batch_shrinks_every_batch_setting() -> None:
    config = parse(model_repository.render_config(contract.TENSORRT_MODEL, max_batch=4))
    assert config.max_batch_size == 4
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert max(w.batch_size for w in config.model_warmup) == 4


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="wav2lip_nope"):
        model_repository.render_config("wav2lip_nope")


def test_install_file_links_one_artifact_into_two_models(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"onnx")
    first = model_repository.install_file(source, tmp_path / "a" / "1" / "model.onnx")
    second = model_repository.install_file(first, tmp_path / "b" / "1" / "model.onnx")
    assert first.read_bytes() == second.read_bytes() == b"onnx"
    model_repository.install_file(source, second)  # installing again over itself is a no-op
    assert second.read_bytes() == b"onnx"
