"""Faces for virtual presenter sessions: a still picture or a looping clip on the server, no camera.

The clip plays forward then backward (ping-pong), so the loop has no jump at its seam.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from lipsync.client.video_io import VideoDecodeCounts, decode_bgr_frames

logger = logging.getLogger(__name__)

MAX_CLIP_FRAMES = 750  # 30 s at 25 fps held in memory


class PresenterError(ValueError):
    """The presenter image or clip cannot be used; the message names the file and why."""


class PresenterSource:
    """Frame i of the presenter's video, BGR uint8."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        if not frames:
            raise PresenterError("a presenter needs at least one frame")
        shapes = {f.shape for f in frames}
        if len(shapes) != 1 or frames[0].ndim != 3 or frames[0].shape[2] != 3:
            raise PresenterError(f"presenter frames must be equal-sized BGR pictures, got shapes {sorted(shapes)}")
        for f in frames:
            f.setflags(write=False)
        self._frames = frames
        # Ping-pong order: 0..n-1, n-2..1
        n = len(frames)
        self._order = list(range(n)) + list(range(n - 2, 0, -1)) if n > 2 else list(range(n))

    @property
    def size(self) -> tuple[int, int]:
        h, w = self._frames[0].shape[:2]
        return w, h

    def frame(self, index: int) -> np.ndarray:
        return self._frames[self._order[index % len(self._order)]]

    @classmethod
    def from_image(cls, path: str | Path) -> PresenterSource:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise PresenterError(f"{path}: not a readable image")
        return cls([_even(image)])

    @classmethod
    def from_clip(cls, path: str | Path, max_frames: int = MAX_CLIP_FRAMES) -> PresenterSource:
        import av

        frames = []
        counts = VideoDecodeCounts()
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                for image, _ in decode_bgr_frames(container, stream, Path(path), counts):
                    frames.append(_even(image))
                    if len(frames) >= max_frames:
                        logger.info("%s: using the first %d frames as the loop", path, max_frames)
                        break
        except (av.error.FFmpegError, IndexError) as exc:
            raise PresenterError(f"{path}: cannot decode a video stream ({exc})") from exc
        if not frames:
            raise PresenterError(
                f"{path}: cannot decode a video stream ({counts.corrupt_packets} corrupt packets, no frame)"
            )
        return cls(frames)


def _even(image: np.ndarray) -> np.ndarray:
    """Crop to even width and height (the video encoder's 4:2:0 needs them)."""
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[: h - h % 2, : w - w % 2])
