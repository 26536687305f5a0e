"""The corpus generator's settings (light to import: the command line reads its defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lipsync.client import contract

from .text import LANGUAGES


@dataclass(frozen=True)
class CorpusConfig:
    root: str
    clips: int = 1000
    seed: int = 0
    identities: int = 400
    fps: int = 25
    frame_size: int = 256  # the rendered full frame is square, this many pixels
    crop_size: int = contract.FACE_SIZE  # saved face crops, like the preprocessing of real video
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    split: tuple[float, float, float] = (0.9, 0.05, 0.05)  # identities, voices and clips per split
    languages: tuple[str, ...] = tuple(LANGUAGES)
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    boxes: str = "detector"  # detector: the project's face tracker, as for real video; render: the renderer's boxes
    crop_jpeg_quality: int = 95
    style: str = "photo"  # renderer.STYLES: photo (the default since the real-faces work) or cartoon

    def __post_init__(self) -> None:
        if self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")
        if self.identities < 3:
            raise ValueError(f"identities must be >= 3 (one per split), got {self.identities}")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"split must be three non-negative fractions summing to 1, got {self.split}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")
        if self.max_seconds * self.fps < 5:
            raise ValueError("clips must hold at least 5 frames (the sync window)")
        unknown = set(self.languages) - set(LANGUAGES)
        if unknown or not self.languages:
            raise ValueError(f"unknown languages {sorted(unknown)}; choose from {sorted(LANGUAGES)}")
        if self.boxes not in ("detector", "render"):
            raise ValueError(f"boxes must be 'detector' or 'render', got {self.boxes!r}")
        if self.style not in ("photo", "cartoon"):
            raise ValueError(f"style must be 'photo' or 'cartoon', got {self.style!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.frame_size < 96 or self.crop_size < 32:
            raise ValueError(f"frame_size >= 96 and crop_size >= 32 needed, got {self.frame_size}, {self.crop_size}")
