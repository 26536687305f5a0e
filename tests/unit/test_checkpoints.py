"""Checkpoint files: the released formats load strictly, ours round-trips, and broken files are named."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from pathlib import Path

import pytest
import torch

from lipsync.client.networks.checkpoints import (
    CheckpointError,
    count_parameters,
    load_checkpoint,
    load_state_dict,
    save_checkpoint,
)
from lipsync.client.networks.quality_disc import QualityDiscConfig, QualityDiscriminator
from lipsync.client.networks.syncnet import SyncNet, SyncNetConfig
from lipsync.client.networks.syncnet_v2 import SyncNetV2
from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig

pytestmark = [
    pytest.mark.unit,
    # Building the TorchScript archives the newer README links deliver needs torch.jit.trace.
    pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning"),
]

NARROW = Wav2LipConfig(width=0.25)
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"  # the project's own copy


def reference_keys(name: str) -> dict[str, tuple[int, ...]]:
    """A reference key table (`key<TAB>(d0, d1, ...)` per line) as {key: shape}."""
    lines = (REFERENCE / name).read_text().splitlines()
    return {key: tuple(ast.literal_eval(shape)) for key, shape in (line.split("\t") for line in lines)}


def random_state(table: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the reference shapes, with valid BN statistics, as the released files hold."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in table.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 10_000, shape, generator=gen)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def released_file(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A file laid out like wav2lip.pth: `module.`-prefixed keys plus optimizer state and counters."""
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.999), "params": [0, 1]}]},
            "global_step": 123_000,
            "global_epoch": 42,
        },
        path,
    )
    return path


def assert_state_equal(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    assert list(ours) == list(state)
    for key, value in state.items():
        assert torch.equal(ours[key].cpu(), value), key


@pytest.mark.parametrize(
    ("cls", "table"),
    [
        (Wav2Lip, "wav2lip_state_dict_keys.tsv"),
        (SyncNet, "syncnet_color_state_dict_keys.tsv"),
        (QualityDiscriminator, "wav2lip_disc_qual_state_dict_keys.tsv"),
    ],
)
def test_released_format_loads_strictly(tmp_path, cls, table):
    state = random_state(reference_keys(table))
    model = cls.from_checkpoint(released_file(tmp_path / "released.pth", state))
    assert model.config.width == 1.0
    assert not model.training
    assert_state_equal(model, state)


def test_syncnet_v2_file_without_num_batches_tracked_loads(tmp_path):
    # syncnet_v2.model is a bare state dict written before BN had num_batches_tracked.
    state = random_state(reference_keys("syncnet_v2_S_state_dict_keys.tsv"))
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "syncnet_v2.model")
    model = SyncNetV2.from_checkpoint(tmp_path / "syncnet_v2.model")
    assert not model.training
    for key, value in model.eval().state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert value.item() == 0
        else:
            assert torch.equal(value, old[key]), key

    del old["netfclip.3.weight"]
    torch.save(old, tmp_path / "broken.model")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): netfclip\.3\.weight"):
        SyncNetV2.from_checkpoint(tmp_path / "broken.model")


def test_module_prefix_is_stripped_anywhere_like_the_release(tmp_path):
    state = Wav2Lip(NARROW).state_dict()
    nested = {k.replace("audio_encoder.", "audio_encoder.module."): v for k, v in state.items()}
    torch.save({"state_dict": nested}, tmp_path / "nested.pth")
    loaded, config = load_state_dict(tmp_path / "nested.pth")
    assert config is None
    assert list(loaded) == list(state)


@pytest.fixture(scope="module")
def torchscript_archive(tmp_path_factory):
    """A traced narrow generator saved like the newer README's Wav2Lip-SD-*.pt, with its inputs and output."""
    torch.manual_seed(0)
    model = Wav2Lip(NARROW).eval()
    mel, face = torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96)
    traced = torch.jit.trace(model, (mel, face))
    path = tmp_path_factory.mktemp("torchscript") / "Wav2Lip-SD-GAN.pt"
    traced.save(str(path))
    with torch.inference_mode():
        expected = traced(mel, face)
    return path, model.state_dict(), (mel, face), expected


