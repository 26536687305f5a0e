"""GatewayConfig: validated on creation, CLI generated from it, unknown keys refused."""

from __future__ import annotations

import json

import pytest

from lipsync.streaming.config import TOKEN_ENV, GatewayConfig, parse_args

pytestmark = pytest.mark.unit


def test_cli_flags_map_to_fields() -> None:
    config = parse_args(["--port", "9000", "--backend", "onnxruntime", "--ice_loopback"])
    assert (config.port, config.backend, config.ice_loopback) == (9000, "onnxruntime", True)
    # The look-ahead is the served model's, not a flag: 200 ms for the released alignment, 75 for offset -10.
    assert config.delay_ms("microphone") == 200 + 100 + config.compute_budget_ms
    assert config.delay_ms("microphone", 75.0) == 75 + 100 + config.compute_budget_ms
    assert config.delay_ms("push", 75.0) == config.compute_budget_ms
    with pytest.raises(SystemExit):
        parse_args(["--lookahead_ms", "100"])


def test_unknown_flag_and_bad_choice_exit(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--no_such_option", "1"])
    with pytest.raises(SystemExit):
        parse_args(["--backend", "tensorflow"])


def test_config_file_rejects_unknown_keys_and_flags_override(tmp_path) -> None:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps({"max_sessions": 7, "fps": 30.0}))
    config = parse_args(["--config", str(path), "--fps", "20"])
    assert (config.max_sessions, config.fps) == (7, 20.0)
    path.write_text(json.dumps({"max_session": 7}))
    with pytest.raises(ValueError, match="unknown GatewayConfig keys: max_session"):
        parse_args(["--config", str(path)])


def test_token_from_the_environment_is_not_shown(monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    config = parse_args([])
    assert config.token == "s3cret"
    assert config.public()["token"] == "***"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("backend", "tf", "backend must be one of"),
        ("fps", 0.5, "fps must be in 1..60, got 0.5"),
        ("vad_mode", 4, "vad_mode must be in 0..3, got 4"),
        ("max_sessions", 0, "max_sessions must be at least 1, got 0"),
        ("presenter_image", "/no/such.png", "presenter_image '/no/such.png' is not a file"),
        ("port", 70000, "port must be in 0..65535, got 70000"),
    ],
)
def test_bad_values_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        GatewayConfig(**{field: value})


def test_the_gateway_runs_the_live_model_by_default(tmp_path) -> None:
    from lipsync.client import contract
    from lipsync.client import model_repository as layout
    from lipsync.client.triton_server import default_models
    from lipsync.export import model_repository

    assert GatewayConfig().model == contract.LIVE_MODEL
    assert GatewayConfig(backend="pytorch").backend_options()["weights"] == layout.SHIPPED_LIVE_GENERATOR
    assert GatewayConfig(backend="pytorch", model_path="/mine.pt").backend_options()["weights"] == "/mine.pt"
    # lipsync-server loads the live model beside the embedded one once export has written it.
    assert default_models(tmp_path) == (contract.EMBEDDED_MODEL,)
    model_repository.write_config(tmp_path, contract.LIVE_MODEL, mel_offset=-10)
    assert default_models(tmp_path) == (contract.EMBEDDED_MODEL, contract.LIVE_MODEL)


def test_without_the_exported_live_model_the_in_process_gateway_falls_back_and_says_so(monkeypatch, tmp_path, caplog):
    from lipsync.client import model_repository as layout

    # A checkout where `lipsync-export --live` never ran.
    monkeypatch.setattr(layout, "live_onnx_model", lambda repository=tmp_path: tmp_path / "wav2lip_live/1/model.onnx")
    assert GatewayConfig(backend="onnxruntime").backend_options()["weights"] is None
    assert "lipsync-export --live" in caplog.text
