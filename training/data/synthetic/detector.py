"""Face boxes and crops, made the way the preprocessing of real video makes them.

`training.data.preprocess` runs the project's face tracker (client.face_tracking: BlazeFace on every
frame, One-Euro smoothing) and crops the box padded by client.face_crop's DEFAULT_PADS. The corpus
does the same on its rendered frames, so the crops the model trains on are framed like real ones.
Where the tracker finds no face, the renderer's own box stands in, calibrated to BlazeFace's
convention (`to_detector_convention`); `mode="render"` uses the renderer's boxes only (no mediapipe).
"""

from __future__ import annotations

import cv2
import numpy as np

from lipsync.client import contract
from lipsync.client.face_crop import DEFAULT_PADS, crop_face, pad_box
from lipsync.client.face_tracking import FaceBox, FaceTracker, TrackerConfig

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels

# training.data.preprocess.preprocess_video's tracker: detect on every frame, no hold-over, its
# default smoothing.
TRACKER_SMOOTHING = 0.8

# Where BlazeFace's box sits relative to the renderer's landmark box (brow - 0.28 head widths ..
# chin, cheek to cheek), as fractions of that box's width and height (x1, y1, x2, y2): the mean
# over 300 rendered frames, measured with `python -m lipsync.training.data.synthetic.calibrate`.
CALIBRATION = (-0.04, 0.0, 0.06, 0.047)


def to_detector_convention(box: Box) -> FaceBox:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    c = CALIBRATION
    return FaceBox(x1 + c[0] * w, y1 + c[1] * h, x2 + c[2] * w, y2 + c[3] * h)


class ClipBoxes:
    """Face boxes for the frames of one clip, in order: the tracker's, or the renderer's where it has none."""

    def __init__(self, mode: str = "detector", fps: float = 25.0) -> None:
        if mode not in ("detector", "render"):
            raise ValueError(f"box mode must be 'detector' or 'render', got {mode!r}")
        self.source = "lipsync.client.face_tracking" if mode == "detector" else "render"
        self.tracker = None
        if mode == "detector":
            self.tracker = FaceTracker(
                config=TrackerConfig(detect_every=1, max_missed=0, smoothing=TRACKER_SMOOTHING, fps=fps)
            )

    def start_clip(self) -> None:
        if self.tracker is not None:
            self.tracker.reset()

    def box(self, frame: np.ndarray, rendered: Box, timestamp_s: float) -> tuple[FaceBox, bool]:
        """(box, detected) for one frame; `rendered` is the renderer's own box for it."""
        if self.tracker is not None:
            found = self.tracker.update(frame, timestamp_s=timestamp_s)
            if found is not None:
                return found, True
        return to_detector_convention(rendered), False

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


def face_crop(frame: np.ndarray, box: FaceBox, size: int = contract.FACE_SIZE) -> np.ndarray:
    """The padded box's pixels at size x size, exactly as the preprocessing crops (for size 96)."""
    region = pad_box(box, frame.shape, DEFAULT_PADS)
    if size == contract.FACE_SIZE:
        return crop_face(frame, region)
    face = frame[region.y1 : region.y2, region.x1 : region.x2]
    shrinking = region.width >= size and region.height >= size
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
