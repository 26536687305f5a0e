"""One video's paste-back: the chosen blend mode, and for "mouth" the landmarks that place the mask.

Offline and live use the same object, one per video or session, called in frame order from one
thread at a time. The face mesh costs about 4 ms on this project's 2-core CPU, so the live path
measures it every `landmark_every` frames and reuses the mouth shape in between: the shape is
stored relative to the tracked crop region, which follows the face on every frame. A still image
is measured once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lipsync.client.blend import BLEND_MODES, blend_face, blend_mouth
from lipsync.client.face_crop import CropRegion
from lipsync.client.mouth_mask import DEFAULT_SHAPE, MouthShape

logger = logging.getLogger(__name__)


@dataclass
class CompositorStats:
    frames: int = 0
    landmark_runs: int = 0
    landmark_misses: int = 0  # the mesh found no face: the previous or the default shape was used
    default_shape_frames: int = 0


class Compositor:
    """Pastes generated faces into frames; `mode` is "mouth" (default) or "lower_face"."""

    def __init__(
        self, mode: str = "mouth", *, still: bool = False, landmark_every: int = 1, colour_match: bool = True
    ) -> None:
        if mode not in BLEND_MODES:
            raise ValueError(f"blend mode must be one of {list(BLEND_MODES)}, got {mode!r}")
        if landmark_every < 1:
            raise ValueError(f"landmark_every must be >= 1, got {landmark_every}")
        self.mode = mode
        self.still = still
        self.landmark_every = landmark_every
        self.colour_match = colour_match
        self.stats = CompositorStats()
        self._landmarker = None
        self._shape: MouthShape | None = None
        self.last_shape: MouthShape | None = None  # the shape the latest mouth compose used
        self._since_measure = 0
        if mode == "mouth":
            from lipsync.client.face_landmarks import FaceLandmarker

            self._landmarker = FaceLandmarker(video=not still)

    def mouth_shape(self, frame: np.ndarray, region: CropRegion) -> MouthShape:
        """The mouth support for this frame: measured now, or the last measured one, or DEFAULT_SHAPE."""
        due = self._shape is None or (not self.still and self._since_measure >= self.landmark_every)
        if due and self._landmarker is not None:
            self._since_measure = 0
            self.stats.landmark_runs += 1
            landmarks = self._landmarker.locate(frame, region)
            if landmarks is None:
                self.stats.landmark_misses += 1
            else:
                try:
                    self._shape = MouthShape.from_face_landmarks(landmarks, region)
                except ValueError as exc:  # a degenerate mesh: keep the last good shape
                    self.stats.landmark_misses += 1
                    logger.debug("unusable landmarks: %s", exc)
        self._since_measure += 1
        if self._shape is None:
            self.stats.default_shape_frames += 1
            return DEFAULT_SHAPE
        return self._shape

    def compose(self, frame: np.ndarray, generated: np.ndarray, region: CropRegion) -> np.ndarray:
        """frame with the generated (3, 96, 96) face pasted into region; frame itself is not changed."""
        self.stats.frames += 1
        if self.mode == "lower_face":
            return blend_face(frame, generated, region)
        shape = self.last_shape = self.mouth_shape(frame, region)
        return blend_mouth(frame, generated, region, shape, colour_match=self.colour_match)

    def reset(self) -> None:
        """Forget the measured shape (a new shot, or a looped clip starting again)."""
        self._shape = None
        self._since_measure = 0

    def new_video(self) -> None:
        """Start over for another video (another session): the shape, the counters and the mesh's tracking."""
        self.reset()
        self.stats = CompositorStats()
        if self._landmarker is not None:
            self._landmarker.new_video()

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> Compositor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
