"""Offline face detection and tracking for live video: BlazeFace every N frames, optical flow in between.

Nothing is downloaded: mediapipe 0.10.21 ships the BlazeFace graphs and .tflite files inside the
wheel. A frame without a face gives None (the caller passes it through); it never raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in frame pixels (x2, y2 exclusive) with the detector's confidence."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def as_int(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) rounded to the nearest pixel (the original truncated, which biases boxes up-left)."""
        return (round(self.x1), round(self.y1), round(self.x2), round(self.y2))

    def clipped(self, w: int, h: int) -> FaceBox:
        """This box limited to a w x h frame; may be empty (zero width or height) if it lies outside."""
        x1 = min(max(self.x1, 0.0), float(w))
        y1 = min(max(self.y1, 0.0), float(h))
        x2 = min(max(self.x2, x1), float(w))
        y2 = min(max(self.y2, y1), float(h))
        return FaceBox(x1, y1, x2, y2, self.score)

    def iou(self, other: FaceBox) -> float:
        """Intersection over union with another box (0 when either is empty)."""
        iw = min(self.x2, other.x2) - max(self.x1, other.x1)
        ih = min(self.y2, other.y2) - max(self.y1, other.y1)
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        return inter / (self.area + other.area - inter)

    @classmethod
    def from_center(cls, cx: float, cy: float, w: float, h: float, score: float = 1.0) -> FaceBox:
        return cls(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0, score)
