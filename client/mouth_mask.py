"""Where the generated mouth may replace the frame: lips, mouth opening and the moving chin.

The support is built from the input frame's landmarks but must also hold the *new* mouth, which
can open wider and drop the jaw further than the old one: it reaches from half-way between the
nose and the upper lip down past the chin, and a quarter of the mouth's width beyond each corner.
It is stored relative to the crop region, so a shape measured on one frame still fits the next
while the tracked region follows the face (the live path measures landmarks every few frames).

A frame whose landmarks cannot be found gets DEFAULT_SHAPE, drawn where the mouth sits in a
tracker crop (the Wav2Lip crop puts the mouth at about 70-75 % of the height).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync.client import face_landmarks as fl
from lipsync.client.face_crop import CropRegion

CORNER_REACH = 0.25  # beyond each mouth corner, as a share of the mouth width
# 0 = at the subnasale, 1 = at the top of the upper lip. A smile leaves only a few pixels between
# the two, and the fade must end before the lip does, so the support starts right under the nose.
TOP_BETWEEN_NOSE_AND_LIP = 0.0
JAW_DROP_REACH = 0.2  # how far past the chin contour, as a share of the mouth width
GENERATED_TOP = 0.5  # the generator redraws only the lower half of its crop
DEFAULT_FEATHER = 0.2  # the fade inside the support's edge, as a share of the mouth width


@dataclass(frozen=True)
class MouthShape:
    """A convex polygon in crop-region coordinates ((0, 0) top-left, (1, 1) bottom-right)."""

    polygon: tuple[tuple[float, float], ...]
    mouth_width: float  # corner to corner, as a share of the region width (sets the feather)
    from_landmarks: bool = True

    def __post_init__(self) -> None:
        if len(self.polygon) < 3:
            raise ValueError(f"a mouth shape needs at least 3 points, got {len(self.polygon)}")
        if not 0.0 < self.mouth_width <= 1.5:
            raise ValueError(f"mouth_width must be in (0, 1.5] of the region width, got {self.mouth_width}")

    @classmethod
    def from_face_landmarks(cls, landmarks: np.ndarray, region: CropRegion) -> MouthShape:
        """The support for this frame's landmarks ((468, 2) frame pixels) inside its crop region."""
        if landmarks.shape != (fl.NUM_LANDMARKS, 2):
            raise ValueError(f"expected ({fl.NUM_LANDMARKS}, 2) landmarks, got {landmarks.shape}")
        left, right = landmarks[fl.MOUTH_LEFT], landmarks[fl.MOUTH_RIGHT]
        width = float(np.linalg.norm(right - left))
        if width < 1.0:
            raise ValueError("the mouth corners coincide: not a usable face")
        across = (right - left) / width
        centre = landmarks[list(fl.LIPS_OUTER)].mean(axis=0)
        top_y = landmarks[fl.SUBNASALE, 1] + TOP_BETWEEN_NOSE_AND_LIP * (
            landmarks[fl.UPPER_LIP_TOP, 1] - landmarks[fl.SUBNASALE, 1]
        )
        reach = CORNER_REACH * width
        points = [
            left - across * reach,
            right + across * reach,
            np.array([left[0] - 0.5 * reach, top_y]),
            np.array([right[0] + 0.5 * reach, top_y]),
        ]
        points.extend(landmarks[list(fl.LIPS_OUTER)])
        # The jaw contour pushed away from the mouth: room for a jaw that drops further than this one.
        for index in fl.LOWER_JAW:
            point = landmarks[index]
            away = point - centre
            norm = float(np.linalg.norm(away))
            points.append(point + (away / norm if norm > 0 else 0.0) * JAW_DROP_REACH * width)
        pts = np.asarray(points, dtype=np.float32)
        hull = cv2.convexHull(pts).reshape(-1, 2)
        origin = np.array([region.x1, region.y1], dtype=np.float32)
        size = np.array([region.width, region.height], dtype=np.float32)
        normalised = (hull - origin) / size
        return cls(tuple((float(x), float(y)) for x, y in normalised), mouth_width=width / region.width)


# The mouth of a typical tracker crop: lips at 0.70-0.78 of the height, corners at 0.33/0.67 of the width.
DEFAULT_SHAPE = MouthShape(
    polygon=(
        (0.22, 0.60),
        (0.78, 0.60),
        (0.86, 0.74),
        (0.78, 0.95),
        (0.62, 1.0),
        (0.38, 1.0),
        (0.22, 0.95),
        (0.14, 0.74),
    ),
    mouth_width=0.34,
    from_landmarks=False,
)


def mouth_alpha(shape: MouthShape, height: int, width: int, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """(height, width) float32 alpha: exactly 0 outside the shape, rising smoothly to 1 inside it.

    The support is cut at the top of the generator's half of the crop (GENERATED_TOP), since
    the network does not draw above it. Read-only; cached per shape and size.
    """
    if height < 1 or width < 1:
        raise ValueError(f"mask size must be positive, got {height}x{width}")
    if not 0.0 < feather <= 1.0:
        raise ValueError(f"feather must be in (0, 1] of the mouth width, got {feather}")
    return _alpha(shape, int(height), int(width), float(feather))


@functools.lru_cache(maxsize=256)
def _alpha(shape: MouthShape, height: int, width: int, feather: float) -> np.ndarray:
    polygon = np.asarray(shape.polygon, dtype=np.float64) * (width, height)
    polygon[:, 1] = np.maximum(polygon[:, 1], GENERATED_TOP * height)
    inside = np.zeros((height, width), np.uint8)
    # Sub-pixel vertices (4 fractional bits) so a shape that moves by half a pixel moves its mask too.
    cv2.fillConvexPoly(inside, np.round(polygon * 16).astype(np.int32), 1, lineType=cv2.LINE_8, shift=4)
    # Distance from each inside pixel to the nearest outside one: 1 on the edge, growing inward.
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ramp = max(feather * shape.mouth_width * width, 1.0)
    t = np.clip((distance - 0.5) / ramp, 0.0, 1.0)
    alpha = (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: no visible edge where the fade ends
    alpha[inside == 0] = 0.0
    alpha.setflags(write=False)
    return alpha


def skin_ring(shape: MouthShape, height: int, width: int) -> np.ndarray:
    """(height, width) bool: a band of skin just around the support, for matching colour.

    Half inside the feather (where the generated skin shows), half outside it (where the frame's
    own skin is), about a fifth of the mouth width wide in all.
    """
    alpha = _alpha(shape, int(height), int(width), DEFAULT_FEATHER)
    inside = (alpha > 0).astype(np.uint8)
    radius = max(1, int(round(0.1 * shape.mouth_width * width)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = cv2.dilate(inside, kernel)
    shrunk = cv2.erode(inside, kernel)
    ring = (grown > 0) & (shrunk == 0)
    ring[: int(GENERATED_TOP * height)] = False
    return ring
