"""Held-out evaluation: LSE-D / LSE-C of real, generated, shifted and mismatched clips, and the expert's off-sync accuracy."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch import Tensor

from lipsync.client.contract import FACE_SIZE, MASK_START_ROW
from lipsync.training.config import EvaluateConfig
from lipsync.training.data.lrs2 import SYNC_T, Clip, ExpertDataset, load_clips, mel_start
from lipsync.training.lse import (
    MFCC_PER_VIDEO_FRAME,
    MFCC_WINDOW,
    SAMPLES_PER_VIDEO_FRAME,
    LSEResult,
    lse_scores,
    mfcc,
    to_int16_scale,
    window_count,
)
from lipsync.training.runtime import resolve_device

logger = logging.getLogger(__name__)

_V2_SIZE = 224


class SyncScorer(Protocol):
    """Embeddings of a clip's first n 5-frame video windows and of the matching audio windows (Euclidean distance)."""

    name: str
    description: str

    def video_features(self, frames: list[np.ndarray], n: int) -> Tensor: ...

    def audio_features(self, wav: np.ndarray, n: int) -> Tensor: ...


def _batched(fn, make_input, n: int, batch: int, device: torch.device) -> Tensor:
    """fn over inputs make_input(0..n-1), built one batch at a time (long clips never sit in memory as windows)."""
    out = []
    with torch.no_grad():
        for start in range(0, n, batch):
            x = np.stack([make_input(i) for i in range(start, min(n, start + batch))]).astype(np.float32)
            out.append(fn(torch.from_numpy(x).to(device)).float().cpu())
    return torch.cat(out)


class ExpertScorer:
    """The project's SyncNet expert on its own inputs: (15,48,96) lower halves and (1,80,16) mel windows.

    The two encoders of `SyncNet.forward` run separately, since the offset search pairs every video
    window with many audio windows.
    """

    name = "project_expert"

    def __init__(self, expert: torch.nn.Module, device: torch.device, batch_size: int, source: str) -> None:
        self.expert = expert.eval()
        self.device = device
        self.batch_size = batch_size
        self.description = (
            f"project SyncNet expert ({source}); Euclidean distance between L2-normalised embeddings "
            "(0 = identical, 1 = the zero padding, sqrt(2) = orthogonal; not comparable with syncnet_v2 numbers)"
        )

    def video_features(self, frames: list[np.ndarray], n: int) -> Tensor:
        lower = [_to_face(f)[MASK_START_ROW:] for f in frames[: n + SYNC_T - 1]]

        def window(v: int) -> np.ndarray:  # (15, 48, 96) in [0, 1], frame-major BGR
            return np.concatenate(lower[v : v + SYNC_T], axis=2).transpose(2, 0, 1) / np.float32(255.0)

        return _batched(self.expert.embed_faces, window, n, self.batch_size, self.device)

    def audio_features(self, wav: np.ndarray, n: int) -> Tensor:
        from lipsync.client.audio import melspectrogram

        mel = melspectrogram(wav.astype(np.float32))
        return _batched(
            self.expert.embed_audio,
            lambda v: mel[None, :, mel_start(v) : mel_start(v) + 16],
            n,
            self.batch_size,
            self.device,
        )


class SyncNetV2Scorer:
    """syncnet_python's `S`: 5 BGR frames at 224x224 (raw 0..255) and 13x20 MFCC windows of the int16 audio."""

    name = "syncnet_v2"

    def __init__(self, path: str, device: torch.device, batch_size: int) -> None:
        from lipsync.client.networks.syncnet_v2 import SyncNetV2

        self.net = SyncNetV2.from_checkpoint(path, map_location=device).eval()
        self.device = device
        self.batch_size = batch_size
        self.description = (
            f"syncnet_v2 ({path}); Euclidean distance between unnormalised 1024-d embeddings, as the paper"
        )

    def video_features(self, frames: list[np.ndarray], n: int) -> Tensor:
        big = np.stack(
            [cv2.resize(f, (_V2_SIZE, _V2_SIZE)) for f in frames[: n + SYNC_T - 1]]
        )  # uint8 (T, 224, 224, 3)
        return _batched(  # (3, 5, 224, 224) windows of raw 0..255 BGR values
            self.net.forward_lip, lambda v: big[v : v + SYNC_T].transpose(3, 0, 1, 2), n, self.batch_size, self.device
        )

    def audio_features(self, wav: np.ndarray, n: int) -> Tensor:
        cc = mfcc(to_int16_scale(wav)).T.astype(np.float32)  # (13, M)
        step = MFCC_PER_VIDEO_FRAME
        return _batched(
            self.net.forward_aud,
            lambda v: cc[None, :, step * v : step * v + MFCC_WINDOW],
            n,
            self.batch_size,
            self.device,
        )


