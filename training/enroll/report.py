"""The enrolment report: the generic default and the enrolled avatar on the held-out end of the recording,
through the product's own pieces (tracker, crop, model, mouth blend), before and after.

Figures (training/quality.py): lower-face PSNR/SSIM in self-reconstruction (the held-out frames
re-driven by their own speech), skin dE and mouth sharpness against the input, and the independent
sync measure (face-mesh lip opening vs loudness) with the own speech and with new speech (the same
voice saying other words: audio from the training part). JSON and a PNG: frames and the
validation curve.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from lipsync.client.backends.pytorch import PyTorchBackend
from lipsync.client.contract import SAMPLE_RATE
from lipsync.training.data.preprocess import frames_at_fps
from lipsync.training.enroll.recording import FPS
from lipsync.training.quality_run import Item, fit_audio, input_reference, lip_sync, load_expert, measure, track_inputs

logger = logging.getLogger(__name__)

REPORT_MAX_SIDE = 960  # frames larger than this are scaled down for the report only
FIGURES = (
    "lower_face_psnr_db",
    "lower_face_ssim",
    "delta_e_skin",
    "sharpness_ratio",
    "sync_lip_vs_loudness",
    "lse_d",
    "lse_c",
)


def held_out_frames(video: Path, start: int, count: int) -> list[np.ndarray]:
    frames = []
    for k, image in frames_at_fps(video):
        if k >= start + count:
            break
        if k >= start:
            h, w = image.shape[:2]
            scale = REPORT_MAX_SIDE / max(h, w)
            if scale < 1:
                image = cv2.resize(
                    image, (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2), interpolation=cv2.INTER_AREA
                )
            frames.append(image)
    return frames


def make_items(
    video: Path, wav: np.ndarray, val_start: int, count: int, new_speech: np.ndarray | None = None
) -> list[Item]:
    """Frames [val_start, +count) with their own speech, and with new speech (default: the recording's start,
    the same voice saying other words)."""
    frames = held_out_frames(video, val_start, count)
    n = len(frames)
    per = SAMPLE_RATE // FPS
    own = wav[int(val_start * per) : int((val_start + n) * per)]
    new = (wav if new_speech is None else new_speech)[: int(n * per)]
    items = [
        Item("held_out_own_speech", "enrolled", frames, fit_audio(own, n), own=True, still=False),
        Item("held_out_new_speech", "enrolled", frames, fit_audio(new, n), own=False, still=False),
    ]
    track_inputs(items[0])
    items[1].regions, items[1].input_landmarks = items[0].regions, items[0].input_landmarks
    return items


def evaluate_models(items: list[Item], models: dict[str, Path]) -> tuple[dict, dict]:
    """{model: {item: figures}} and the outputs, for the grid."""
    scorer = load_expert()
    figures: dict[str, dict] = {}
    outputs: dict[tuple[str, str], list[np.ndarray]] = {}
    for name, checkpoint in models.items():
        backend = PyTorchBackend(checkpoint)
        try:
            for item in items:
                frames, supports = lip_sync(backend, item, "mouth")
                outputs[(name, item.name)] = frames
                result = measure(item, frames, supports, scorer)
                figures.setdefault(name, {})[item.name] = {k: result[k] for k in FIGURES if k in result}
        finally:
            backend.close()
    return figures, outputs


def grid(items: list[Item], outputs: dict, models: list[str], history: list[dict], path: Path) -> Path:
    """Rows: the 4 frames where the new speech is loudest; columns: the input, each model re-driven by the
    own speech, each model dubbed with the new speech. Below: the validation curve."""
    own, new = items
    per = SAMPLE_RATE // FPS
    envelope = [float(np.sqrt(np.mean(new.wav[i * per : (i + 1) * per] ** 2))) for i in range(len(new.frames))]
    with_face = [i for i, r in enumerate(own.regions) if r is not None]
    picks = sorted(sorted(with_face, key=lambda i: -envelope[i])[:4])
    columns = [("input", None)]
    columns += [(f"{m}, own speech", (m, own.name)) for m in models]
    columns += [(f"{m}, new speech", (m, new.name)) for m in models]
    rows = []
    for k in picks:
        r = own.regions[k]
        m = int(0.2 * r.width)
        h, w = own.frames[k].shape[:2]
        y1, y2, x1, x2 = max(r.y1 - m, 0), min(r.y2 + m, h), max(r.x1 - m, 0), min(r.x2 + m, w)
        tiles = []
        for label, key in columns:
            image = own.frames[k] if key is None else outputs[key][k]
            tile = cv2.resize(image[y1:y2, x1:x2], (200, 200), interpolation=cv2.INTER_AREA)
            cv2.rectangle(tile, (0, 0), (200, 18), (0, 0, 0), -1)
            cv2.putText(tile, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.hstack(tiles))
    sheet = np.vstack(rows)
    curve = _curve(history, sheet.shape[1])
    banner = np.zeros((22, sheet.shape[1], 3), np.uint8)
    text = "SYNTHETIC: every column but 'input' is generated by a model (held-out part of the recording)"
    cv2.putText(banner, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 200, 255), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack([banner, sheet, curve]))
    return path


def _curve(history: list[dict], width: int, height: int = 200) -> np.ndarray:
    """The held-out lower-half PSNR against training seconds, drawn with OpenCV (no plotting dependency)."""
    canvas = np.full((height, width, 3), 255, np.uint8)
    points = [(h["seconds"], h["lower_psnr"]) for h in history if "lower_psnr" in h]
    cv2.putText(
        canvas,
        "held-out lower-half PSNR (dB) vs training seconds",
        (8, 16),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    if len(points) < 2:
        return canvas
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    lo, hi = float(ys.min()) - 0.5, float(ys.max()) + 0.5
    x_max = max(float(xs.max()), 1.0)
    left, right, top, bottom = 50, width - 12, 28, height - 24
    px = left + (xs / x_max) * (right - left)
    py = bottom - (ys - lo) / (hi - lo) * (bottom - top)
    cv2.rectangle(canvas, (left, top), (right, bottom), (180, 180, 180), 1)
    for a, b in zip(zip(px, py, strict=True), list(zip(px, py, strict=True))[1:], strict=False):
        cv2.line(canvas, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), (200, 80, 0), 2, cv2.LINE_AA)
    for x, y in zip(px, py, strict=True):
        cv2.circle(canvas, (int(x), int(y)), 3, (200, 80, 0), -1, cv2.LINE_AA)
    for value, y in ((hi, top), (lo, bottom)):
        cv2.putText(canvas, f"{value:.1f}", (4, int(y) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(
        canvas, f"{x_max:.0f} s", (right - 40, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA
    )
    return canvas


def write_report(
    video: Path,
    wav: np.ndarray,
    val_start: int,
    count: int,
    models: dict[str, Path],
    history: list[dict],
    extra: dict,
    json_path: Path,
    png_path: Path,
) -> dict:
    items = make_items(video, wav, val_start, count)
    figures, outputs = evaluate_models(items, models)
    report = {
        **extra,
        "held_out": {"first_frame": val_start, "frames": len(items[0].frames), "seconds": len(items[0].frames) / FPS},
        "input_reference": input_reference(items[0]),
        "figures": figures,
        "validation_history": history,
    }
    generic, enrolled = figures.get("generic", {}), figures.get("enrolled", {})
    if generic and enrolled:
        own, new = "held_out_own_speech", "held_out_new_speech"
        report["gains"] = {
            "lower_face_psnr_db": enrolled[own]["lower_face_psnr_db"] - generic[own]["lower_face_psnr_db"],
            "delta_e_skin": enrolled[own]["delta_e_skin"] - generic[own]["delta_e_skin"],
            "sharpness_ratio": enrolled[own]["sharpness_ratio"] - generic[own]["sharpness_ratio"],
            "sync_new_speech": enrolled[new]["sync_lip_vs_loudness"] - generic[new]["sync_lip_vs_loudness"],
        }
    json_path.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    grid(items, outputs, list(models), history, png_path)
    return report
