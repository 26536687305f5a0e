"""The training loop end to end on a tiny corpus whose frames carry their own number: datasets, trainers, resume, evaluation, CLI."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lipsync.client.model_repository import SHIPPED_EXPERT
from lipsync.client.networks.checkpoints import load_checkpoint, save_checkpoint
from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig
from lipsync.training import cli
from lipsync.training.config import ConfigError, EvaluateConfig, ExpertTrainConfig, GeneratorTrainConfig, preset
from lipsync.training.data.lrs2 import (
    ExpertDataset,
    GeneratorDataset,
    compute_mel,
    mel_start,
    scan_clip,
)
from lipsync.training.runtime import StepSampler, read_metrics

pytestmark = pytest.mark.unit

N_FRAMES = 40
GAP_CLIP = "toy/00001"  # frames 12..14 removed: a face-detection gap
GAP = (12, 13, 14)


def _stamp(img: np.ndarray, index: int) -> None:
    # bottom-left 24x24 block (18x18 after the 96 resize), grey level = frame number
    img[-24:, :24] = 20 + 5 * index


def read_stamp(face96_bgr_lower_or_full: np.ndarray) -> int:
    """Frame number from a (H, W, 3) uint8/float face at 96 wide (lower half or full)."""
    img = np.asarray(face96_bgr_lower_or_full, dtype=np.float64)
    if img.max() <= 1.0:
        img = img * 255.0
    value = img[-9, 9].mean()
    return int(round((value - 20) / 5))


def write_toy_corpus(root: Path, n_clips: int = 6, n_frames: int = N_FRAMES, seed: int = 0) -> Path:
    """A tiny corpus in the LRS2 layout: 128x128 jpgs, 16 kHz audio.wav, filelists 3/1/2 (train/val/test)."""
    rng = np.random.default_rng(seed)
    names = []
    size = 128
    for c in range(n_clips):
        name = f"toy/{c:05d}"
        folder = root / name
        folder.mkdir(parents=True)
        opening = np.clip(np.convolve(rng.random(n_frames + 4), np.ones(3) / 3, "same")[:n_frames], 0, 1)
        skin = [int(v) for v in rng.integers(90, 220, 3)]
        background = [int(v) for v in rng.integers(0, 255, 3)]
        for i in range(n_frames):
            if name == GAP_CLIP and i in GAP:
                continue
            img = np.full((size, size, 3), background, np.uint8)
            cv2.ellipse(img, (64, 60), (48, 58), 0, 0, 360, skin, -1)
            cv2.ellipse(img, (64, 92), (20, int(2 + 14 * opening[i])), 0, 0, 360, (40, 20, 120), -1)
            _stamp(img, i)
            cv2.imwrite(str(folder / f"{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
        t = np.arange(n_frames * 640) / 16_000
        envelope = np.repeat(opening, 640)
        wav = 0.5 * envelope * np.sin(2 * np.pi * (180 + 60 * c) * t) + 0.01 * rng.standard_normal(t.size)
        with wave.open(str(folder / "audio.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16_000)
            w.writeframes(np.clip(wav * 32767, -32768, 32767).astype("<i2").tobytes())
        names.append(name)
    (root / "filelists").mkdir()
    splits = {"train": names[:3], "val": names[3:4], "test": names[4:]}
    for split, items in splits.items():
        (root / "filelists" / f"{split}.txt").write_text("".join(f"{n}\n" for n in items))
    return root


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Tiny networks gain nothing from a second thread, and on a busy 2-core machine OpenMP's
    # spinning threads make them several times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("corpus"))


def _frames_of_window(window_chw: np.ndarray, channels_per_frame: int = 3) -> list[int]:
    """Frame numbers of a (3*T, H, W) frame-major window."""
    n = window_chw.shape[0] // channels_per_frame
    return [read_stamp(window_chw[3 * k : 3 * k + 3].transpose(1, 2, 0)) for k in range(n)]


def _audio_frame(mel_window: np.ndarray, full_mel: np.ndarray) -> int:
    """The frame whose mel window (columns int(3.2 f) ..+16) equals this one exactly."""
    for f in range(N_FRAMES + 2):
        s = mel_start(f)
        if s + 16 <= full_mel.shape[1] and np.array_equal(full_mel[:, s : s + 16], mel_window[0]):
            return f
    raise AssertionError("mel window not found in the clip's mel")


# ---- datasets ----


def test_scan_clip_rejects_windows_across_a_numbering_gap(corpus: Path) -> None:
    clip = scan_clip(corpus, GAP_CLIP)
    assert set(clip.frames) == set(range(N_FRAMES)) - set(GAP)
    for start in clip.starts:
        assert not set(range(start, start + 5)) & set(GAP)
    assert 7 in clip.starts and 8 not in clip.starts and 15 in clip.starts


def test_expert_dataset_shapes_labels_and_offsets(corpus: Path) -> None:
    ds = ExpertDataset(corpus, "train", seed=3, min_offset=3, samples_per_clip=12)
    mels = {clip.name: compute_mel(clip.audio_path) for clip in ds.clips}
    labels = []
    for key in range(len(ds)):
        faces, mel, y = ds[key]
        assert faces.shape == (15, 48, 96) and faces.dtype == np.float32
        assert 0.0 <= faces.min() and faces.max() <= 1.0
        assert mel.shape == (1, 80, 16) and mel.dtype == np.float32 and -4.0 <= mel.min() and mel.max() <= 4.0
        assert y.shape == (1,) and y[0] in (0.0, 1.0)
        frames = _frames_of_window(faces)
        assert frames == list(range(frames[0], frames[0] + 5)), "5 consecutive frames, no gap"
        clip = ds.clips[(key // ds.samples_per_clip) % len(ds.clips)]
        audio_frame = _audio_frame(mel, mels[clip.name])
        if y[0] == 1.0:
            assert frames[0] == audio_frame
        else:
            assert abs(frames[0] - audio_frame) >= 3
        labels.append(y[0])
    assert 0.2 < np.mean(labels) < 0.8


def test_generator_dataset_layout_and_the_minus_one_mel_shift(corpus: Path) -> None:
    ds = GeneratorDataset(corpus, "train", seed=5, samples_per_clip=4)
    assert ds.mel_shift == -1
    for key in range(len(ds)):
        x, indiv_mels, mel, gt = ds[key]
        assert x.shape == (6, 5, 96, 96) and gt.shape == (3, 5, 96, 96) and indiv_mels.shape == (5, 1, 80, 16)
        assert mel.shape == (1, 80, 16)
        assert x.dtype == gt.dtype == indiv_mels.dtype == np.float32
        assert 0.0 <= gt.min() and gt.max() <= 1.0
        assert np.all(x[:3, :, 48:] == 0.0), "target lower half masked"
        np.testing.assert_array_equal(x[:3, :, :48], gt[:, :, :48])
        target = [read_stamp(gt[:, t].transpose(1, 2, 0)) for t in range(5)]
        reference = [read_stamp(x[3:, t].transpose(1, 2, 0)) for t in range(5)]
        assert target == list(range(target[0], target[0] + 5))
        assert reference == list(range(reference[0], reference[0] + 5)) and reference[0] != target[0]
        clip = ds.clips[(key // ds.samples_per_clip) % len(ds.clips)]
        full = compute_mel(clip.audio_path)
        f0 = target[0]
        assert f0 >= 1, "frame 0 has no window one frame earlier"
        np.testing.assert_array_equal(mel[0], full[:, mel_start(f0) : mel_start(f0) + 16])
        for t in range(5):
            s = mel_start(f0 + t - 1)  # get_segmented_mels: one video frame earlier
            np.testing.assert_array_equal(indiv_mels[t, 0], full[:, s : s + 16])


def test_a_low_lookahead_generator_hears_earlier_audio_and_is_judged_at_its_own_time(corpus: Path) -> None:
    """mel_offset -10: each frame's input window starts 10 columns (125 ms) earlier; the expert's stays."""
    ds = GeneratorDataset(corpus, "train", seed=5, samples_per_clip=4, mel_shift=0, mel_offset=-10)
    seen = 0
    for key in range(len(ds)):
        _, indiv_mels, mel, gt = ds[key]
        f0 = read_stamp(gt[:, 0].transpose(1, 2, 0))
        full = compute_mel(ds.clips[(key // ds.samples_per_clip) % len(ds.clips)].audio_path)
        assert mel_start(f0) >= 10  # a window that would start before the audio is drawn again
        np.testing.assert_array_equal(mel[0], full[:, mel_start(f0) : mel_start(f0) + 16])
        for t in range(5):
            s = mel_start(f0 + t) - 10
            np.testing.assert_array_equal(indiv_mels[t, 0], full[:, s : s + 16])
        seen += 1
    assert seen == len(ds)


def test_samples_are_a_function_of_seed_epoch_and_index(corpus: Path) -> None:
    a = GeneratorDataset(corpus, "train", seed=11)
    b = GeneratorDataset(corpus, "train", seed=11)
    c = GeneratorDataset(corpus, "train", seed=12)
    n = len(a)
    for key in (0, 3, n + 1):
        for u, v in zip(a[key], b[key], strict=True):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(a[k][3], c[k][3]) for k in range(n))
    assert any(not np.array_equal(a[k][3], a[k + n][3]) for k in range(n)), "another epoch draws other windows"
    # an evaluation set draws the same samples whatever the epoch
    fixed = GeneratorDataset(corpus, "val", seed=1, fixed=True)
    np.testing.assert_array_equal(fixed[0][3], fixed[len(fixed)][3])


def test_mel_is_computed_once_per_clip_per_worker(corpus: Path) -> None:
    ds = ExpertDataset(corpus, "train", seed=0, samples_per_clip=5)
    for key in range(len(ds)):
        ds[key]
    assert ds.mels.misses == len(ds.clips)


def test_step_sampler_resumes_mid_epoch_and_shards_ranks() -> None:
    full = StepSampler(10, batch_size=2, seed=4)
    it = iter(full)
    stream = [next(it) for _ in range(30)]
    resumed = StepSampler(10, batch_size=2, seed=4, start_step=7)
    it = iter(resumed)
    assert [next(it) for _ in range(16)] == stream[14:30]
    assert sorted(k % 10 for k in stream[:10]) == list(range(10)), "one epoch is a permutation"
    assert all(k // 10 == 1 for k in stream[10:20]), "keys carry the epoch"
    r0, r1 = (
        StepSampler(10, batch_size=1, seed=4, world_size=2),
        StepSampler(10, batch_size=1, seed=4, rank=1, world_size=2),
    )
    i0, i1 = iter(r0), iter(r1)
    first0, first1 = [next(i0) for _ in range(5)], [next(i1) for _ in range(5)]
    assert sorted(first0 + first1) == list(range(10))


# ---- config and CLI ----


def test_config_presets_validation_and_unknown_keys(tmp_path: Path) -> None:
    cfg = preset(GeneratorTrainConfig, "cpu-small", data_root="x")
    assert cfg.syncnet_wt == 0.03 and cfg.disc_wt == 0.07 and cfg.adam_beta1 == 0.5 and cfg.sync_threshold == 0.75
    paper = GeneratorTrainConfig()
    assert (paper.batch_size, paper.lr, paper.eval_interval, paper.mel_shift) == (16, 1e-4, 3000, -1)
    assert ExpertTrainConfig().batch_size == 64
    with pytest.raises(ConfigError, match="syncnet_wt \\+ disc_wt"):
        GeneratorTrainConfig(syncnet_wt=0.5, disc_wt=0.5)
    with pytest.raises(ConfigError, match="width"):
        ExpertTrainConfig(width=1.5)
    with pytest.raises(ConfigError, match="optimizer"):
        ExpertTrainConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match="bogus"):
        preset(ExpertTrainConfig, "tiny", bogus=1)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"batch_size": 4, "learning_rate": 1.0}))
    with pytest.raises(SystemExit) as exc:
        cli.main(["expert", "--config", str(bad), "--data-root", str(tmp_path)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["expert", "--no-such-flag", "1"])
    with pytest.raises(ConfigError, match="expert_checkpoint or syncnet_v2"):
        EvaluateConfig()


@pytest.mark.parametrize("command", ["preprocess", "expert", "generator", "evaluate", "corpus"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: lipsync-train " + command in capsys.readouterr().out


# ---- the loop end to end ----


def _train(args: list[str]) -> None:
    assert cli.main(args) == 0


@pytest.mark.slow
def test_expert_trains_with_adamax_and_resumes_its_state(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "adamax"
    common = ["expert", "--preset", "tiny", "--data-root", str(corpus), "--out-dir", str(out), "--optimizer", "adamax"]
    _train([*common, "--steps", "1"])
    _train(["expert", "--resume", "auto", "--out-dir", str(out), "--steps", "2", "--lr", "0.002"])
    ckpt = load_checkpoint(out / "checkpoint_step000000002.pt")
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.002], "--lr on resume is not undone by the state"
    assert ckpt["extra"]["train_config"]["optimizer"] == "adamax"
    states = list(ckpt["optimizer"]["state"].values())
    assert states and all("exp_inf" in s and int(s["step"]) == 2 for s in states), "Adamax moments carried over"


def test_train_resume_and_evaluate_end_to_end(corpus: Path, tmp_path: Path) -> None:
    expert_dir = tmp_path / "expert"
    common = ["--preset", "tiny", "--data-root", str(corpus)]
    # expert: 2 steps, then resumed to 4
    _train(["expert", *common, "--out-dir", str(expert_dir), "--steps", "2"])
    _train(["expert", "--resume", "auto", "--out-dir", str(expert_dir), "--steps", "4"])
    expert_ckpt = expert_dir / "checkpoint_step000000004.pt"
    ckpt = load_checkpoint(expert_ckpt)
    assert ckpt["step"] == 4 and ckpt["config_class"] == "SyncNetConfig"
    assert all(int(s["step"]) == 4 for s in ckpt["optimizer"]["state"].values()), "Adam state carried over"
    assert ckpt["extra"]["train_config"]["width"] == 0.125
    rows = read_metrics(expert_dir / "metrics.csv")
    assert sorted(int(r["step"]) for r in rows if r["split"] == "train" and r["name"] == "loss") == [1, 2, 3, 4]
    assert any(r["split"] == "val" and r["name"] == "accuracy" for r in rows)
    assert json.loads((expert_dir / "config.json").read_text())["config"]["steps"] == 4

    # generator: sync_threshold high so the expert loss switches on at the first evaluation (step 2)
    gen_args = [*common, "--expert-checkpoint", str(expert_ckpt), "--sync-threshold", "100", "--keep-checkpoints", "0"]
    straight, split = tmp_path / "gen_straight", tmp_path / "gen_split"
    _train(["generator", *gen_args, "--out-dir", str(straight), "--steps", "4"])
    _train(["generator", *gen_args, "--out-dir", str(split), "--steps", "2"])
    first = load_checkpoint(split / "checkpoint_step000000002.pt")
    assert first["step"] == 2 and first["extra"]["sync_enabled"] is True and first["extra"]["disc"] is not None
    _train(
        ["generator", "--resume", str(split / "checkpoint_step000000002.pt"), "--out-dir", str(split), "--steps", "4"]
    )
    a = load_checkpoint(straight / "checkpoint_step000000004.pt")
    b = load_checkpoint(split / "checkpoint_step000000004.pt")
    assert a["step"] == b["step"] == 4
    # the resumed run continues the same data stream, optimiser moments and discriminator
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6, msg=key)
    for key in a["extra"]["disc"]["model"]:
        torch.testing.assert_close(
            a["extra"]["disc"]["model"][key], b["extra"]["disc"]["model"][key], rtol=1e-5, atol=1e-6
        )
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        torch.testing.assert_close(state_a["exp_avg_sq"], state_b["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    rows = read_metrics(split / "metrics.csv")
    weights = {int(r["step"]): float(r["value"]) for r in rows if r["split"] == "train" and r["name"] == "syncnet_wt"}
    assert weights == {1: 0.0, 2: 0.0, 3: 0.03, 4: 0.03}, "0 until the eval switch, then 0.03"
    grid = cv2.imread(str(split / "samples" / "step000000004.png"))
    assert grid is not None and grid.shape == (2 * 5 * 96, 4 * 96, 3)

    # evaluation over the test split: real, generated, shifted, mismatched; expert accuracy
    out = tmp_path / "eval"
    assert (
        cli.main(
            [
                "evaluate",
                "--data-root",
                str(corpus),
                "--expert-checkpoint",
                str(expert_ckpt),
                "--generator-checkpoint",
                str(split / "checkpoint_step000000004.pt"),
                "--out-dir",
                str(out),
                "--shifts",
                "-3",
                "3",
                "--accuracy-samples",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["scorer"] == "project_expert"
    assert report["generator_mel_shift"] == -1
    conditions = ("real", "real_shift_-3", "real_shift_+3", "real_mismatched_audio", "generated", "generated_shift_+3")
    for name in (*conditions, "generated_mismatched_audio", "dubbed"):
        summary = report["conditions"][name]
        assert summary["clips"] == 2
        assert math.isfinite(summary["lse_d"]) and math.isfinite(summary["lse_c"])
        assert 0.0 <= summary["lse_d"] <= 2.0 and summary["lse_c"] >= 0.0
    accuracy = report["expert_accuracy"]
    assert 0.0 <= accuracy["accuracy"] <= 1.0 and accuracy["samples"] == 2 * 4
    assert cv2.imread(str(out / "lse.png")) is not None


@pytest.mark.slow
def test_synthetic_corpus_feeds_both_datasets(tmp_path: Path) -> None:
    pytest.importorskip("lipsync.training.data.synthetic.cli")
    root = tmp_path / "synthetic"
    args = ["corpus", "--out", str(root), "--clips", "3", "--min-seconds", "1.5", "--max-seconds", "2"]
    code = cli.main([*args, "--workers", "1", "--no-progress"])
    if code == 3:
        pytest.skip("espeak-ng is not available to the synthetic corpus")
    assert code == 0
    names = sorted(
        {
            line.split()[0]
            for f in (root / "filelists").glob("*.txt")
            for line in f.read_text().splitlines()
            if line.strip()
        }
    )
    assert len(names) == 3
    (root / "filelists" / "train.txt").write_text("".join(f"{n}\n" for n in names))
    faces, mel, y = ExpertDataset(root, "train", seed=0)[0]
    assert faces.shape == (15, 48, 96) and mel.shape == (1, 80, 16) and y.shape == (1,)
    x, indiv_mels, sync_mel, gt = GeneratorDataset(root, "train", seed=0)[1]
    assert x.shape == (6, 5, 96, 96) and indiv_mels.shape == (5, 1, 80, 16) and gt.shape == (3, 5, 96, 96)
    assert 0.0 <= gt.min() and gt.max() <= 1.0 and gt.std() > 0.01


def test_evaluate_scores_with_syncnet_v2_weights_when_given(corpus: Path, tmp_path: Path) -> None:
    from lipsync.client.networks.syncnet_v2 import SyncNetV2
    from lipsync.training.evaluate import evaluate

    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNetV2().state_dict(), weights)  # random weights: this checks the plumbing, not the numbers
    config = EvaluateConfig(
        data_root=str(corpus),
        out_dir=str(tmp_path / "eval"),
        syncnet_v2=str(weights),
        max_clips=1,
        shifts=(4,),
        device="cpu",
    )
    report = evaluate(config)
    assert report["scorer"] == "syncnet_v2" and "expert_accuracy" not in report
    assert set(report["conditions"]) == {"real", "real_shift_+4"}
    for summary in report["conditions"].values():
        assert summary["clips"] == 1 and math.isfinite(summary["lse_d"]) and summary["lse_c"] >= 0.0
    assert (tmp_path / "eval" / "report.json").is_file() and (tmp_path / "eval" / "lse.png").is_file()


@pytest.mark.slow
def test_torchrun_ddp_trains_the_expert_and_the_generator_on_two_cpu_processes(corpus: Path, tmp_path: Path) -> None:
    """The multi-GPU path (torchrun + DistributedDataParallel) with gloo on two CPU processes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    common = ["--preset", "tiny", "--data-root", str(corpus), "--device", "cpu", "--steps", "2"]

    def run(args: list[str]) -> None:
        done = subprocess.run(
            [*launch, "-m", "lipsync.training.cli", *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]

    expert_dir, gen_dir = tmp_path / "expert", tmp_path / "generator"
    run(["expert", *common, "--out-dir", str(expert_dir)])
    expert_ckpt = expert_dir / "checkpoint_step000000002.pt"
    assert json.loads((expert_dir / "config.json").read_text())["world_size"] == 2
    run(
        [
            "generator",
            *common,
            "--out-dir",
            str(gen_dir),
            "--expert-checkpoint",
            str(expert_ckpt),
            "--sync-threshold",
            "100",
        ]
    )
    ckpt = load_checkpoint(gen_dir / "checkpoint_step000000002.pt")
    assert ckpt["step"] == 2 and ckpt["extra"]["disc"] is not None
    # rank 0 alone writes: one metrics row per step and name, not two
    rows = read_metrics(gen_dir / "metrics.csv")
    assert sorted(int(r["step"]) for r in rows if r["split"] == "train" and r["name"] == "l1") == [1, 2]


def test_composite_head_grows_from_an_image_head_and_trains(corpus: Path, tmp_path: Path) -> None:
    # An image-head network of the shipped width (the paper's head, as released checkpoints have).
    torch.manual_seed(3)
    image_head = Wav2Lip(Wav2LipConfig(width=0.25, head="image"))
    source = save_checkpoint(tmp_path / "image_head.pt", model=image_head, config=image_head.config)
    out = tmp_path / "composite"
    args = ["generator", "--preset", "tiny", "--data-root", str(corpus), "--out-dir", str(out), "--steps", "2"]
    args += ["--expert-checkpoint", str(SHIPPED_EXPERT), "--head", "composite", "--mask-wt", "0.01"]
    _train([*args, "--init-from", str(source), "--mask-init-bias", "1.5", "--keep-checkpoints", "0"])
    ckpt = load_checkpoint(out / "checkpoint_step000000002.pt")
    assert ckpt["config"] == {"width": 0.25, "head": "composite", "mel_offset": 0}
    model = Wav2Lip.from_checkpoint(out / "checkpoint_step000000002.pt")
    assert model.config.head == "composite"
    weight, bias = ckpt["model"]["output_block.1.weight"], ckpt["model"]["output_block.1.bias"]
    original = image_head.state_dict()["output_block.1.weight"]
    assert weight.shape[0] == 4 and original.shape[0] == 3
    # Two steps at lr 1e-4 barely move the copied content channels, or the new mask channel away
    # from its zero weights and the requested bias.
    assert (weight[:3] - original).abs().max() < 5e-3
    assert weight[3].abs().max() < 5e-3 and abs(float(bias[3]) - 1.5) < 5e-3
    rows = read_metrics(out / "metrics.csv")
    assert any(r["split"] == "train" and r["name"] == "mask" for r in rows)