def _to_face(frame: np.ndarray) -> np.ndarray:
    return frame if frame.shape[:2] == (FACE_SIZE, FACE_SIZE) else cv2.resize(frame, (FACE_SIZE, FACE_SIZE))


# ---- clips ----


@dataclass
class EvalClip:
    """The longest run of consecutive frames of a clip and the audio under it (16 kHz float32)."""

    name: str
    frames: list[np.ndarray]
    wav: np.ndarray


def longest_run(frames: tuple[int, ...]) -> tuple[int, int]:
    """(first frame, length) of the longest run of consecutive frame numbers."""
    best = (frames[0], 1)
    start, length = frames[0], 1
    for prev, cur in zip(frames, frames[1:], strict=False):
        if cur == prev + 1:
            length += 1
        else:
            start, length = cur, 1
        if length > best[1]:
            best = (start, length)
    return best


def load_eval_clip(clip: Clip) -> EvalClip | None:
    from lipsync.client.audio import load_audio

    first, length = longest_run(clip.frames)
    frames = [read_frame_native(clip.frame_path(i)) for i in range(first, first + length)]
    if any(f is None for f in frames):
        return None
    wav = load_audio(clip.audio_path)[first * SAMPLES_PER_VIDEO_FRAME :]
    return EvalClip(clip.name, frames, np.ascontiguousarray(wav, dtype=np.float32))


def read_frame_native(path: Path) -> np.ndarray | None:
    """A crop at its stored size (syncnet_v2 resizes to 224 itself; the expert path resizes to 96)."""
    return cv2.imread(str(path))


def shift_audio(wav: np.ndarray, frames: int) -> np.ndarray:
    """Audio delayed (frames > 0) or advanced (< 0) by whole video frames, same length, silence filled in."""
    k = abs(frames) * SAMPLES_PER_VIDEO_FRAME
    if k >= len(wav):
        return np.zeros_like(wav)
    if frames > 0:
        return np.concatenate([np.zeros(k, wav.dtype), wav[:-k]])
    return np.concatenate([wav[k:], np.zeros(k, wav.dtype)])


def fit_length(wav: np.ndarray, n_samples: int) -> np.ndarray:
    """Loop or cut `wav` to exactly n_samples (another clip's audio driving or scored against this video)."""
    if len(wav) == 0:
        return np.zeros(n_samples, np.float32)
    return np.resize(wav, n_samples).astype(np.float32)


# ---- generation ----


