"""Datasets over the preprocessed LRS2 layout (`<root>/<group>/<clip>/{i}.jpg` + `audio.wav`, `<root>/filelists/`)."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from lipsync.client.contract import FACE_SIZE, MASK_START_ROW, MEL_FRAMES_PER_SECOND, MEL_WINDOW_FRAMES

logger = logging.getLogger(__name__)

FPS = 25  # the corpus frame rate (hparams.fps); preprocessing resamples every video to it
SYNC_T = 5  # frames per window (syncnet_T)
SPLITS = ("train", "val", "test")
_MAX_TRIES = 32


class CorpusError(ValueError):
    """The corpus on disk does not have the expected layout; the message names the path."""


def mel_start(frame: int, fps: int = FPS) -> int:
    """First mel column of a frame's window (`crop_audio_window`: int(80 * frame / fps))."""
    return int(MEL_FRAMES_PER_SECOND * frame / fps)


def read_filelist(root: str | Path, split: str) -> list[str]:
    """Clip paths relative to `root` from `filelists/<split>.txt` (first token of each line, as the original)."""
    path = Path(root) / "filelists" / f"{split}.txt"
    if not path.is_file():
        raise CorpusError(f"filelist {path} does not exist (expected <root>/filelists/{{train,val,test}}.txt)")
    names = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts:
            names.append(parts[0])
    return names


@dataclass(frozen=True)
class Clip:
    """One clip folder: its numbered frames (sorted), and the window starts whose 5 frames all exist."""

    name: str
    path: Path
    frames: tuple[int, ...]
    starts: tuple[int, ...]

    @property
    def audio_path(self) -> Path:
        return self.path / "audio.wav"

    def frame_path(self, i: int) -> Path:
        return self.path / f"{i}.jpg"


def scan_clip(root: Path, name: str) -> Clip:
    """List a clip's numbered jpgs; window starts skip numbering gaps (frames without a detected face)."""
    path = root / name
    frames = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                stem, dot, ext = entry.name.partition(".")
                if dot and ext == "jpg" and stem.isdigit():
                    frames.append(int(stem))
    except OSError as exc:
        raise CorpusError(f"clip folder {path} is not readable: {exc}") from exc
    frames.sort()
    present = set(frames)
    starts = tuple(f for f in frames if all(f + k in present for k in range(1, SYNC_T)))
    return Clip(name, path, tuple(frames), starts)


def load_clips(root: str | Path, split: str, min_frames: int = 3 * SYNC_T + 1) -> list[Clip]:
    """The clips of a split with audio and more than 15 frames (`len > 3 * syncnet_T`), in filelist order."""
    root = Path(root)
    clips = []
    for name in read_filelist(root, split):
        clip = scan_clip(root, name)
        if len(clip.frames) >= min_frames and clip.starts and clip.audio_path.is_file():
            clips.append(clip)
    if not clips:
        raise CorpusError(f"no usable clips in split {split!r} of {root} (each needs audio.wav and >15 frames)")
    return clips


def read_frame(path: Path) -> np.ndarray | None:
    """A face crop as BGR uint8 at 96x96 (cv2, like the original), or None when unreadable."""
    img = cv2.imread(str(path))
    if img is None:
        return None
    if img.shape[:2] != (FACE_SIZE, FACE_SIZE):
        img = cv2.resize(img, (FACE_SIZE, FACE_SIZE))
    return img


def compute_mel(audio_path: Path) -> np.ndarray:
    """(80, T) float32 mel spectrogram of a clip's audio, the generator's own audio front end."""
    from lipsync.client.audio import load_audio, melspectrogram

    return np.ascontiguousarray(melspectrogram(load_audio(audio_path)), dtype=np.float32)


class MelCache:
    """Per-process LRU cache of clip mels, bounded in bytes (a DataLoader worker gets its own copy)."""

    def __init__(self, max_mb: int) -> None:
        self.max_bytes = max_mb * 1024 * 1024
        self._items: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.misses = 0

    def get(self, audio_path: Path) -> np.ndarray:
        mel = self._items.get(audio_path)
        if mel is not None:
            self._items.move_to_end(audio_path)
            return mel
        self.misses += 1
        mel = compute_mel(audio_path)
        if mel.nbytes <= self.max_bytes:
            self._items[audio_path] = mel
            self._bytes += mel.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return mel


def mel_window(mel: np.ndarray, frame: int, mel_offset: int = 0) -> np.ndarray | None:
    """(1, 80, 16) window of `frame`, starting `mel_offset` columns from the frame's own (contract.lookahead_ms),
    or None when it does not fit (a rejected sample in the original)."""
    start = mel_start(frame) + mel_offset
    if start < 0 or start + MEL_WINDOW_FRAMES > mel.shape[1]:
        return None
    return mel[None, :, start : start + MEL_WINDOW_FRAMES]


def frames_to_expert_input(frames: list[np.ndarray]) -> np.ndarray:
    """5 BGR uint8 frames -> (15, 48, 96) float32 in [0, 1]: frame-major channels, rows 48: only."""
    window = np.concatenate(frames, axis=2).transpose(2, 0, 1)  # (15, 96, 96), f0 B,G,R, f1 B,G,R, ...
    return window[:, MASK_START_ROW:].astype(np.float32) / 255.0


def frames_to_window(frames: list[np.ndarray]) -> np.ndarray:
    """5 BGR uint8 frames -> (3, 5, 96, 96) float32 in [0, 1]."""
    return np.stack(frames).transpose(3, 0, 1, 2).astype(np.float32) / 255.0


