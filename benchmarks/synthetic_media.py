"""Synthetic video with a real face on a known path, for the face-tracking tests and benchmark.

The face is skimage's astronaut photo (public domain; scikit-image ships it, so nothing is
downloaded). It is scaled and moved over a textured background along a path the caller knows,
so every frame comes with its ground-truth face box. tests/media.py re-exports these helpers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync.client.face_tracking import FaceBox

# The astronaut's face in skimage.data.astronaut() (512x512), measured by hand on a 4x zoom with
# a 10-px grid: cheek to cheek 178..264, forehead below the fringe 78 to the chin 184.
# (BlazeFace short range gives (177.6, 82.9, 272.9, 178.2): IoU 0.82 with this box.)
ASTRONAUT_FACE_BOX = FaceBox(178.0, 78.0, 264.0, 184.0)


@functools.cache
def _astronaut_bgr() -> np.ndarray:
    from skimage import data  # imported lazily: only the synthetic media needs scikit-image

    image = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    image.setflags(write=False)
    return image


def astronaut_bgr() -> np.ndarray:
    """skimage.data.astronaut() as a writable BGR uint8 (512, 512, 3) array."""
    return _astronaut_bgr().copy()


@functools.cache
def _background(width: int, height: int, seed: int) -> np.ndarray:
    # Low-frequency colour blobs plus a few straight edges: enough texture for optical flow to
    # find corners on the background too (so a tracker that follows the background fails), and
    # nothing that looks like a face.
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 216, size=(max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.line(image, p1, p2, color, int(rng.integers(2, 6)), cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (3, 3), 0)
    image.setflags(write=False)
    return image


def frame_without_face(size: tuple[int, int] = (640, 480), seed: int = 0) -> np.ndarray:
    """The textured background alone, as a (h, w, 3) BGR uint8 frame; size is (width, height)."""
    width, height = size
    return _background(width, height, seed).copy()


def render_face(background: np.ndarray, center: tuple[float, float], face_height: float) -> tuple[np.ndarray, FaceBox]:
    """Paste the astronaut's head onto a copy of background with the face box centred at center.

    face_height is the face box's height in pixels. Returns the frame and the ground-truth box
    (the hand-measured box mapped into the frame, not clipped to it).
    """
    src = ASTRONAUT_FACE_BOX
    scale = face_height / src.height
    sx, sy = src.center
    cx, cy = center
    affine = np.float32([[scale, 0.0, cx - scale * sx], [0.0, scale, cy - scale * sy]])
    height, width = background.shape[:2]
    head = cv2.warpAffine(_astronaut_bgr(), affine, (width, height), flags=cv2.INTER_LINEAR)
    # A soft ellipse around the head (hair, ears and some neck), so the paste has no hard edge
    # for a detector or a tracker to latch onto.
    alpha = np.zeros((height, width), np.float32)
    axes = (max(1, round(0.95 * src.width * scale)), max(1, round(0.82 * src.height * scale)))
    cv2.ellipse(alpha, (round(cx), round(cy - 0.08 * face_height)), axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    k = 2 * max(1, round(0.06 * face_height)) + 1
    alpha = cv2.GaussianBlur(alpha, (k, k), 0)[:, :, None]
    frame = (background.astype(np.float32) * (1.0 - alpha) + head.astype(np.float32) * alpha + 0.5).astype(np.uint8)
    box = FaceBox.from_center(cx, cy, src.width * scale, src.height * scale)
    return frame, box


@dataclass(frozen=True)
class SyntheticClip:
    """Frames of a moving face and, per frame, the true face box (None where no face was drawn)."""

    frames: list[np.ndarray]
    boxes: list[FaceBox | None]
    fps: float


def face_path(
    n_frames: int,
    size: tuple[int, int] = (640, 480),
    fps: float = 25.0,
    *,
    face_height: float = 0.3,
    speed: float | None = None,
) -> list[tuple[float, float, float]]:
    """Per frame (cx, cy, face height in px) of the default paths.

    speed=None: a smooth wander (horizontal sine of 4 s, vertical of 3 s, size +-15 % over 5 s;
    up to about 12 px/frame at 640x480, 25 fps). speed=v: left to right at v px/frame, bouncing
    at the frame edges, fixed size.
    """
    width, height = size
    base = face_height * height
    path = []
    if speed is None:
        for i in range(n_frames):
            t = i / fps
            cx = width / 2 + 0.3 * width * math.sin(2 * math.pi * t / 4.0)
            cy = height / 2 + 0.12 * height * math.sin(2 * math.pi * t / 3.0 + 0.5)
            path.append((cx, cy, base * (1.0 + 0.15 * math.sin(2 * math.pi * t / 5.0))))
        return path
    # Keep the whole face box inside the frame while bouncing.
    half_w = 0.5 * base * ASTRONAUT_FACE_BOX.width / ASTRONAUT_FACE_BOX.height
    lo, hi = half_w + 2, width - half_w - 2
    if hi <= lo:
        raise ValueError(f"face_height {face_height} is too large for a frame {width} px wide")
    x, direction = lo, 1.0
    for _ in range(n_frames):
        path.append((x, height / 2, base))
        x += direction * speed
        if x > hi:
            x, direction = 2 * hi - x, -1.0
        elif x < lo:
            x, direction = 2 * lo - x, 1.0
    return path


def make_moving_face_clip(
    n_frames: int,
    size: tuple[int, int] = (640, 480),
    fps: float = 25.0,
    *,
    face_height: float = 0.3,
    speed: float | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> SyntheticClip:
    """A clip of the astronaut's face moving along face_path over a fixed textured background.

    noise: standard deviation of Gaussian sensor noise added to every frame (grey levels), which
    makes a detector's boxes jitter as they do on a real camera.
    """
    background = _background(size[0], size[1], seed)
    rng = np.random.default_rng(seed)
    frames, boxes = [], []
    for cx, cy, fh in face_path(n_frames, size, fps, face_height=face_height, speed=speed):
        frame, box = render_face(background, (cx, cy), fh)
        if noise > 0:
            grain = rng.normal(0.0, noise, size=frame.shape).astype(np.float32)
            frame = np.clip(frame + grain + 0.5, 0, 255).astype(np.uint8)
        frames.append(frame)
        boxes.append(box)
    return SyntheticClip(frames, boxes, fps)


def moving_face_clip(
    n_frames: int, size: tuple[int, int] = (640, 480), fps: float = 25.0, **kwargs
) -> list[np.ndarray]:
    """Just the frames of make_moving_face_clip (same keyword arguments)."""
    return make_moving_face_clip(n_frames, size, fps, **kwargs).frames
