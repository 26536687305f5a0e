"""The shipped weights on speakers they never saw: a fresh synthetic corpus (another seed, so other
identities, voices and sentences) scored by the shipped expert and run through the shipped generator.

These check what the model card claims, loosely enough to hold for any reasonable retraining and
tightly enough to fail for an untrained network (an expert at chance has an AUC near 0.5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.client.backends import DEFAULT_CHECKPOINT
from lipsync.client.networks.syncnet import SyncNet, sync_probability
from lipsync.training import cli
from lipsync.training.data.lrs2 import SYNC_T, compute_mel, frames_to_expert_input, load_clips, mel_window, read_frame

SHIPPED_EXPERT = DEFAULT_CHECKPOINT.parent / "expert_cpu.pt"
UNSEEN_SEED = 20261122  # the shipped models were trained on seed 0's population


@pytest.fixture(scope="module")
def unseen_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unseen") / "corpus"
    args = ["corpus", "--out", str(root), "--clips", "8", "--seed", str(UNSEEN_SEED), "--split", "0.5,0.25,0.25"]
    code = cli.main([*args, "--min-seconds", "2.5", "--max-seconds", "3.5", "--workers", "1", "--no-progress"])
    if code == 3:
        pytest.skip("espeak-ng is not available to the synthetic corpus")
    assert code == 0
    return root


def _auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Probability that a random aligned window scores above a random shifted one (ties count half)."""
    diff = positives[:, None] - negatives[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


@pytest.mark.slow
def test_shipped_expert_tells_aligned_from_shifted_audio_on_unseen_speakers(unseen_corpus: Path) -> None:
    expert = SyncNet.from_checkpoint(SHIPPED_EXPERT)
    clips = [c for split in ("train", "val", "test") for c in load_clips(unseen_corpus, split)]
    faces, mels, labels = [], [], []
    for clip in clips:
        mel = compute_mel(clip.audio_path)
        frames = {i: read_frame(clip.frame_path(i)) for i in clip.frames}
        starts = [s for s in clip.starts if mel_window(mel, s) is not None]
        for audio_start in starts[::3]:
            # aligned, and the same audio against video 5 or more frames away (past the 5-frame window)
            shifted = [s for s in starts if abs(s - audio_start) >= SYNC_T]
            if not shifted:
                continue
            video_other = shifted[len(shifted) // 2]
            for video_start, label in ((audio_start, 1.0), (video_other, 0.0)):
                faces.append(frames_to_expert_input([frames[video_start + t] for t in range(SYNC_T)]))
                mels.append(mel_window(mel, audio_start))
                labels.append(label)
    labels = np.array(labels)
    assert (labels == 1).sum() >= 40, "too few windows to judge the expert"
    with torch.no_grad():
        audio_emb, face_emb = expert(torch.from_numpy(np.stack(mels)), torch.from_numpy(np.stack(faces)))
    prob = sync_probability(audio_emb, face_emb).numpy()
    auc = _auc(prob[labels == 1], prob[labels == 0])
    print(f"shipped expert on unseen speakers: AUC {auc:.3f} over {len(labels)} windows")
    assert auc > 0.7, f"shipped expert AUC {auc:.3f} on unseen speakers (0.5 = chance)"


@pytest.mark.slow
def test_shipped_generator_lips_follow_their_own_audio_on_unseen_speakers(unseen_corpus: Path) -> None:
    from lipsync.client.networks.wav2lip import Wav2Lip
    from lipsync.training.evaluate import ExpertScorer, fit_length, generate_clip, load_eval_clip
    from lipsync.training.lse import lse_scores, window_count

    generator = Wav2Lip.from_checkpoint(DEFAULT_CHECKPOINT)
    mel_shift = 0  # the shipped generator is trained for live inference's alignment
    scorer = ExpertScorer(SyncNet.from_checkpoint(SHIPPED_EXPERT), torch.device("cpu"), 32, "shipped")
    clips = [c for split in ("train", "val", "test") for c in load_clips(unseen_corpus, split)]
    loaded = [c for c in map(load_eval_clip, clips) if c is not None]
    own, other, upper_errors = [], [], []
    for k, clip in enumerate(loaded):
        n = window_count(len(clip.frames), len(clip.wav))
        generated = generate_clip(generator, clip.frames, clip.wav, mel_shift, torch.device("cpu"), 32)
        # the upper half comes from the input frame, so it must be reproduced closely
        diff = np.stack(generated).astype(np.float32) - np.stack(clip.frames).astype(np.float32)
        upper_errors.append(float(np.abs(diff[:, :48]).mean()) / 255.0)
        video = scorer.video_features(generated, n)
        foreign = fit_length(loaded[(k + 1) % len(loaded)].wav, len(clip.wav))
        own.append(lse_scores(video, scorer.audio_features(clip.wav, n)).dist_at_zero)
        other.append(lse_scores(video, scorer.audio_features(foreign, n)).dist_at_zero)
    assert max(upper_errors) < 0.1, f"upper-half mean abs error {max(upper_errors):.3f} (0..1 scale)"
    own_d, other_d = float(np.mean(own)), float(np.mean(other))
    print(
        f"generated: distance {own_d:.3f} with its audio, {other_d:.3f} with another's; upper L1 {max(upper_errors):.3f}"
    )
    assert own_d < other_d - 0.03, f"expert distance with the driving audio {own_d:.3f} vs another clip's {other_d:.3f}"