def test_torchscript_archive_loads(torchscript_archive):
    path, state, (mel, face), expected = torchscript_archive
    loaded = Wav2Lip.from_checkpoint(path)
    assert loaded.config == NARROW  # width read off the tensor shapes
    assert_state_equal(loaded, state)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(mel, face), expected)


@pytest.mark.parametrize("width", [0.25, 0.3, 0.375, 0.5, 0.61, 0.75])
def test_width_is_inferred_from_a_bare_state_dict(tmp_path, width):
    model = Wav2Lip(Wav2LipConfig(width=width))
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    loaded = Wav2Lip.from_checkpoint(tmp_path / "bare.pth")
    assert_state_equal(loaded, model.state_dict())
    assert Wav2Lip(loaded.config).state_dict().keys() == model.state_dict().keys()
    assert count_parameters(loaded) == count_parameters(model)


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (Wav2Lip, Wav2LipConfig(width=0.375)),
        (SyncNet, SyncNetConfig(width=0.25)),
        (QualityDiscriminator, QualityDiscConfig(width=0.25)),
    ],
)
def test_our_format_round_trip_with_optimizer_and_step(tmp_path, cls, config):
    torch.manual_seed(0)
    model = cls(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.999))
    params = list(model.parameters())
    sum(p.square().sum() for p in params).backward()
    optimizer.step()

    path = save_checkpoint(
        tmp_path / "run" / "step_000123.pt",
        model=model,
        config=config,
        optimizer=optimizer,
        step=123,
        extra={"loss": 0.5},
    )
    assert [p.name for p in path.parent.iterdir()] == ["step_000123.pt"]  # no temporary file left behind

    raw = load_checkpoint(path)
    assert raw["step"] == 123
    assert raw["config"] == dataclasses.asdict(config)
    assert raw["config_class"] == type(config).__name__
    assert raw["extra"] == {"loss": 0.5}
    fresh = cls(config)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-4, betas=(0.5, 0.999))
    fresh_opt.load_state_dict(raw["optimizer"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(fresh_opt.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])

    loaded = cls.from_checkpoint(path)
    assert loaded.config == config
    assert_state_equal(loaded, model.state_dict())

    # Saving again over the same path replaces the file atomically.
    save_checkpoint(path, model=model, config=config, step=124)
    assert load_checkpoint(path)["step"] == 124
    assert load_checkpoint(path)["optimizer"] is None


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "expert.pt", model=SyncNet(SyncNetConfig(0.25)), config=SyncNetConfig(0.25))
    with pytest.raises(CheckpointError, match="SyncNetConfig network, not a Wav2LipConfig"):
        Wav2Lip.from_checkpoint(path)


@pytest.fixture
def narrow_state() -> dict[str, torch.Tensor]:
    return Wav2Lip(NARROW).state_dict()


def test_missing_key_is_named(tmp_path, narrow_state):
    del narrow_state["output_block.1.bias"]
    torch.save({"state_dict": narrow_state}, tmp_path / "drop.pth")
    with pytest.raises(CheckpointError) as err:
        Wav2Lip.from_checkpoint(tmp_path / "drop.pth")
    message = str(err.value)
    assert "drop.pth" in message
    assert "1 missing key(s): output_block.1.bias" in message


