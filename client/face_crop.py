"""From a face box to the generator's input: padded crop region, 96x96 crop, lower-half mask.

Follows the original inference (docs/network-facts.md 6.6-6.7): pads in frame pixels,
crop resized to 96x96, rows 48..95 of the target zeroed, [masked target, reference] / 255 in BGR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync.client import contract
from lipsync.client.face_tracking import FaceBox

DEFAULT_PADS = (0, 10, 0, 0)  # top, bottom, left, right: the original's --pads default (keeps the chin)


@dataclass(frozen=True)
class CropRegion:
    """The padded face rectangle in frame pixels, clipped to the frame (x2, y2 exclusive)."""

    x1: int
    y1: int
    x2: int
    y2: int

    def __post_init__(self) -> None:
        if self.x2 <= self.x1 or self.y2 <= self.y1 or self.x1 < 0 or self.y1 < 0:
            raise ValueError(f"a crop region needs 0 <= x1 < x2 and 0 <= y1 < y2, got {self}")

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1


def pad_box(box: FaceBox, frame_shape: Sequence[int], pads: tuple[int, int, int, int] = DEFAULT_PADS) -> CropRegion:
    """Pad a face box by (top, bottom, left, right) pixels and clip it to the frame.

    The original's semantics: y1 - top, y2 + bottom, x1 - left, x2 + right, clipped to
    [0, H] x [0, W]. Raises ValueError if nothing of the padded box lies inside the frame.
    """
    if len(pads) != 4:
        raise ValueError(f"pads must be (top, bottom, left, right), got {pads!r}")
    height, width = int(frame_shape[0]), int(frame_shape[1])
    top, bottom, left, right = (int(p) for p in pads)
    x1, y1, x2, y2 = box.as_int()
    x1, y1 = max(0, x1 - left), max(0, y1 - top)
    x2, y2 = min(width, x2 + right), min(height, y2 + bottom)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"face box {box} with pads {pads} lies outside the {width}x{height} frame")
    return CropRegion(x1, y1, x2, y2)


def crop_face(frame: np.ndarray, region: CropRegion) -> np.ndarray:
    """The region of the frame resized to (96, 96, 3) uint8 BGR.

    INTER_AREA when shrinking (the usual case: averaging avoids the aliasing that INTER_LINEAR,
    the original's choice, gives on large faces), INTER_LINEAR when enlarging a small face.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a (H, W, 3) uint8 frame, got shape {frame.shape} dtype {frame.dtype}")
    if region.x2 > frame.shape[1] or region.y2 > frame.shape[0]:
        raise ValueError(f"{region} does not fit a {frame.shape[1]}x{frame.shape[0]} frame")
    face = frame[region.y1 : region.y2, region.x1 : region.x2]
    size = contract.FACE_SIZE
    shrinking = region.width >= size and region.height >= size
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _check_face96(face: np.ndarray, what: str) -> None:
    size = contract.FACE_SIZE
    if face.shape != (size, size, 3) or face.dtype != np.uint8:
        raise ValueError(f"{what} must be a ({size}, {size}, 3) uint8 crop, got shape {face.shape} dtype {face.dtype}")


def mask_lower_half(face96: np.ndarray) -> np.ndarray:
    """A copy of the crop with rows MASK_START_ROW (48) to the bottom set to zero."""
    _check_face96(face96, "face96")
    masked = face96.copy()
    masked[contract.MASK_START_ROW :] = 0
    return masked


def model_face_input(target96: np.ndarray, reference96: np.ndarray | None = None) -> np.ndarray:
    """(6, 96, 96) float32: [target with its lower half zeroed, reference], BGR, scaled by 1/255.

    The reference defaults to the unmasked target, as in the original's inference.
    """
    _check_face96(target96, "target96")
    if reference96 is None:
        reference96 = target96
    else:
        _check_face96(reference96, "reference96")
    pair = np.empty((contract.FACE_CHANNELS, contract.FACE_SIZE, contract.FACE_SIZE), np.float32)
    pair[:3] = target96.transpose(2, 0, 1)
    pair[:3, contract.MASK_START_ROW :, :] = 0.0
    pair[3:] = reference96.transpose(2, 0, 1)
    pair /= np.float32(255.0)
    return pair


def batch_face_inputs(targets: Sequence[np.ndarray], references: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Stack model_face_input over a batch: (N, 6, 96, 96) float32 (the contract's FACE_INPUT)."""
    if len(targets) == 0:
        raise ValueError("batch_face_inputs needs at least one face")
    if references is not None and len(references) != len(targets):
        raise ValueError(f"{len(targets)} targets but {len(references)} references")
    out = np.empty(contract.FACE_INPUT.batched_shape(len(targets)), np.float32)
    for i, target in enumerate(targets):
        out[i] = model_face_input(target, None if references is None else references[i])
    return out
