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
