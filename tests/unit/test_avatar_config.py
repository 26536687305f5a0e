"""An enrolled avatar at every entry point: the folder's rules, the offer, the gateway's config and
routes, the avatar's Triton model config, and the offline command's refusals."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.avatar import (
    AvatarError,
    check_name,
    load_avatar,
    load_avatars,
    name_from_folder,
    triton_model_name,
)
from lipsync.client.backends.base import LipSyncBackend
from lipsync.client.triton_server import TritonServerError, check_repository
from lipsync.export import model_repository
from lipsync.streaming.api import ApiError
from lipsync.streaming.config import GatewayConfig, parse_args
from lipsync.streaming.metrics import GatewayObserver
from lipsync.streaming.offer import parse_offer
from lipsync.streaming.server import Gateway
from tests.unit.test_streaming_server import error_of, real_offer
from tests.unit.test_streaming_session import GreyMouthBackend

pytestmark = pytest.mark.unit


# -- the folder


@pytest.mark.parametrize("name", ["anna", "a", "anna-smith_2", "x" * 40])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "Anna", "2anna", "_anna", "anna smith", "anna.b", "x" * 41, None, 7])
def test_invalid_names_are_refused_by_value(name: object) -> None:
    with pytest.raises(AvatarError, match="is not valid"):
        check_name(name)  # type: ignore[arg-type]


def test_names_from_folders_and_triton_model_names(tmp_path: Path) -> None:
    assert name_from_folder(tmp_path / "Anna Smith") == "anna_smith"
    assert name_from_folder(tmp_path / "2024 take") == "avatar_2024_take"
    assert check_name(name_from_folder(tmp_path / "???")) == "avatar"
    # Triton model names take no '-': the avatar's model is named with '_' instead.
    assert triton_model_name("anna-b") == "avatar_anna_b"
    with pytest.raises(AvatarError):
        triton_model_name("Anna")


def test_a_complete_folder_loads(avatar_factory) -> None:
    avatar = load_avatar(avatar_factory())
    assert (avatar.name, avatar.fps, avatar.triton_model) == ("anna", 25.0, "avatar_anna")
    assert avatar.weights.name == "wav2lip.pt" and avatar.weights_for("pytorch") == avatar.weights
    assert avatar.loop.is_file() and avatar.still.is_file()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "avatar.json").unlink(), "has no avatar.json"),
        (lambda d: (d / "wav2lip.pt").unlink(), "is missing wav2lip.pt"),
        (lambda d: (d / "loop.mp4").unlink(), "is missing loop.mp4"),
        (lambda d: (d / "still.png").unlink(), "is missing still.png"),
        (lambda d: (d / "avatar.json").write_text("{not json"), "not readable JSON"),
        (lambda d: (d / "avatar.json").write_text(json.dumps({"format": 2, "name": "anna"})), "unknown avatar format 2"),
        (lambda d: (d / "avatar.json").write_text(json.dumps({"format": 1, "name": "Anna"})), "'Anna' is not valid"),
    ],
)  # fmt: skip
def test_incomplete_or_invalid_folders_are_refused(avatar_factory, damage, message: str) -> None:
    folder = avatar_factory()
    damage(folder)
    with pytest.raises(AvatarError, match=message) as caught:
        load_avatar(folder)
    assert "\n" not in str(caught.value)  # one line: the commands print it as their error


def test_two_folders_with_one_name_are_refused(avatar_factory, tmp_path: Path) -> None:
    first, second = avatar_factory(folder=tmp_path / "one"), avatar_factory(folder=tmp_path / "two")
    with pytest.raises(AvatarError, match="two avatars are named 'anna'"):
        load_avatars([first, second])
    assert list(load_avatars([first, avatar_factory("bob")])) == ["anna", "bob"]


def test_onnxruntime_needs_the_exported_model(avatar_factory) -> None:
    avatar = load_avatar(avatar_factory())
    with pytest.raises(AvatarError, match="lipsync-export --avatar"):
        avatar.weights_for("onnxruntime")
    avatar.onnx.write_bytes(b"onnx")
    assert avatar.weights_for("onnxruntime") == avatar.onnx


# -- the offer


def offer(**extra) -> dict:
    return {"sdp": "v=0", "type": "offer", **extra}


def test_offer_picks_a_served_avatar() -> None:
    observer = GatewayObserver()
    _, options = parse_offer(offer(avatar="anna"), 1024, observer, presenter=False, avatars={"anna", "bob"})
    assert options.avatar == "anna" and options.mode == "camera"
    # An avatar brings its own presenter face: no --presenter_image/--presenter_clip is needed.
    _, options = parse_offer(offer(avatar="bob", mode="presenter"), 1024, observer, presenter=False, avatars={"bob"})
    assert (options.avatar, options.mode) == ("bob", "presenter")
    _, options = parse_offer(offer(), 1024, observer, presenter=False, avatars={"anna"})
    assert options.avatar is None  # the default session, as before


@pytest.mark.parametrize(
    ("body", "avatars", "message"),
    [
        (offer(avatar="carl"), {"anna", "bob"}, "unknown avatar 'carl'; this gateway serves: anna, bob"),
        (offer(avatar="anna"), set(), "this gateway serves: none (start the gateway with --avatar DIR)"),
        (offer(avatar=3), {"anna"}, "'avatar' must be a string (an avatar's name), got int"),
        (offer(avatar=["anna"]), {"anna"}, "'avatar' must be a string (an avatar's name), got list"),
        (offer(mode="presenter"), {"anna"}, "presenter mode needs --presenter_image"),
    ],
)
def test_offer_with_a_bad_avatar_is_a_400(body: dict, avatars: set, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_offer(body, 1024, GatewayObserver(), presenter=False, avatars=avatars)
    assert caught.value.status == 400
    assert message in json.loads(caught.value.text)["error"]


# -- the gateway's config


def test_avatar_flag_repeats_and_json_config_takes_a_list(avatar_factory, tmp_path: Path) -> None:
    anna, bob = avatar_factory(), avatar_factory("bob")
    config = parse_args(["--backend", "pytorch", "--avatar", str(anna), "--avatar", str(bob)])
    assert config.avatars == (str(anna), str(bob))
    assert parse_args([]).avatars == ()
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps({"backend": "pytorch", "avatars": [str(bob)]}))
    config = parse_args(["--config", str(path)])
    assert config.avatars == (str(bob),) and isinstance(config.avatars, tuple)
    assert parse_args(["--config", str(path), "--avatar", str(anna)]).avatars == (str(anna),)  # flags override


def test_config_refuses_bad_avatars_at_start(avatar_factory, tmp_path: Path) -> None:
    with pytest.raises(AvatarError, match="has no avatar.json"):
        GatewayConfig(backend="pytorch", avatars=(str(tmp_path),))
    first, second = avatar_factory(folder=tmp_path / "one"), avatar_factory(folder=tmp_path / "two")
    with pytest.raises(AvatarError, match="two avatars are named 'anna'"):
        GatewayConfig(backend="pytorch", avatars=(str(first), str(second)))
    with pytest.raises(AvatarError, match="has no model.onnx"):
        GatewayConfig(backend="onnxruntime", avatars=(str(first),))
    with pytest.raises(ValueError, match="avatars must be a list of avatar folders"):
        GatewayConfig(backend="pytorch", avatars=str(first))  # type: ignore[arg-type]


def test_each_avatar_gets_its_own_model(avatar_factory) -> None:
    folder = avatar_factory()
    avatar = load_avatar(folder)
    triton = GatewayConfig(avatars=(str(folder),), triton_url="10.0.0.2:8001")
    options = triton.avatar_backend_options(avatar)
    assert options["triton_model"] == "avatar_anna" and options["weights"] is None
    assert options["triton_url"] == "10.0.0.2:8001" and options["timeout_s"] == triton.backend_options()["timeout_s"]
    in_process = GatewayConfig(backend="pytorch", model_path="/default.pt", avatars=(str(folder),))
    assert in_process.avatar_backend_options(avatar)["weights"] == avatar.weights
    assert in_process.backend_options()["weights"] == "/default.pt"  # the default keeps its own


# -- the gateway's routes, with fakes of our own backend interface


class BlackMouthBackend(GreyMouthBackend):
    """The avatar's model in these tests: a black face, told apart from the default's grey one."""

    name = "black"

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def _infer_batch(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return super()._infer_batch(mel, faces) * 0.0

    def close(self) -> None:
        self.closed = True


async def avatar_gateway(folders: list[Path], **overrides) -> tuple[TestClient, Gateway, dict[str, LipSyncBackend]]:
    names = list(load_avatars(folders))
    backends = {name: BlackMouthBackend() for name in names}
    config = GatewayConfig(backend="pytorch", avatars=tuple(map(str, folders)), **overrides)
    gateway = Gateway(config, backend=GreyMouthBackend(), avatar_backends=backends)
    client = TestClient(TestServer(gateway.app, host="127.0.0.1"))
    await client.start_server()
    return client, gateway, backends


async def test_sessions_use_their_avatars_model_and_stats_name_it(avatar_factory) -> None:
    client, gateway, backends = await avatar_gateway([avatar_factory(), avatar_factory("bob")])
    peers = []
    try:
        health = await (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["avatars"] == {"anna": True, "bob": True}, health
        assert backends["anna"].calls > 0 and backends["bob"].calls > 0  # warmed up like the default

        sessions = {}
        for avatar, mode in ((None, "camera"), ("anna", "camera"), ("bob", "presenter")):
            pc, sdp = await real_offer()
            peers.append(pc)
            body = {"sdp": sdp, "type": "offer", "mode": mode} | ({"avatar": avatar} if avatar else {})
            response = await client.post("/offer", json=body)
            assert response.status == 200, await response.text()
            sessions[avatar] = (await response.json())["session_id"]
        assert gateway.peers[sessions[None]].inference is gateway.inference
        assert gateway.peers[sessions["anna"]].inference.backend is backends["anna"]
        assert gateway.peers[sessions["bob"]].inference.backend is backends["bob"]
        frame = (np.zeros((1, 80, 16), np.float32), np.zeros((6, 96, 96), np.float32))
        assert (await gateway.peers[sessions["anna"]].inference.backend.infer_frame(*frame)).max() == 0.0
        for avatar, sid in sessions.items():
            stats = await (await client.get(f"/sessions/{sid}/stats")).json()
            assert stats["avatar"] == avatar, stats

        pc, sdp = await real_offer()
        peers.append(pc)
        response = await client.post("/offer", json={"sdp": sdp, "type": "offer", "avatar": "carl"})
        assert response.status == 400 and "this gateway serves: anna, bob" in await error_of(response)
    finally:
        for pc in peers:
            await pc.close()
        await client.close()
    assert all(backend.closed for backend in backends.values())  # closed on shutdown


async def test_health_lists_an_avatar_whose_model_does_not_answer(avatar_factory) -> None:
    client, gateway, backends = await avatar_gateway([avatar_factory()], warmup=False)
    try:
        backends["anna"].down = True
        response = await client.get("/healthz")
        body = await response.json()
        # The default still answers: the gateway is up, and says which avatar is not.
        assert response.status == 200 and body["avatars"] == {"anna": False}, body
        backends["anna"].down = False
        assert (await (await client.get("/healthz")).json())["avatars"] == {"anna": True}
    finally:
        await client.close()


def test_backends_for_avatars_not_configured_are_refused(avatar_factory) -> None:
    config = GatewayConfig(backend="pytorch", avatars=(str(avatar_factory()),))
    with pytest.raises(ValueError, match=r"avatars \['bob'\] that are not configured"):
        Gateway(config, backend=GreyMouthBackend(), avatar_backends={"bob": BlackMouthBackend()})


# -- the avatar's model in the Triton repository


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_avatar_model_config_is_the_embedded_model_under_its_own_name() -> None:
    config = parse(model_repository.render_avatar_config("avatar_anna"))
    embedded = parse(model_repository.render_config(contract.EMBEDDED_MODEL))
    assert config.name == "avatar_anna" and config.backend == "python"
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        **model_repository.EMBEDDED_PARAMETERS,
        contract.MEL_OFFSET_METADATA_KEY: "0",
    }
    # Everything but the name is the embedded model's: the same contract, batching and warm-up.
    embedded.name = config.name
    assert config == embedded
    assert parse(model_repository.render_avatar_config("avatar_anna", max_batch=4)).max_batch_size == 4


@pytest.mark.parametrize("name", ["anna", "avatar_", "avatar_Anna", "avatar_anna-b", "wav2lip_python"])
def test_bad_avatar_model_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        model_repository.render_avatar_config(name)


def test_render_config_points_avatar_models_elsewhere() -> None:
    with pytest.raises(ValueError, match="render_avatar_config"):
        model_repository.render_config("avatar_anna")


def test_avatar_model_is_written_beside_the_default_and_checked_before_launch(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    onnx, checkpoint = tmp_path / "model.onnx", tmp_path / "model.pt"
    onnx.write_bytes(b"onnx")
    checkpoint.write_bytes(b"pt")
    model_repository.write_repository(repo, onnx_fp32=onnx, checkpoint=checkpoint)
    default = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    (tmp_path / "model.onnx").unlink()  # the avatar's own files, not the default's
    avatar_onnx = tmp_path / "avatar.onnx"
    avatar_onnx.write_bytes(b"avatar onnx")
    written = model_repository.write_variant_model(repo, "avatar_anna", onnx_fp32=avatar_onnx, checkpoint=checkpoint)
    assert {p.relative_to(repo).as_posix() for p in written} == {
        "avatar_anna/config.pbtxt", "avatar_anna/1/model.py", "avatar_anna/1/model.onnx", "avatar_anna/1/model.pt",
    }  # fmt: skip
    assert {p: p.read_bytes() for p in default} == default, "the default models must not change"
    assert (repo / "avatar_anna/1/model.py").read_bytes() == (
        layout.DEFAULT_REPOSITORY / contract.EMBEDDED_MODEL / "1" / "model.py"
    ).read_bytes()
    check_repository(repo, (contract.EMBEDDED_MODEL, "avatar_anna"))
    assert layout.required_files("avatar_anna") == layout.REQUIRED_FILES[contract.EMBEDDED_MODEL]
    (repo / "avatar_anna/1/model.onnx").unlink()
    with pytest.raises(TritonServerError, match=r"'avatar_anna' is missing .*model.onnx; .*lipsync-export --avatar"):
        check_repository(repo, (contract.EMBEDDED_MODEL, "avatar_anna"))
    with pytest.raises(ValueError, match="not an avatar model name"):
        model_repository.write_variant_model(repo, "wav2lip_python", onnx_fp32=avatar_onnx, checkpoint=checkpoint)


# -- the offline command's refusals: one line, exit 2, no traceback


@pytest.fixture
def lipsync_main():
    from lipsync.client.lipsync import main

    previous = signal.getsignal(signal.SIGTERM)  # main() installs its own SIGTERM handler
    yield main
    signal.signal(signal.SIGTERM, previous)


def write_speech(path: Path) -> Path:
    from scipy.io import wavfile

    t = np.arange(8000) / 16000
    wavfile.write(path, 16000, (0.3 * np.sin(2 * np.pi * 140 * t) * 32767).astype(np.int16))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--avatar", "{avatar}", "--checkpoint_path", "{weights}"], "give --avatar or --checkpoint_path, not both"),
        ([], "--face is required (a video or photo of the person), unless --avatar is given"),
        (["--avatar", "{tmp}"], "is not an avatar: it has no avatar.json"),
        (["--avatar", "{tmp}/nowhere"], "does not exist"),
        (["--avatar", "{broken}"], "is missing wav2lip.pt"),
        (["--avatar", "{avatar}", "--backend", "onnxruntime"], "has no model.onnx: run `lipsync-export --avatar"),
    ],
)
def test_lipsync_refuses_bad_avatar_use(
    lipsync_main, avatar_factory, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    avatar = avatar_factory()
    broken = avatar_factory("bob")
    (broken / "wav2lip.pt").unlink()
    paths = {"avatar": avatar, "broken": broken, "tmp": tmp_path, "weights": layout.SHIPPED_GENERATOR}
    args = [a.format(**paths) for a in args]
    speech = write_speech(tmp_path / "speech.wav")
    code = lipsync_main(["--quiet", "--audio", str(speech), "--outfile", str(tmp_path / "out.mp4"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert err.startswith("lipsync: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out.mp4").exists()


def test_gateway_refuses_a_bad_avatar_folder_in_one_line(avatar_factory, tmp_path: Path, capsys) -> None:
    from lipsync.streaming.server import main

    assert main(["--backend", "pytorch", "--avatar", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"lipsync-gateway: {tmp_path} is not an avatar: it has no avatar.json" + err[err.index(" (") :]
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "{weights}"], "brings its own weights: give it without --checkpoint or --random-weights"),
        (["--random-weights"], "brings its own weights: give it without --checkpoint or --random-weights"),
        (["--tensorrt"], "export it without --tensorrt"),
    ],
)
def test_export_refuses_flags_an_avatar_cannot_take(avatar_factory, tmp_path: Path, capsys, args, message) -> None:
    from lipsync.export.cli import main

    repo = tmp_path / "repository"
    args = [a.format(weights=layout.SHIPPED_GENERATOR) for a in args]
    with pytest.raises(SystemExit) as exited:
        main(["--avatar", str(avatar_factory()), *args, "--output-dir", str(repo)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and "Traceback" not in err, err
    assert not repo.exists()


def test_export_refuses_a_folder_that_is_not_an_avatar(tmp_path: Path, capsys) -> None:
    from lipsync.export.cli import main

    repo = tmp_path / "repository"
    assert main(["--avatar", str(tmp_path), "--output-dir", str(repo)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lipsync-export: {tmp_path} is not an avatar: it has no avatar.json"), err
    assert err.count("\n") == 1 and not repo.exists(), "nothing may be written when the export is refused"
