"""Face-mesh landmarks of the tracked face: where the lips, the nose and the chin are on this frame.

mediapipe 0.10.21 ships its 468-point face-mesh model inside the wheel, so nothing is downloaded.
The mesh runs on the face's crop region (padded), not the whole frame: a 1080p frame costs the
same as a 360p one. In video mode the graph follows the face from its previous landmarks and
skips its own detector; that state is per instance, so use one landmarker per video or session.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from lipsync.client.face_crop import CropRegion

NUM_LANDMARKS = 468

# Indices into the canonical face mesh (mediapipe's face_mesh topology).
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
MOUTH_LEFT, MOUTH_RIGHT = 61, 291  # the corners, as seen in the picture (left = smaller x)
UPPER_LIP_TOP, UPPER_LIP_INNER, LOWER_LIP_INNER, LOWER_LIP_BOTTOM = 0, 13, 14, 17
SUBNASALE = 2  # where the nose meets the upper lip
NOSE_BOTTOM_SIDES = (98, 327)
CHIN = 152
# The jaw from below one mouth corner, round the chin, to below the other.
LOWER_JAW = (136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365)

# The mesh wants some context around the face; BlazeFace's box is tight on the lower face.
_ROI_MARGIN = 0.25
_MIN_ROI_PX = 32


class FaceLandmarker:
    """468 (x, y) landmarks in frame pixels for the face inside a crop region, or None.

    video=True: consecutive calls are frames of one video (the mesh tracks its own ROI);
    video=False: every call is an independent picture. Thread-safe; never raises on a frame
    without a face.
    """

    def __init__(self, *, video: bool = True, min_confidence: float = 0.5) -> None:
        if not 0.0 < min_confidence < 1.0:
            raise ValueError(f"min_confidence must be in (0, 1), got {min_confidence}")
        # Imported here so that programs that never composite the mouth never load mediapipe.
        from mediapipe.python.solutions import face_mesh

        self._mesh = face_mesh.FaceMesh(
            static_image_mode=not video,
            max_num_faces=1,
            refine_landmarks=False,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        self._lock = threading.Lock()

    def locate(self, frame_bgr: np.ndarray, region: CropRegion) -> np.ndarray | None:
        """(468, 2) float32 landmarks in frame pixels, or None when the mesh finds no face there."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected a (H, W, 3) uint8 frame, got shape {frame_bgr.shape} dtype {frame_bgr.dtype}")
        height, width = frame_bgr.shape[:2]
        mx, my = _ROI_MARGIN * region.width, _ROI_MARGIN * region.height
        x1, y1 = max(0, int(region.x1 - mx)), max(0, int(region.y1 - my))
        x2, y2 = min(width, int(region.x2 + mx + 0.5)), min(height, int(region.y2 + my + 0.5))
        if x2 - x1 < _MIN_ROI_PX or y2 - y1 < _MIN_ROI_PX:
            return None
        roi = cv2.cvtColor(frame_bgr[y1:y2, x1:x2], cv2.COLOR_BGR2RGB)
        with self._lock:
            if self._mesh is None:
                raise RuntimeError("FaceLandmarker is closed")
            result = self._mesh.process(roi)
        if not result.multi_face_landmarks:
            return None
        marks = result.multi_face_landmarks[0].landmark
        points = np.array([(p.x, p.y) for p in marks], dtype=np.float32)
        points *= np.array([x2 - x1, y2 - y1], dtype=np.float32)
        points += np.array([x1, y1], dtype=np.float32)
        return points

    def new_video(self) -> None:
        """The next frame starts another video: forget the face the mesh was following.

        Restarts the graph's run with its models still loaded (a few ms, against about a second to build
        a new landmarker), so a gateway can hand one landmarker from session to session."""
        with self._lock:
            if self._mesh is None:
                raise RuntimeError("FaceLandmarker is closed")
            self._mesh.reset()

    def close(self) -> None:
        with self._lock:
            if self._mesh is not None:
                self._mesh.close()
                self._mesh = None

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lip_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap divided by mouth width: 0 closed, about 0.3-0.6 wide open. Scale-free."""
    gap = float(np.linalg.norm(landmarks[LOWER_LIP_INNER] - landmarks[UPPER_LIP_INNER]))
    width = float(np.linalg.norm(landmarks[MOUTH_RIGHT] - landmarks[MOUTH_LEFT]))
    return gap / width if width > 0 else 0.0
