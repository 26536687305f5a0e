"""Picture-quality and sync measures of a lip-synced face that use none of the project's networks.

What a viewer judges (docs/quality.md): does the lower face still look like the input (PSNR/SSIM of
the lower-face box when a clip is re-driven by its own speech), did the skin keep its colour (CIE76
dE), is the mouth as sharp as the input's (variance of the Laplacian), did anything change outside
the mouth mask, and does the mouth follow the speech (lip opening measured by the face-mesh model
against the loudness of the speech, best correlation over a few frames of lag).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from lipsync.client import contract
from lipsync.client.face_landmarks import CHIN, LIPS_OUTER

# The lower-face box: cheek to cheek (the face-mesh points at the cheekbones' outer edge), nose tip
# to chin. Everything the generator may change lies inside it.
CHEEK_LEFT, CHEEK_RIGHT, NOSE_TIP = 234, 454, 1
MAX_LAG_FRAMES = 10  # +-0.4 s at 25 fps: sync measures search offsets this far
LIPS_MARGIN = 0.12  # of the mouth width: the lips' hull grown by this is "lips", the rest of the box "skin"


def lower_face_box(landmarks: np.ndarray, frame_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) in pixels, clipped to the frame, from 468 face-mesh landmarks."""
    h, w = frame_shape[:2]
    x1 = int(np.floor(min(landmarks[CHEEK_LEFT, 0], landmarks[CHEEK_RIGHT, 0])))
    x2 = int(np.ceil(max(landmarks[CHEEK_LEFT, 0], landmarks[CHEEK_RIGHT, 0])))
    y1, y2 = int(np.floor(landmarks[NOSE_TIP, 1])), int(np.ceil(landmarks[CHIN, 1]))
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if x2 - x1 < 8 or y2 - y1 < 8:
        raise ValueError(f"lower-face box {(x1, y1, x2, y2)} is degenerate for a {w}x{h} frame")
    return x1, y1, x2, y2


def lips_mask(landmarks: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool: the outer lip contour's hull, grown by LIPS_MARGIN of the mouth width."""
    hull = cv2.convexHull(landmarks[list(LIPS_OUTER)].astype(np.float32))
    mask = np.zeros(frame_shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
    grow = max(1, int(round(LIPS_MARGIN * np.ptp(landmarks[list(LIPS_OUTER), 0]))))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return mask.astype(bool)


def skin_mask(landmarks: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool: the lower-face box without the lips: skin that a dub should leave as it was."""
    x1, y1, x2, y2 = lower_face_box(landmarks, frame_shape)
    mask = np.zeros(frame_shape[:2], bool)
    mask[y1:y2, x1:x2] = True
    return mask & ~lips_mask(landmarks, frame_shape)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two uint8 BGR images (skimage's, over the three channels)."""
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win))


def delta_e(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean CIE76 colour difference over mask between two uint8 BGR images (NaN for an empty mask)."""
    if not mask.any():
        return float("nan")
    lab_a = cv2.cvtColor(a.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)[mask]
    lab_b = cv2.cvtColor(b.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)[mask]
    return float(np.linalg.norm(lab_a - lab_b, axis=1).mean())


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: higher is sharper."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def mouth_box(landmarks: np.ndarray, frame_shape: tuple[int, ...], margin: float = 0.3) -> tuple[int, int, int, int]:
    """The lips' bounding box grown by margin of its size on each side: where sharpness is measured."""
    pts = landmarks[list(LIPS_OUTER)]
    (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
    mx, my = margin * (x2 - x1), margin * (y2 - y1) + margin * 0.5 * (x2 - x1)
    h, w = frame_shape[:2]
    return max(int(x1 - mx), 0), max(int(y1 - my), 0), min(int(x2 + mx) + 1, w), min(int(y2 + my) + 1, h)


def speech_envelope(wav: np.ndarray, n_frames: int, fps: float, rate: int = contract.SAMPLE_RATE) -> np.ndarray:
    """RMS loudness of the speech in each video frame's interval, in dB (floor -80)."""
    per = rate / fps
    out = np.empty(n_frames, np.float64)
    for i in range(n_frames):
        seg = wav[int(i * per) : int((i + 1) * per)]
        rms = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if seg.size else 0.0
        out[i] = 20 * np.log10(max(rms, 1e-4))
    return out


def best_lag_correlation(signal: np.ndarray, reference: np.ndarray, max_lag: int = MAX_LAG_FRAMES) -> tuple[float, int]:
    """The highest Pearson correlation of signal[t] with reference[t - lag] over |lag| <= max_lag.

    Returns (correlation, lag); NaN values (frames without landmarks) are left out pairwise.
    """
    best, best_lag = float("nan"), 0
    n = min(len(signal), len(reference))
    for lag in range(-max_lag, max_lag + 1):
        a = signal[max(lag, 0) : n + min(lag, 0)]
        b = reference[max(-lag, 0) : n - max(lag, 0)]
        keep = np.isfinite(a) & np.isfinite(b)
        if keep.sum() < 8 or np.std(a[keep]) == 0 or np.std(b[keep]) == 0:
            continue
        r = float(np.corrcoef(a[keep], b[keep])[0, 1])
        if not np.isfinite(best) or r > best:
            best, best_lag = r, lag
    return best, best_lag
