"""Face boxes for the crops, found the way the real pipeline finds them.

The preprocessing of real video crops the box of a face detector (BlazeFace through
`client.face_tracking`), so the corpus crops its rendered frames with the same detector when it can:
`client.face_tracking.MediaPipeFaceDetector` when that module exists, else mediapipe's BlazeFace
directly (the same short-range model), else none. A frame the detector misses falls back to the
renderer's own box, calibrated to BlazeFace's convention (`to_detector_convention`).
"""

from __future__ import annotations

import logging
from typing import Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

# How BlazeFace's box sits relative to the renderer's landmark box (brow-0.28a .. chin, cheek to
# cheek), as fractions of that box's width/height; measured on 600 rendered frames
# (see tests/unit/test_synthetic_corpus.py::test_detector_finds_rendered_faces).
_CALIBRATION = (-0.05, 0.0, 0.05, 0.045)


def to_detector_convention(box: Box) -> Box:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    c = _CALIBRATION
    return (x1 + c[0] * w, y1 + c[1] * h, x2 + c[2] * w, y2 + c[3] * h)


class FaceDetector(Protocol):
    name: str

    def detect(self, frame_bgr: np.ndarray) -> Box | None: ...


def _as_xyxy(found: object, width: int, height: int) -> Box:
    """Read a box from whatever client.face_tracking returns (attributes or a 4-sequence)."""
    for names in (("x1", "y1", "x2", "y2"), ("left", "top", "right", "bottom"), ("xmin", "ymin", "xmax", "ymax")):
        if all(hasattr(found, n) for n in names):
            vals = [float(getattr(found, n)) for n in names]
            break
    else:
        for names in (("x", "y", "w", "h"), ("x", "y", "width", "height")):
            if all(hasattr(found, n) for n in names):
                x, y, w, h = (float(getattr(found, n)) for n in names)
                vals = [x, y, x + w, y + h]
                break
        else:
            vals = [float(v) for v in found]  # type: ignore[union-attr]
    if max(abs(v) for v in vals) <= 1.5:  # relative coordinates
        vals = [vals[0] * width, vals[1] * height, vals[2] * width, vals[3] * height]
    return (vals[0], vals[1], vals[2], vals[3])


class ClientDetector:
    """The project's own tracker-side detector (client.face_tracking)."""

    name = "client.face_tracking"

    def __init__(self) -> None:
        from client.face_tracking import MediaPipeFaceDetector

        self._det = MediaPipeFaceDetector()

    def detect(self, frame_bgr: np.ndarray) -> Box | None:
        found = self._det.detect(frame_bgr)
        if found is None:
            return None
        return _as_xyxy(found, frame_bgr.shape[1], frame_bgr.shape[0])


class BlazeFaceDetector:
    """mediapipe's short-range BlazeFace, bundled with mediapipe 0.10 (runs offline)."""

    name = "mediapipe.blazeface"

    def __init__(self, min_confidence: float = 0.5, model_selection: int = 0) -> None:
        import mediapipe as mp

        self._det = mp.solutions.face_detection.FaceDetection(model_selection=model_selection, min_detection_confidence=min_confidence)

    def detect(self, frame_bgr: np.ndarray) -> Box | None:
        res = self._det.process(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        if not res.detections:
            return None
        best = max(res.detections, key=lambda d: d.score[0])
        bb = best.location_data.relative_bounding_box
        h, w = frame_bgr.shape[:2]
        return (bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h)


def make_detector(mode: str) -> FaceDetector | None:
    """'auto': the best detector available, 'client' / 'mediapipe': that one, 'render': none."""
    if mode == "render":
        return None
    if mode in ("auto", "client"):
        try:
            return ClientDetector()
        except ImportError as exc:
            if mode == "client":
                raise RuntimeError(f"client.face_tracking is not available: {exc}") from exc
    if mode in ("auto", "mediapipe"):
        try:
            return BlazeFaceDetector()
        except ImportError as exc:
            if mode == "mediapipe":
                raise RuntimeError(f"mediapipe is not installed: {exc}") from exc
            log.warning("no face detector available (%s); cropping with the renderer's own boxes", exc)
            return None
    if mode not in ("auto", "client", "mediapipe"):
        raise ValueError(f"unknown box mode {mode!r}; choose auto, client, mediapipe or render")
    return None


def crop_face(frame: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The box's pixels (clamped to the frame) resized to size x size, as the preprocessing does."""
    h, w = frame.shape[:2]
    x1, y1 = int(round(max(box[0], 0))), int(round(max(box[1], 0)))
    x2, y2 = int(round(min(box[2], w))), int(round(min(box[3], h)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ValueError(f"face box {box} is empty inside a {w}x{h} frame")
    crop = frame[y1:y2, x1:x2]
    interp = cv2.INTER_AREA if (x2 - x1) > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)
