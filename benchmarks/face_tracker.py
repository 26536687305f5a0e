"""Face tracking, crop and blend cost per 640x480 frame, and how well the tracker keeps up.

    .venv/bin/python -m lipsync.benchmarks.face_tracker [--frames 250] [--out benchmarks/results/face_tracker.json]

The clip is synthetic (benchmarks/synthetic_media.py): the astronaut's face wandering over a
textured background at up to about 12 px/frame with camera-like noise, 10 s at 25 fps, so every
frame has a ground-truth box. Prints ms per frame (mean, p50, p95, p99) for detection on every
frame (short range, full range, the default two-stage detector), the tracker with detect_every
1, 5 and 10, crop + model input, and blend; then the smoothing's lag on fast motion and jitter
on a still face. Timings are wall-clock on one thread of this process, on whatever else the
machine is doing: the load average is saved with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from lipsync.benchmarks.machine import cpu_model, describe_machine
from lipsync.benchmarks.synthetic_media import SyntheticClip, frame_without_face, make_moving_face_clip
from lipsync.client.blend import blend_face
from lipsync.client.face_crop import crop_face, model_face_input, pad_box
from lipsync.client.face_tracking import (
    FULL_RANGE,
    SHORT_RANGE,
    FaceBox,
    FaceTracker,
    MediaPipeFaceDetector,
    TrackerConfig,
    detect_faces_in_frames,
)

RESULTS = Path(__file__).resolve().parent / "results" / "face_tracker.json"


def _timed(frames: list[np.ndarray], step: Callable[[int, np.ndarray], object]) -> tuple[np.ndarray, list]:
    """Run step on every frame; returns (n, 2) milliseconds (wall clock, CPU time of this process) and outputs."""
    outputs, ms = [], np.empty((len(frames), 2))
    for i, frame in enumerate(frames):
        t0, c0 = time.perf_counter(), time.process_time()
        outputs.append(step(i, frame))
        ms[i] = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
    return ms, outputs


def _summary(ms: np.ndarray) -> dict[str, float]:
    # CPU time (all threads of this process) is reported beside wall time because the machine
    # may be shared: other processes stretch the wall clock, much less the CPU time.
    wall, cpu = ms[:, 0], ms[:, 1]
    p50, p95, p99 = np.percentile(wall, [50, 95, 99])
    c50, c95, c99 = np.percentile(cpu, [50, 95, 99])
    return {
        "mean_ms": float(wall.mean()), "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
        "cpu_mean_ms": float(cpu.mean()), "cpu_p50_ms": float(c50), "cpu_p95_ms": float(c95), "cpu_p99_ms": float(c99),
    }  # fmt: skip


def _accuracy(boxes: list[FaceBox | None], clip: SyntheticClip) -> dict[str, float]:
    ious = np.array([b.iou(t) if b is not None else 0.0 for b, t in zip(boxes, clip.boxes, strict=True)])
    return {
        "found": float(np.mean([b is not None for b in boxes])),
        "iou_mean": float(ious.mean()),
        "iou_min": float(ious.min()),
    }


def _centre_x(boxes: list[FaceBox]) -> np.ndarray:
    return np.array([b.center[0] for b in boxes])


def smoothing_quality(detector: MediaPipeFaceDetector, config: TrackerConfig) -> dict[str, float]:
    """Lag at 20 px/frame (vs a causal 5-frame mean of raw boxes) and jitter of a still face, in px."""
    fast = make_moving_face_clip(60, speed=20.0, noise=3.0, seed=2)
    still = make_moving_face_clip(60, speed=0.0, noise=3.0, seed=3)
    raw_config = TrackerConfig(detect_every=1, smoothing=0.0)
    truth = _centre_x(fast.boxes)
    raw = _centre_x(detect_faces_in_frames(fast.frames, FaceTracker(detector, raw_config)))
    bias = float(np.median(raw - truth))  # BlazeFace's centre vs the hand-measured box: not lag
    mean5 = np.array([raw[max(0, i - 4) : i + 1].mean() for i in range(len(raw))])
    tracked = _centre_x(detect_faces_in_frames(fast.frames, FaceTracker(detector, config)))
    jitter = {}
    for name, cfg in (("raw", raw_config), ("tracker", config)):
        boxes = detect_faces_in_frames(still.frames, FaceTracker(detector, cfg))
        jitter[f"still_jitter_{name}_px"] = float(np.std(np.diff(_centre_x(boxes))))
        jitter[f"still_size_jitter_{name}_px"] = float(np.std(np.diff([b.height for b in boxes])))
    return {
        "lag_tracker_px": float(np.abs(tracked - truth - bias)[5:].mean()),
        "lag_trailing_mean5_px": float(np.abs(mean5 - truth - bias)[5:].mean()),
        "lag_raw_detection_px": float(np.abs(raw - truth - bias)[5:].mean()),
        **jitter,
    }


def run(n_frames: int) -> dict:
    t_start = time.time()
    load_before = os.getloadavg()
    clip = make_moving_face_clip(n_frames, (640, 480), 25.0, noise=3.0, seed=0)
    frames = clip.frames
    results: dict[str, dict] = {}

    def record(name: str, ms: np.ndarray, boxes: list | None = None, **extra) -> None:
        row = _summary(ms)
        if boxes is not None:
            row |= _accuracy(boxes, clip)
        row |= extra
        results[name] = row
        acc = f"  found {row['found']:.0%}, IoU mean {row['iou_mean']:.3f} min {row['iou_min']:.3f}" if boxes else ""
        print(
            f"{name:34s} mean {row['mean_ms']:6.2f}  p50 {row['p50_ms']:6.2f}  p95 {row['p95_ms']:6.2f}"
            f"  p99 {row['p99_ms']:6.2f} ms (CPU mean {row['cpu_mean_ms']:5.2f} p99 {row['cpu_p99_ms']:5.2f}){acc}",
            flush=True,
        )

    detectors = {
        "detect every frame, short range": MediaPipeFaceDetector(model_selection=SHORT_RANGE),
        "detect every frame, full range": MediaPipeFaceDetector(model_selection=FULL_RANGE),
        "detect every frame, default": MediaPipeFaceDetector(),
    }
    for name, det in detectors.items():
        for frame in frames[:10]:  # warm-up: first calls allocate the graph's buffers
            det.detect(frame)
        ms, boxes = _timed(frames, lambda _i, f, det=det: det.detect(f))
        record(name, ms, boxes)
    detector = detectors["detect every frame, default"]

    tracked: list[FaceBox | None] = []
    for every in (1, 5, 10):
        tracker = FaceTracker(detector, TrackerConfig(detect_every=every))
        ms, boxes = _timed(frames, lambda _i, f, tracker=tracker: tracker.update(f))
        stats = tracker.stats
        record(f"tracker, detect_every={every}", ms, boxes, detections=stats.detections, tracked=stats.tracked)
        if every == 5:
            tracked = boxes

    # Frames without a face (a cut-away): the tracker looks for one on every frame and passes them on.
    empty = [frame_without_face((640, 480), seed=i % 10) for i in range(min(50, n_frames))]
    tracker = FaceTracker(detector)
    ms, _ = _timed(empty, lambda _i, f: tracker.update(f))
    record("tracker, frames without a face", ms, no_face=tracker.stats.no_face, frames=len(empty))

    regions = [pad_box(b or truth, frames[0].shape) for b, truth in zip(tracked, clip.boxes, strict=True)]
    ms, crops = _timed(frames, lambda i, f: crop_face(f, regions[i]))
    record("crop (pad + resize to 96x96)", ms)
    ms, _ = _timed(frames, lambda i, f: model_face_input(crops[i]))
    record("model input (mask + pair + /255)", ms)
    generated = [c.transpose(2, 0, 1).astype(np.float32) / 255.0 for c in crops]  # stands in for the model
    ms, _ = _timed(frames, lambda i, f: blend_face(f, generated[i], regions[i]))
    face_px = np.mean([r.height for r in regions])
    record("blend (feathered paste-back)", ms, region_height_mean_px=float(face_px))

    quality = smoothing_quality(detector, TrackerConfig())
    print(
        "smoothing at 20 px/frame: lag {lag_tracker_px:.1f} px (tracker) vs {lag_trailing_mean5_px:.1f} px "
        "(causal 5-frame mean), raw detections {lag_raw_detection_px:.1f} px; still face jitter "
        "{still_jitter_tracker_px:.2f} px vs raw {still_jitter_raw_px:.2f} px (size {still_size_jitter_tracker_px:.2f}"
        " vs {still_size_jitter_raw_px:.2f} px)".format(**quality)
    )
    for det in detectors.values():
        det.close()

    import mediapipe

    return {
        "benchmark": "face_tracker",
        "clip": {
            "frames": n_frames,
            "size": [640, 480],
            "fps": 25.0,
            "content": "astronaut face wandering over a textured background, up to ~12 px/frame, noise std 3",
            "face_height_px_mean": float(np.mean([b.height for b in clip.boxes])),
        },
        "machine": {
            "description": describe_machine(),
            "cpu_model": cpu_model(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "opencv_threads": cv2.getNumThreads(),
            "opencv": cv2.__version__,
            "mediapipe": mediapipe.__version__,
        },
        "tracker_config": dataclasses.asdict(TrackerConfig()),
        "results": results,
        "smoothing": quality,
        "wall_s": time.time() - t_start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250, help="clip length (default 250 = 10 s at 25 fps)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.frames < 20:
        parser.error(f"--frames must be at least 20, got {args.frames}")
    print(
        f"machine: {describe_machine()} ({platform.processor() or 'processor unknown'}, os.cpu_count()={os.cpu_count()})"
    )
    report = run(args.frames)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
