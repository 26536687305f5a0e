"""How well BlazeFace finds the rendered faces, and where its box sits relative to the renderer's.

    python -m lipsync.training.data.synthetic.calibrate --frames 600

Renders random frames (new identity, scene, pose and mouth shape each), runs the project's
detector (client.face_tracking.MediaPipeFaceDetector: full range to find, short range to place) and
short range alone on each, and prints the detection rates and the mean box offsets that
detector.CALIBRATION holds.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from .detector import CALIBRATION, to_detector_convention
from .identity import sample_identity
from .renderer import Camera, Face, pose_track, sample_scene
from .visemes import VISEMES


def measure(frames: int = 600, seed: int = 0, frame_size: int = 256) -> dict:
    from lipsync.client.face_tracking import SHORT_RANGE, MediaPipeFaceDetector

    names = list(VISEMES)
    offsets, ious = [], []
    found = {"default": 0, "short_range": 0}
    with MediaPipeFaceDetector() as default, MediaPipeFaceDetector(model_selection=SHORT_RANGE) as short:
        for i in range(frames):
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCA1, i]))
            scene = sample_scene(rng, (frame_size, frame_size))
            face = Face(sample_identity(seed, i), scene)
            camera = Camera(face, scene, i)
            pose = pose_track(scene, 1, 25, 2 * face.lay.a)[0]
            mouth = np.array(VISEMES[names[int(rng.integers(len(names)))]].target, np.float32)
            image = camera.compose(face.canvas(mouth, int(rng.integers(2))), pose)
            box = default.detect(image)
            found["short_range"] += short.detect(image) is not None
            if box is None:
                continue
            found["default"] += 1
            x1, y1, x2, y2 = camera.face_box(pose)
            w, h = x2 - x1, y2 - y1
            offsets.append(((box.x1 - x1) / w, (box.y1 - y1) / h, (box.x2 - x2) / w, (box.y2 - y2) / h))
            ious.append(box.iou(to_detector_convention((x1, y1, x2, y2))))
    off = np.array(offsets) if offsets else np.zeros((0, 4))
    return {
        "frames": frames,
        "detected_fraction": {k: round(v / frames, 4) for k, v in found.items()},
        "calibration_measured": [round(float(v), 3) for v in off.mean(axis=0)] if len(off) else None,
        "calibration_in_use": list(CALIBRATION),
        "median_iou_with_calibrated_render_box": round(float(np.median(ious)), 3) if ious else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame-size", type=int, default=256)
    args = parser.parse_args()
    print(json.dumps(measure(args.frames, args.seed, args.frame_size), indent=2))


if __name__ == "__main__":
    main()