class _ClipDataset(Dataset):
    """Clip list, per-sample RNG, mel cache and window reading shared by both datasets.

    Windows follow the original training code (reference 3.4, 4.4, 5.3): 5 consecutive numbered
    frames (a window across a numbering gap is rejected) and mel windows of 16 columns (200 ms)
    from `int(80 * frame / 25)`. Unlike the original, a sample is a pure function of (seed, epoch,
    index) and each clip's mel is computed once per worker.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        seed: int = 0,
        samples_per_clip: int = 1,
        mel_cache_mb: int = 512,
        fixed: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.clips = load_clips(self.root, split)
        self.seed = seed
        self.samples_per_clip = samples_per_clip
        self.fixed = fixed  # evaluation sets: the same samples every epoch
        self.mels = MelCache(mel_cache_mb)

    def __len__(self) -> int:
        return len(self.clips) * self.samples_per_clip

    def _read_window(self, clip: Clip, start: int) -> list[np.ndarray] | None:
        frames = []
        for i in range(start, start + SYNC_T):
            img = read_frame(clip.frame_path(i))
            if img is None:
                logger.warning("unreadable frame %s", clip.frame_path(i))
                return None
            frames.append(img)
        return frames

    def _sample(self, clip: Clip, rng: np.random.Generator) -> tuple[np.ndarray, ...] | None:
        """One sample drawn from `clip` with `rng`, or None when the draw does not fit (drawn again)."""
        raise NotImplementedError

    def __getitem__(self, key: int):
        """Sample `key % len(self)` of epoch `key // len(self)`: keys past the length select later epochs' draws."""
        epoch, index = divmod(int(key), len(self))
        if self.fixed:
            epoch = 0
        # Like the original, a sample that does not fit (window past the audio, unreadable frame) is
        # drawn again; here from the same clip first, then from the following clips.
        n = len(self.clips)
        for attempt in range(_MAX_TRIES):
            clip = self.clips[(index // self.samples_per_clip + attempt // 4) % n]
            sample = self._sample(clip, np.random.default_rng([self.seed, epoch, index, attempt]))
            if sample is not None:
                return sample
        raise CorpusError(
            f"no valid sample for index {index} in split {self.split!r} of {self.root} after {_MAX_TRIES} tries"
        )


class ExpertDataset(_ClipDataset):
    """Expert samples: (faces (15,48,96), mel (1,80,16), y (1,)) with y=1 aligned, y=0 shifted by >= min_offset frames.

    As in the original, the audio is always that of the first window and a negative takes its
    frames from another window of the same clip, so the identity cannot give the answer away.
    """

    def __init__(self, root: str | Path, split: str, *, min_offset: int = 1, **kwargs) -> None:
        super().__init__(root, split, **kwargs)
        if min_offset < 1:
            raise ValueError(f"min_offset must be >= 1, got {min_offset}")
        self.min_offset = min_offset

    def _sample(self, clip: Clip, rng: np.random.Generator) -> tuple[np.ndarray, ...] | None:
        mel = self.mels.get(clip.audio_path)
        audio_frame = int(rng.choice(clip.starts))
        audio = mel_window(mel, audio_frame)
        if audio is None:
            return None
        positive = bool(rng.random() < 0.5)
        if positive:
            video_frame = audio_frame
        else:
            others = [s for s in clip.starts if abs(s - audio_frame) >= self.min_offset]
            if not others:
                return None
            video_frame = int(rng.choice(others))
        frames = self._read_window(clip, video_frame)
        if frames is None:
            return None
        y = np.array([1.0 if positive else 0.0], dtype=np.float32)
        return frames_to_expert_input(frames), np.ascontiguousarray(audio, dtype=np.float32), y


class GeneratorDataset(_ClipDataset):
    """Generator samples (reference 5.3): x (6,5,96,96), indiv_mels (5,1,80,16), mel (1,80,16), gt (3,5,96,96).

    x is [target window with rows 48: zeroed, reference window]: the reference is another window
    of the same clip. Frame f0+t gets the mel window of frame f0+t+mel_shift (-1 in the original's
    `get_segmented_mels`), moved by `mel_offset` columns (a low-look-ahead model); `mel` is the
    window of f0 as the expert was trained on it (offset 0), for the sync loss: the generator hears
    earlier audio, but its mouths must be in sync with the audio at their own time.
    """

    def __init__(self, root: str | Path, split: str, *, mel_shift: int = -1, mel_offset: int = 0, **kwargs) -> None:
        super().__init__(root, split, **kwargs)
        self.mel_shift = mel_shift
        self.mel_offset = mel_offset

    def _sample(self, clip: Clip, rng: np.random.Generator) -> tuple[np.ndarray, ...] | None:
        start = int(rng.choice(clip.starts))
        others = [s for s in clip.starts if s != start]
        if not others:
            return None
        return self.window_pair(clip, start, int(rng.choice(others)))

    def window_pair(self, clip: Clip, start: int, ref_start: int) -> tuple[np.ndarray, ...] | None:
        """The sample of target window `start` with reference window `ref_start`, or None when it does not fit."""
        mel = self.mels.get(clip.audio_path)
        sync_mel = mel_window(mel, start)
        indiv = [mel_window(mel, start + t + self.mel_shift, self.mel_offset) for t in range(SYNC_T)]
        if sync_mel is None or any(m is None for m in indiv):
            return None
        target = self._read_window(clip, start)
        reference = self._read_window(clip, ref_start)
        if target is None or reference is None:
            return None
        gt = frames_to_window(target)
        masked = gt.copy()
        masked[:, :, MASK_START_ROW:] = 0.0
        x = np.concatenate([masked, frames_to_window(reference)], axis=0)
        indiv_mels = np.stack(indiv).astype(np.float32)  # (5, 1, 80, 16)
        return x, indiv_mels, np.ascontiguousarray(sync_mel, dtype=np.float32), gt