def test_unexpected_and_many_missing_keys_are_counted(tmp_path, narrow_state):
    state = {k: v for k, v in narrow_state.items() if not k.startswith("face_decoder_blocks.")}
    state["extra_head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as err:
        Wav2Lip.from_checkpoint(tmp_path / "partial.pth")
    missing = sum(k.startswith("face_decoder_blocks.") for k in narrow_state)
    message = str(err.value)
    assert f"{missing} missing key(s): face_decoder_blocks.0.0.conv_block.0.weight" in message
    assert f"({missing - 5} more)" in message
    assert "1 unexpected key(s): extra_head.weight" in message


def test_wrong_shape_is_named(tmp_path, narrow_state):
    narrow_state["output_block.1.weight"] = torch.zeros(3, 7, 1, 1)
    torch.save({"state_dict": narrow_state}, tmp_path / "shape.pth")
    with pytest.raises(
        CheckpointError,
        match=r"1 wrongly shaped key\(s\): output_block\.1\.weight file \(3, 7, 1, 1\) vs model \(3, 8, 1, 1\)",
    ):
        Wav2Lip.from_checkpoint(tmp_path / "shape.pth")


def test_inconsistent_widths_are_refused(tmp_path, narrow_state):
    wide = Wav2Lip(Wav2LipConfig(width=0.5)).state_dict()
    mixed = {**narrow_state, **{k: v for k, v in wide.items() if k.startswith("face_encoder_blocks.5.")}}
    torch.save(mixed, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="fit no single width"):
        Wav2Lip.from_checkpoint(tmp_path / "mixed.pth")


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x80\x02this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pth is not a readable PyTorch checkpoint"):
        Wav2Lip.from_checkpoint(path)


def test_truncated_zip(tmp_path, narrow_state):
    path = tmp_path / "truncated.pth"
    torch.save({"state_dict": narrow_state}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth is not a readable PyTorch checkpoint") as err:
        Wav2Lip.from_checkpoint(path)
    assert "Traceback" not in str(err.value)


def test_truncated_torchscript(tmp_path, torchscript_archive):
    data = torchscript_archive[0].read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(CheckpointError, match="not a readable"):
        Wav2Lip.from_checkpoint(path)


def test_missing_empty_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Wav2Lip.from_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        Wav2Lip.from_checkpoint(tmp_path / "empty.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        Wav2Lip.from_checkpoint(tmp_path / "list.pth")
    torch.save({"weights": {"a": 1}}, tmp_path / "dict.pth")
    with pytest.raises(CheckpointError, match=r"found a dict with keys \['weights'\]"):
        load_state_dict(tmp_path / "dict.pth")
    with pytest.raises(CheckpointError, match="not in this project's format"):
        load_checkpoint(tmp_path / "dict.pth")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_arbitrary_pickles_are_not_executed(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(CheckpointError, match="not a readable"):
        Wav2Lip.from_checkpoint(tmp_path / "evil.pth")
    assert "executed" not in capsys.readouterr().out


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_publish_strips_optimizer_and_discriminator_and_loads_back(tmp_path: Path) -> None:
    from lipsync.training import cli

    torch.manual_seed(0)
    config = SyncNetConfig(width=0.25, center_frames=True)
    model = SyncNet(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    audio, face = model(torch.randn(2, 1, 80, 16), torch.rand(2, 15, 48, 96))
    (audio * face).sum().backward()
    optimizer.step()  # Adam moments now exist: twice the model's size
    source = save_checkpoint(
        tmp_path / "run" / "checkpoint_step000000007.pt",
        model=model,
        config=config,
        optimizer=optimizer,
        step=7,
        extra={"disc": {"model": {"w": torch.ones(3)}}, "last_eval": {"loss": 0.5}},
    )
    out = tmp_path / "weights" / "expert.pt"
    assert cli.main(["publish", str(source), str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["expert.pt"]  # no temporary file left behind
    shipped = load_checkpoint(out)
    assert shipped["optimizer"] is None and shipped["step"] == 7
    assert shipped["extra"] == {"published_from": source.name, "last_eval": {"loss": 0.5}}
    loaded = SyncNet.from_checkpoint(out)
    assert loaded.config == config
    for key, value in model.eval().state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert out.stat().st_size < source.stat().st_size / 2, "the optimizer moments are gone"
