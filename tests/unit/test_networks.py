"""The four networks: keys, shapes and sizes equal the released models; forward passes behave as documented."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lipsync.client.networks.blocks import Conv2d, NoNormConv2d
from lipsync.client.networks.checkpoints import count_parameters
from lipsync.client.networks.quality_disc import QualityDiscConfig, QualityDiscriminator
from lipsync.client.networks.syncnet import SyncNet, SyncNetConfig, sync_loss, sync_probability
from lipsync.client.networks.syncnet_v2 import SyncNetV2
from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig, build

pytestmark = pytest.mark.unit

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"  # the project's own copy

# (network factory, reference key table, parameter count measured on the reference code)
FULL_WIDTH = {
    "wav2lip": (Wav2Lip, "wav2lip_state_dict_keys.tsv", 36_298_035),
    "syncnet_color": (SyncNet, "syncnet_color_state_dict_keys.tsv", 16_435_072),
    "disc_qual": (QualityDiscriminator, "wav2lip_disc_qual_state_dict_keys.tsv", 14_113_793),
    "syncnet_v2_S": (SyncNetV2, "syncnet_v2_S_state_dict_keys.tsv", 13_631_616),
}


def reference_keys(name: str) -> dict[str, tuple[int, ...]]:
    """Parse a reference table: one `key<TAB>(d0, d1, ...)` per line, in state_dict order."""
    path = REFERENCE / name
    assert path.is_file(), f"reference table {path} is missing (the shared/ folder must sit beside the checkout)"
    table = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        table[key] = tuple(ast.literal_eval(shape))
    return table


@pytest.fixture(scope="module", params=sorted(FULL_WIDTH))
def full_width(request):
    factory, table, params = FULL_WIDTH[request.param]
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = factory()
    return model, reference_keys(table), params


def test_state_dict_keys_and_shapes_equal_the_release(full_width):
    model, reference, _ = full_width
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(reference)  # same keys in the same order
    wrong = {k: (ours[k], reference[k]) for k in reference if ours[k] != reference[k]}
    assert not wrong


def test_parameter_counts_equal_the_release(full_width):
    model, _, params = full_width
    assert count_parameters(model) == params


def test_full_width_generator_forward():
    torch.manual_seed(0)
    model = build(Wav2LipConfig()).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    assert out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("width", [0.25, 0.375, 0.5])
def test_narrow_generator_keeps_topology(width):
    narrow = Wav2Lip(Wav2LipConfig(width=width)).eval()
    full_keys = list(reference_keys("wav2lip_state_dict_keys.tsv"))
    assert list(narrow.state_dict()) == full_keys
    assert narrow.state_dict()["face_encoder_blocks.0.0.conv_block.0.weight"].shape[0] == round(16 * width)
    assert count_parameters(narrow) < 36_298_035 * width**2 * 1.1
    with torch.inference_mode():
        out = narrow(torch.randn(3, 1, 80, 16), torch.rand(3, 6, 96, 96))
    assert out.shape == (3, 3, 96, 96)


def test_generator_is_per_sample_in_eval_mode():
    # The backend pads batches with stale rows (CUDA graphs): no row may influence another.
    torch.manual_seed(0)
    model = Wav2Lip(Wav2LipConfig(width=0.25)).eval()
    mel, face = torch.randn(4, 1, 80, 16), torch.rand(4, 6, 96, 96)
    with torch.inference_mode():
        together = model(mel, face)
        alone = torch.cat([model(mel[i : i + 1], face[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_generator_skip_connections_put_the_decoder_output_first():
    # Released weights only work with the release's wiring: decoder block i sees
    # cat(decoder output i-1, encoder output 7-i), and the audio embedding enters decoder block 0.
    torch.manual_seed(0)
    model = Wav2Lip(Wav2LipConfig(width=0.25)).eval()
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda module, args, out: seen.__setitem__(name, out)

    def keep_input(name):
        return lambda module, args: seen.__setitem__(name, args[0])

    model.audio_encoder.register_forward_hook(keep("audio"))
    for i in range(7):
        model.face_encoder_blocks[i].register_forward_hook(keep(f"enc{i}"))
        model.face_decoder_blocks[i].register_forward_hook(keep(f"dec{i}"))
        model.face_decoder_blocks[i].register_forward_pre_hook(keep_input(f"dec{i}_in"))
    model.output_block.register_forward_pre_hook(keep_input("out_in"))
    with torch.inference_mode():
        model(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))

    assert torch.equal(seen["dec0_in"], seen["audio"])
    inputs = [seen[f"dec{i}_in"] for i in range(1, 7)] + [seen["out_in"]]
    for i, x in enumerate(inputs):
        dec, enc = seen[f"dec{i}"], seen[f"enc{6 - i}"]
        assert torch.equal(x, torch.cat((dec, enc), dim=1)), f"input after decoder block {i}"


def test_generator_rejects_time_folded_inputs():
    model = Wav2Lip(Wav2LipConfig(width=0.25))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(1, 5, 1, 80, 16), torch.rand(1, 6, 5, 96, 96))


@pytest.mark.parametrize("config_cls", [Wav2LipConfig, SyncNetConfig, QualityDiscConfig])
@pytest.mark.parametrize("width", [0.0, -0.5, 1.01, 0.1])
def test_config_rejects_bad_widths(config_cls, width):
    with pytest.raises(ValueError, match="width"):
        config_cls(width=width)


def test_config_is_frozen_and_names_the_narrowest_width():
    config = Wav2LipConfig(width=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.width = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"width >= 0\.21875"):
        Wav2LipConfig(width=0.2)
    assert Wav2LipConfig(width=0.21875).ch(16) == 4


def test_residual_is_added_after_batchnorm_before_relu():
    torch.manual_seed(0)
    block = Conv2d(8, 8, 3, 1, 1, residual=True).eval()
    block.conv_block[1].running_mean.normal_()
    block.conv_block[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 5, 5)
    expected = F.relu(block.conv_block[1](block.conv_block[0](x)) + x)
    torch.testing.assert_close(block(x), expected)
    with pytest.raises(ValueError, match="cin == cout"):
        Conv2d(8, 16, 3, 1, 1, residual=True)


def test_nonorm_block_is_conv_then_leaky_relu():
    block = NoNormConv2d(3, 4, 3, 1, 1)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(block(x), F.leaky_relu(block.conv_block[0](x), 0.01))
    assert [k for k in block.state_dict()] == ["conv_block.0.weight", "conv_block.0.bias"]


def test_syncnet_embeddings_and_loss():
    torch.manual_seed(0)
    model = SyncNet(SyncNetConfig(width=0.25)).eval()
    with torch.inference_mode():
        audio, face = model(torch.randn(4, 1, 80, 16), torch.rand(4, 15, 48, 96))
    assert audio.shape == face.shape == (4, model.config.embedding_dim) == (4, 128)
    torch.testing.assert_close(audio.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(face.norm(dim=1), torch.ones(4))
    assert (audio >= 0).all() and (face >= 0).all()  # ReLU embeddings: cosine lies in [0, 1]

    p = sync_probability(audio, face)
    torch.testing.assert_close(p, (audio * face).sum(dim=1))
    assert ((0 <= p) & (p <= 1)).all()
    target = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(sync_loss(audio, face, target), expected)
    torch.testing.assert_close(sync_loss(audio, face, target.unsqueeze(1)), expected)


def test_centered_syncnet_sees_motion_not_static_content():
    torch.manual_seed(0)
    centered = SyncNet(SyncNetConfig(width=0.25, center_frames=True)).eval()
    plain = SyncNet(SyncNetConfig(width=0.25)).eval()
    plain.load_state_dict(centered.state_dict())  # the option adds no parameters
    mel = torch.randn(2, 1, 80, 16)
    faces = torch.rand(2, 15, 48, 96) * 0.5
    static = torch.rand(2, 3, 48, 96).repeat(1, 5, 1, 1) * 0.5  # the same image added to all 5 frames
    with torch.no_grad():
        _, a = centered(mel, faces)
        _, b = centered(mel, faces + static)
        _, c = plain(mel, faces)
        _, d = plain(mel, faces + static)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (c - d).abs().max() > 1e-3, "without centering the static image changes the embedding"


def test_sync_loss_is_finite_for_orthogonal_embeddings():
    audio = torch.tensor([[1.0, 0.0]], requires_grad=True)
    face = torch.tensor([[0.0, 1.0]])
    loss = sync_loss(audio, face, torch.ones(1))
    loss.backward()
    assert torch.isfinite(loss) and loss > 10
    assert torch.isfinite(audio.grad).all()


def test_full_width_syncnet_forward():
    model = SyncNet().eval()
    with torch.inference_mode():
        audio, face = model(torch.randn(1, 1, 80, 16), torch.rand(1, 15, 48, 96))
    assert audio.shape == face.shape == (1, 512)


def test_quality_disc_judges_only_the_lower_half():
    torch.manual_seed(0)
    model = QualityDiscriminator(QualityDiscConfig(width=0.25)).eval()
    for module in model.modules():  # He init, so a random input's signal survives 14 layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, a=0.01)
    faces = torch.rand(3, 3, 96, 96)
    with torch.inference_mode():
        p = model(faces)
        upper_changed = faces.clone()
        upper_changed[:, :, :48] = torch.rand(3, 3, 48, 96)
        lower_changed = faces.clone()
        lower_changed[:, :, 48:] = torch.rand(3, 3, 48, 96)
        assert p.shape == (3, 1)
        assert ((0 < p) & (p < 1)).all()
        torch.testing.assert_close(model(upper_changed), p)
        assert not torch.allclose(model(lower_changed), p)
    with pytest.raises(ValueError, match="96"):
        model(torch.rand(3, 3, 48, 96))


def test_syncnet_v2_embeddings():
    torch.manual_seed(0)
    model = SyncNetV2().eval()
    with torch.inference_mode():
        lip = model.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255)
        aud = model.forward_aud(torch.randn(2, 1, 13, 20))
    assert lip.shape == aud.shape == (2, 1024)
    assert torch.isfinite(lip).all() and torch.isfinite(aud).all()


def test_lse_scorer_embeds_exactly_as_the_expert_forward():
    # The LSE offset search embeds faces and audio separately; a centred expert must be centred there too.
    import numpy as np

    from lipsync.training.evaluate import ExpertScorer

    torch.manual_seed(0)
    expert = SyncNet(SyncNetConfig(width=0.25, center_frames=True)).eval()
    scorer = ExpertScorer(expert, torch.device("cpu"), batch_size=4, source="test")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(10)]
    n = 6
    windows = (
        torch.from_numpy(
            np.stack([np.concatenate([f[48:] for f in frames[v : v + 5]], axis=2).transpose(2, 0, 1) for v in range(n)])
        ).float()
        / 255.0
    )
    with torch.no_grad():
        _, expected = expert(torch.zeros(n, 1, 80, 16), windows)
    torch.testing.assert_close(scorer.video_features(frames, n), expected, rtol=1e-4, atol=1e-5)


def _composite_with_mask_bias(bias: float) -> Wav2Lip:
    torch.manual_seed(0)
    model = Wav2Lip(Wav2LipConfig(width=0.25, head="composite")).eval()
    with torch.no_grad():
        model.output_block[1].weight[3].zero_()
        model.output_block[1].bias[3].fill_(bias)
    return model


def test_composite_head_returns_its_reference_where_the_mask_is_zero():
    model = _composite_with_mask_bias(-40.0)  # sigmoid(-40) = 4e-18: the mask is 0 in float32
    mel, face = torch.randn(3, 1, 80, 16), torch.rand(3, 6, 96, 96)
    with torch.no_grad():
        out = model(mel, face)
        content, mask = model.composite_parts(mel, face)
    assert out.shape == (3, 3, 96, 96) and mask.shape == (3, 1, 96, 96)
    torch.testing.assert_close(out, face[:, 3:], rtol=0, atol=1e-6)
    assert (content - face[:, 3:]).abs().max() > 0.1, "the content differs, so the mask really selected the reference"


def test_composite_head_returns_its_content_where_the_mask_is_one():
    model = _composite_with_mask_bias(40.0)
    mel, face = torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96)
    with torch.no_grad():
        content, _ = model.composite_parts(mel, face)
        torch.testing.assert_close(model(mel, face), content, rtol=0, atol=1e-6)


def test_heads_share_every_parameter_name_and_differ_only_in_the_last_convolution():
    image = Wav2Lip(Wav2LipConfig(width=0.25)).state_dict()
    composite = Wav2Lip(Wav2LipConfig(width=0.25, head="composite")).state_dict()
    assert list(image) == list(composite)
    differ = [k for k in image if image[k].shape != composite[k].shape]
    assert differ == ["output_block.1.weight", "output_block.1.bias"]
    assert composite["output_block.1.weight"].shape[0] == 4
    with pytest.raises(ValueError, match="head"):
        Wav2LipConfig(head="warp")
    with pytest.raises(ValueError, match="composite_parts"):
        Wav2Lip(Wav2LipConfig(width=0.25)).composite_parts(torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 96, 96))
