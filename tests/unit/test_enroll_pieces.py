"""Enrolment pieces that need no training: the held-out split, speech and face checks, reference choice, config."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.client.avatar import AvatarError, check_name, name_from_folder, triton_model_name
from lipsync.client.face_tracking import FaceBox
from lipsync.training.config import ConfigError
from lipsync.training.enroll.config import EnrollConfig
from lipsync.training.enroll.recording import FPS, speech_share, val_start_frame
from lipsync.training.enroll.reference import choose_loop, choose_still, frame_loudness

pytestmark = pytest.mark.unit


def test_the_held_out_part_is_the_end_of_the_recording_within_its_bounds() -> None:
    assert val_start_frame(1500, 0.15, 45.0) == 1500 - 225  # 15 % of 60 s
    assert val_start_frame(125, 0.15, 45.0) == 125 - 30  # at least 1.2 s held out
    assert val_start_frame(15000, 0.15, 45.0) == 15000 - 45 * FPS  # at most 45 s


def test_speech_share_counts_frames_louder_than_the_threshold() -> None:
    rate = 16_000
    t = np.arange(rate * 2) / rate
    loud = 0.1 * np.sin(2 * np.pi * 200 * t)  # -23 dBFS RMS
    silence = np.zeros(rate * 2)
    assert speech_share(np.concatenate([loud, silence]).astype(np.float32)) == pytest.approx(0.5, abs=0.02)
    assert speech_share(np.zeros(rate * 3, np.float32)) == 0.0
    assert speech_share(1e-4 * np.ones(rate * 3, np.float32)) == 0.0  # -80 dBFS hiss is not speech


def test_the_loop_is_the_quietest_gap_free_stretch_and_the_still_its_quietest_frame() -> None:
    frames = 400
    wav = np.zeros(frames * 640, np.float32)
    rng = np.random.default_rng(0)
    wav[:] = 0.05 * rng.standard_normal(wav.size)  # speech everywhere ...
    wav[200 * 640 : 300 * 640] *= 0.01  # ... but frames 200-299
    wav[250 * 640 : 260 * 640] = 0.0  # and silence at 250-259
    boxes: list[FaceBox | None] = [FaceBox(10, 10, 60, 60)] * frames
    boxes[210] = None  # a gap: no run over it may be chosen
    loudness = frame_loudness(wav, frames)
    start, stop = choose_loop(boxes, loudness, end=frames, length=50)
    assert stop - start == 50
    assert not (start <= 210 < stop)
    assert 200 <= start and stop <= 300
    still = choose_still(boxes, loudness, start, stop)
    assert start <= still < stop and boxes[still] is not None
    assert np.mean(loudness[max(still - 2, 0) : still + 3]) <= np.percentile(loudness[start:stop], 20)


def test_enroll_config_refuses_what_cannot_work() -> None:
    EnrollConfig(video="a.mp4", out="avatars/a")
    for bad in (
        {"video": ""},
        {"out": ""},
        {"minutes": 0.0},
        {"minutes": float("nan")},
        {"val_share": 0.9},
        {"disc_wt": 0.6, "syncnet_wt": 0.5},
        {"resume": True, "overwrite": True},
    ):
        with pytest.raises(ConfigError):
            EnrollConfig(**{"video": "a.mp4", "out": "avatars/a", **bad})


def test_avatar_names_are_safe_for_triton_and_offers() -> None:
    assert check_name("anna-2") == "anna-2"
    assert triton_model_name("anna-2") == "avatar_anna_2"
    assert name_from_folder("/x/Anna Smith") == "anna_smith"
    assert name_from_folder("/x/2024") == "avatar_2024"
    for bad in ("", "Anna", "2anna", "a/b", "a" * 41, "anna smith"):
        with pytest.raises(AvatarError):
            check_name(bad)


def test_person_windows_are_distinct_and_contrast_references_show_the_other_speech_level(tmp_path) -> None:
    from lipsync.training.enroll.dataset import PersonDataset
    from tests.unit.test_training_smoke import read_stamp, write_toy_corpus

    root = write_toy_corpus(tmp_path / "corpus", n_clips=6)
    random_refs = PersonDataset(root, "train", contrast=0.0)
    targets = {read_stamp(random_refs[k][3][:, 0].transpose(1, 2, 0)) for k in range(8)}
    assert len(targets) > 1, "the windows of one batch must be different draws"

    data = PersonDataset(root, "train", contrast=1.0)
    clip = data.clips[0]
    starts, level = data._loudness(clip)
    median = float(np.median(level))
    by_start = dict(zip(starts.tolist(), level.tolist(), strict=True))
    checked = 0
    for key in range(0, 4 * data.samples_per_clip, 97):
        x, _, _, gt = data[key]
        target, reference = read_stamp(gt[:, 0].transpose(1, 2, 0)), read_stamp(x[3:, 0].transpose(1, 2, 0))
        if (
            target not in by_start
            or reference not in by_start
            or data.clips[(key % len(data)) // data.samples_per_clip] is not clip
        ):
            continue
        assert (by_start[target] >= median) != (by_start[reference] >= median), (target, reference)
        checked += 1
    assert checked >= 5


def test_motion_loss_is_zero_for_the_shipped_model_and_large_when_the_mouth_ignores_speech() -> None:
    import torch

    from lipsync.client.model_repository import SHIPPED_GENERATOR
    from lipsync.client.networks.wav2lip import Wav2Lip
    from lipsync.training.enroll.trainer import motion_loss
    from lipsync.training.train_generator import generate_window

    torch.manual_seed(0)
    teacher = Wav2Lip.from_checkpoint(SHIPPED_GENERATOR).eval()
    student = Wav2Lip.from_checkpoint(SHIPPED_GENERATOR).eval()
    x = torch.rand(2, 6, 5, 96, 96)
    x[:, :3, :, 48:] = 0
    mels = torch.randn(2, 5, 1, 80, 16) * 2 - 4
    with torch.no_grad():
        same = motion_loss(student, teacher, x, mels, generate_window(student, mels, x))
        assert float(same) < 1e-6

        class Deaf(torch.nn.Module):  # the failure the loss exists for: one mouth whatever the speech
            config = student.config

            def forward(self, mel, face):
                return student(torch.zeros_like(mel), face)

        deaf = Deaf()
        broken = motion_loss(deaf, teacher, x, mels, generate_window(deaf, mels, x))
    assert float(broken) > 1e-3, float(broken)