@torch.no_grad()
def generate_clip(
    generator: torch.nn.Module,
    frames: list[np.ndarray],
    wav: np.ndarray,
    mel_shift: int,
    device: torch.device,
    batch_size: int,
) -> list[np.ndarray]:
    """Re-generate every frame's lower half from `wav`: masked target + reference from the same clip.

    The reference of frame t is frame (t + n/2) mod n, another moment of the same clip, so the
    generator cannot copy the true mouth (at inference the reference is the frame itself). Frame t
    is driven by the mel window of frame t + mel_shift, clamped to the audio (the training layout),
    moved by the generator's own mel offset (silence before the audio, as at inference).
    """
    from lipsync.client.audio import SILENCE_VALUE, melspectrogram

    faces = [_to_face(f) for f in frames]
    n = len(faces)
    mel = melspectrogram(wav.astype(np.float32))
    offset = getattr(getattr(generator, "config", None), "mel_offset", 0)
    if offset:  # window starts are then indices of this padded array: mel_start(t) + offset in the audio
        mel = np.concatenate([np.full((mel.shape[0], -offset), SILENCE_VALUE, mel.dtype), mel], axis=1)
    last = mel.shape[1] - 16
    out: list[np.ndarray] = []
    for b in range(0, n, batch_size):
        idx = range(b, min(n, b + batch_size))
        face_in, mel_in = [], []
        for t in idx:
            target = faces[t].copy()
            target[MASK_START_ROW:] = 0
            reference = faces[(t + n // 2) % n]
            face_in.append(np.concatenate([target, reference], axis=2).transpose(2, 0, 1))
            s = min(max(mel_start(t + mel_shift), 0), max(last, 0))
            mel_in.append(mel[None, :, s : s + 16])
        x = torch.from_numpy(np.stack(face_in).astype(np.float32) / 255.0).to(device)
        m = torch.from_numpy(np.stack(mel_in).astype(np.float32)).to(device)
        g = generator(m, x).clamp(0, 1).mul(255.0).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out.extend(list(g))
    return out


# ---- expert accuracy ----


@torch.no_grad()
def expert_probabilities(
    expert: torch.nn.Module, dataset: ExpertDataset, device: torch.device, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(sync probabilities, labels) of every sample of a fixed expert dataset."""
    from lipsync.client.networks.syncnet import sync_probability

    probs, labels = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        faces = torch.from_numpy(np.stack([it[0] for it in items])).to(device)
        mel = torch.from_numpy(np.stack([it[1] for it in items])).to(device)
        a, v = expert(mel, faces)
        probs.append(sync_probability(a, v).cpu().numpy())
        labels.append(np.array([it[2][0] for it in items]))
    return np.concatenate(probs), np.concatenate(labels)


def best_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """Threshold (midpoint between sorted probabilities) with the highest accuracy on these samples."""
    values = np.unique(probs)
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    accuracy = [np.mean((probs > c) == (labels > 0.5)) for c in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def accuracy_at(probs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    return float(np.mean((probs > threshold) == (labels > 0.5)))


def expert_accuracy(expert: torch.nn.Module, config: EvaluateConfig, device: torch.device) -> dict[str, Any]:
    """Off-sync detection accuracy: threshold chosen on val, reported on the evaluated split (and at 0.5)."""
    kwargs = {
        "fixed": True,
        "samples_per_clip": config.accuracy_samples,
        "seed": config.seed,
        "min_offset": config.accuracy_min_offset,
    }
    val_p, val_y = expert_probabilities(
        expert, ExpertDataset(config.data_root, "val", **kwargs), device, config.batch_size
    )
    test_p, test_y = expert_probabilities(
        expert, ExpertDataset(config.data_root, config.split, **kwargs), device, config.batch_size
    )
    threshold = best_threshold(val_p, val_y)
    return {
        "threshold_from_val": threshold,
        "accuracy": accuracy_at(test_p, test_y, threshold),
        "accuracy_at_0.5": accuracy_at(test_p, test_y, 0.5),
        "val_accuracy": accuracy_at(val_p, val_y, threshold),
        "samples": int(len(test_y)),
        "positives": int(test_y.sum()),
        "min_negative_offset": config.accuracy_min_offset,
        "mean_prob_in_sync": float(test_p[test_y > 0.5].mean()) if (test_y > 0.5).any() else None,
        "mean_prob_off_sync": float(test_p[test_y < 0.5].mean()) if (test_y < 0.5).any() else None,
    }


# ---- the report ----


def _summary(results: list[LSEResult]) -> dict[str, Any]:
    if not results:
        return {"clips": 0}
    d = np.array([r.lse_d for r in results])
    c = np.array([r.lse_c for r in results])
    offsets = np.array([r.offset for r in results])
    return {
        "clips": len(results),
        "lse_d": float(d.mean()),
        "lse_c": float(c.mean()),
        "lse_d_std": float(d.std()),
        "lse_c_std": float(c.std()),
        "dist_at_zero_offset": float(np.mean([r.dist_at_zero for r in results])),
        "mean_offset": float(offsets.mean()),
        "in_sync_fraction": float(np.mean(np.abs(offsets) <= 1)),
    }


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Score the split's clips under every condition and write report.json and lse.png into out_dir.

    The scorer is syncnet_python's network when `syncnet_v2` weights are given (the paper's metric),
    otherwise the project's expert, whose numbers compare conditions within one report but not
    with the paper's; the report names the scorer.
    """
    device = resolve_device(config.device)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    expert = None
    if config.expert_checkpoint:
        from lipsync.client.networks.syncnet import SyncNet

        expert = SyncNet.from_checkpoint(config.expert_checkpoint, map_location=device).eval()
    scorer: SyncScorer
    if config.syncnet_v2:
        scorer = SyncNetV2Scorer(config.syncnet_v2, device, config.batch_size)
    else:
        assert expert is not None  # EvaluateConfig guarantees one of the two
        scorer = ExpertScorer(expert, device, config.batch_size, config.expert_checkpoint)
    generator, mel_shift = _load_generator(config, device)

    clips = load_clips(config.data_root, config.split)
    if config.max_clips:
        clips = clips[: config.max_clips]
    loaded = [c for c in (load_eval_clip(clip) for clip in clips) if c is not None]
    if not loaded:
        raise ValueError(f"no readable clips in split {config.split!r} of {config.data_root}")

    conditions: dict[str, list[LSEResult]] = {}
    per_clip: list[dict[str, Any]] = []
    from tqdm.auto import tqdm

    for k, clip in enumerate(tqdm(loaded, desc=f"evaluate {config.split}", dynamic_ncols=True)):
        n = window_count(len(clip.frames), len(clip.wav))  # every audio below has the clip's own length
        if n == 0:
            continue
        other = loaded[(k + 1) % len(loaded)] if len(loaded) > 1 else None
        audios = {"": clip.wav, **{f"_shift_{s:+d}": shift_audio(clip.wav, s) for s in config.shifts}}
        if other is not None:
            audios["_mismatched_audio"] = fit_length(other.wav, len(clip.wav))
        audio_feats = {key: scorer.audio_features(wav, n) for key, wav in audios.items()}
        runs = {"real": scorer.video_features(clip.frames, n)}
        if generator is not None:
            generated = generate_clip(generator, clip.frames, clip.wav, mel_shift, device, config.batch_size)
            runs["generated"] = scorer.video_features(generated, n)
        row: dict[str, Any] = {"clip": clip.name, "frames": len(clip.frames)}
        results = {f"{kind}{key}": (video, audio) for kind, video in runs.items() for key, audio in audio_feats.items()}
        if generator is not None and other is not None:
            # Dubbing, the paper's use case: generated from another clip's audio, scored against that audio.
            dubbed = generate_clip(
                generator, clip.frames, audios["_mismatched_audio"], mel_shift, device, config.batch_size
            )
            results["dubbed"] = (scorer.video_features(dubbed, n), audio_feats["_mismatched_audio"])
        for name, (video, audio) in results.items():
            result = lse_scores(video, audio, config.vshift)
            conditions.setdefault(name, []).append(result)
            row[name] = {"lse_d": result.lse_d, "lse_c": result.lse_c, "offset": result.offset}
        per_clip.append(row)

    report: dict[str, Any] = {
        "scorer": scorer.name,
        "scorer_description": scorer.description,
        "split": config.split,
        "vshift": config.vshift,
        "generator": config.generator_checkpoint or None,
        "generator_mel_shift": mel_shift if generator is not None else None,
        "conditions": {name: _summary(results) for name, results in conditions.items()},
        "offset_sign": "syncnet_python's: offset = vshift - argmin; audio delayed by N frames gives -N",
        "config": dataclasses.asdict(config),
        "per_clip": per_clip,
    }
    if expert is not None:
        report["expert_accuracy"] = expert_accuracy(expert, config, device)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, out / "lse.png")
    return report


def _load_generator(config: EvaluateConfig, device: torch.device) -> tuple[torch.nn.Module | None, int]:
    if not config.generator_checkpoint:
        return None, config.mel_shift if config.mel_shift is not None else -1
    from lipsync.client.networks.checkpoints import CheckpointError, load_checkpoint
    from lipsync.client.networks.wav2lip import Wav2Lip

    generator = Wav2Lip.from_checkpoint(config.generator_checkpoint, map_location=device).eval()
    if config.mel_shift is not None:
        return generator, config.mel_shift
    try:
        train_config = (load_checkpoint(config.generator_checkpoint).get("extra") or {}).get("train_config") or {}
    except CheckpointError:  # a released file: trained with the original's -1 shift
        train_config = {}
    return generator, int(train_config.get("mel_shift", -1))


_COLORS = {"real": "tab:green", "generated": "tab:blue", "dubbed": "tab:cyan"}


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Bar chart of mean LSE-D and LSE-C per condition (error bars: std over clips)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, s in report["conditions"].items() if s.get("clips")]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(names) + 4), 4.2))
    for ax, key, title in (
        (axes[0], "lse_d", "LSE-D (lower is better)"),
        (axes[1], "lse_c", "LSE-C (higher is better)"),
    ):
        values = [report["conditions"][n][key] for n in names]
        errors = [report["conditions"][n][f"{key}_std"] for n in names]
        colors = [_COLORS.get(n, "tab:gray") for n in names]
        ax.bar(range(len(names)), values, yerr=errors, color=colors, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
    fig.suptitle(f"{report['split']} split, scored by {report['scorer']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
