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

from client.backends import DEFAULT_CHECKPOINT
from training import cli
from training.data.lrs2 import SYNC_T, frames_to_expert_input, load_clips, mel_window, read_frame
from training.data.lrs2 import compute_mel as clip_mel
from training.networks.syncnet import SyncNet, sync_probability

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
        mel = clip_mel(clip.audio_path)
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
    assert auc > 0.7, f"shipped expert AUC {auc:.3f} on unseen speakers (0.5 = chance)"
