"""Training windows of one person's recording: the generator's samples, with the reference window chosen to
show a different mouth than the target where the recording allows.

With a random reference from the same short recording, the reference mouth is often close to the
target's, and L1 then teaches the network to copy it: the avatar reconstructs its own speech well
and barely moves its lips for new speech. Taking the reference from the other side of the
loudness median (a closed mouth for a spoken target, an open one for a pause) makes copying cost
what it costs at inference, where the reference is the current frame and the speech is new.
"""

from __future__ import annotations

import numpy as np

from lipsync.client.contract import MEL_WINDOW_FRAMES
from lipsync.training.data.lrs2 import Clip, GeneratorDataset, mel_start

# One clip holds the whole training part: draws are told apart by this many indices per epoch
# (with the default of 1 sample per clip, every window of a batch would be the same draw).
SAMPLES_PER_EPOCH = 4096


class PersonDataset(GeneratorDataset):
    def __init__(self, root, split: str, *, contrast: float = 0.7, **kwargs) -> None:
        super().__init__(root, split, samples_per_clip=SAMPLES_PER_EPOCH, **kwargs)
        if not 0.0 <= contrast <= 1.0:
            raise ValueError(f"contrast must be in [0, 1], got {contrast}")
        self.contrast = contrast
        self._loud: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _loudness(self, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
        """(starts, mean mel level of each start's window): the speech level a window's mouth shows."""
        if clip.name not in self._loud:
            mel = self.mels.get(clip.audio_path)
            starts = np.array(clip.starts)
            level = np.array(
                [
                    float(mel[:, mel_start(s) : mel_start(s) + MEL_WINDOW_FRAMES].mean())
                    if mel_start(s) < mel.shape[1]
                    else -4.0
                    for s in starts
                ]
            )
            self._loud[clip.name] = (starts, level)
        return self._loud[clip.name]

    def _sample(self, clip: Clip, rng: np.random.Generator):
        if rng.random() >= self.contrast:
            return super()._sample(clip, rng)
        starts, level = self._loudness(clip)
        pick = int(rng.integers(len(starts)))
        median = float(np.median(level))
        others = starts[(level < median) if level[pick] >= median else (level >= median)]
        if len(others) == 0:
            return super()._sample(clip, rng)
        return self.window_pair(clip, int(starts[pick]), int(rng.choice(others)))
