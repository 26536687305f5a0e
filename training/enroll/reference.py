"""The avatar's reference frames, chosen from the training part of the recording: a still with the mouth at
rest and a short loop of quiet, for presenter sessions and for `lipsync --avatar` without a face input.

Quiet stretches are chosen because a presenter's loop plays while someone else's speech drives the
mouth: frames of the person talking would bring their own mouth movement into every loop.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from lipsync.client.contract import SAMPLE_RATE
from lipsync.client.face_tracking import FaceBox
from lipsync.training.data.preprocess import frames_at_fps
from lipsync.training.enroll.recording import FPS

logger = logging.getLogger(__name__)

LOOP_SECONDS = 4.0


def frame_loudness(wav: np.ndarray, frames: int) -> np.ndarray:
    """RMS in dB of the audio under each 25 fps frame."""
    per = SAMPLE_RATE // FPS
    padded = np.pad(wav, (0, max(0, frames * per - len(wav))))[: frames * per]
    rms = np.sqrt(np.mean(padded.reshape(frames, per).astype(np.float64) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-6))


def choose_loop(boxes: list[FaceBox | None], loudness: np.ndarray, end: int, length: int) -> tuple[int, int]:
    """[start, stop) of the quietest run of `length` frames before `end` with a face on every frame."""
    length = min(length, end)
    has_face = np.array([b is not None for b in boxes[:end]], bool)
    best, best_score = 0, np.inf
    for start in range(0, end - length + 1, max(1, length // 10)):
        if not has_face[start : start + length].all():
            continue
        score = float(np.mean(loudness[start : start + length]))
        if score < best_score:
            best, best_score = start, score
    if not np.isfinite(best_score):  # no gap-free run: take the run with the most faces
        counts = [has_face[s : s + length].sum() for s in range(0, end - length + 1)]
        best = int(np.argmax(counts))
    return best, best + length


def choose_still(boxes: list[FaceBox | None], loudness: np.ndarray, start: int, stop: int) -> int:
    """The frame in [start, stop) in the quietest 5-frame neighbourhood (the mouth closed, not mid-word)."""
    smooth = np.convolve(loudness, np.ones(5) / 5, mode="same")
    candidates = [k for k in range(start, stop) if boxes[k] is not None]
    return min(candidates, key=lambda k: smooth[k])


def _even(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[: h - h % 2, : w - w % 2])


def write_references(
    video: Path, out: Path, loop: tuple[int, int], still: int, *, still_name: str, loop_name: str
) -> None:
    """Decode the recording once up to the loop's end; write the still (PNG) and the loop (H.264, video only)."""
    start, stop = loop
    still_path, loop_path = out / still_name, out / loop_name
    tmp_loop = loop_path.with_suffix(".tmp.mp4")
    wrote = 0
    with av.open(str(tmp_loop), "w") as container:
        container.metadata["comment"] = "reference frames of the enrolled person, taken from the recording unchanged"
        stream = None
        for k, image in frames_at_fps(video):
            if k == still:
                cv2.imwrite(str(still_path), _even(image))
            if start <= k < stop:
                image = _even(image)
                if stream is None:
                    stream = container.add_stream("libx264", rate=FPS)
                    stream.height, stream.width = image.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": "16", "preset": "veryfast"}
                frame = av.VideoFrame.from_ndarray(image, format="bgr24")
                frame.pts, frame.time_base = wrote, Fraction(1, FPS)
                container.mux(stream.encode(frame))
                wrote += 1
            if k >= max(stop, still + 1):
                break
        if stream is not None:
            container.mux(stream.encode())
    tmp_loop.replace(loop_path)
    logger.info("reference still: frame %d; loop: frames %d-%d (%d frames)", still, start, stop - 1, wrote)
