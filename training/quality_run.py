"""Running a generator over a clip through the product's own pieces (face tracker, crop, backend,
compositor), in memory, and measuring the result with training/quality.py: the quality benchmark and
the enrolment report share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lipsync.client import contract
from lipsync.client.audio import mel_windows, melspectrogram
from lipsync.client.backends.base import LipSyncBackend
from lipsync.client.blend import mouth_support
from lipsync.client.compositing import Compositor
from lipsync.client.face_crop import CropRegion, crop_face, model_face_input, pad_box
from lipsync.client.face_landmarks import FaceLandmarker, lip_opening
from lipsync.client.face_tracking import FaceTracker, MediaPipeFaceDetector, TrackerConfig
from lipsync.client.mouth_mask import MouthShape
from lipsync.training import quality

FPS = 25
PADS = (0, 10, 0, 0)  # the offline command's default padding (top, bottom, left, right)


@dataclass
class Item:
    """One face source with the speech that drives it; `own` when that speech is the face's own."""

    name: str
    kind: str  # "synthetic" or "real_still"
    frames: list[np.ndarray]
    wav: np.ndarray
    own: bool
    still: bool
    input_landmarks: list[np.ndarray | None] = field(default_factory=list)
    regions: list[CropRegion | None] = field(default_factory=list)


def fit_audio(wav: np.ndarray, n_frames: int) -> np.ndarray:
    samples = int(round(n_frames * contract.SAMPLE_RATE / FPS))
    return np.pad(wav, (0, max(0, samples - len(wav))))[:samples].astype(np.float32)


def track_inputs(item: Item) -> None:
    """The face regions (the product's tracker) and the input's own landmarks, once per item."""
    tracker = FaceTracker(MediaPipeFaceDetector(), TrackerConfig(detect_every=1 if item.still else 5))
    with FaceLandmarker(video=not item.still) as marker:
        for frame in item.frames:
            box = tracker.update(frame)
            region = pad_box(box, frame.shape, PADS) if box is not None else None
            item.regions.append(region)
            item.input_landmarks.append(marker.locate(frame, region) if region is not None else None)


def lip_sync(backend: LipSyncBackend, item: Item, blend: str) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Output frames and, per frame, the pixels the blend was allowed to change (None: no face)."""
    windows = mel_windows(melspectrogram(item.wav), FPS, len(item.frames), mel_offset=backend.mel_offset)
    outputs, supports = list(item.frames), [None] * len(item.frames)
    with Compositor(blend, still=item.still) as compositor:
        with_face = [i for i, r in enumerate(item.regions) if r is not None]
        for start in range(0, len(with_face), 32):
            idx = with_face[start : start + 32]
            faces = np.stack([model_face_input(crop_face(item.frames[i], item.regions[i])) for i in idx])
            generated = backend.infer(windows[idx][:, None].astype(np.float32), faces)
            for j, i in enumerate(idx):
                frame, region = item.frames[i], item.regions[i]
                outputs[i] = compositor.compose(frame, generated[j], region)
                shape = compositor.last_shape
                if shape is None:  # lower_face: the mouth mask the mouth blend would have used
                    marks = item.input_landmarks[i]
                    shape = MouthShape.from_face_landmarks(marks, region) if marks is not None else None
                supports[i] = mouth_support(frame.shape, region, shape) if shape is not None else None
    return outputs, supports


def measure(item: Item, outputs: list[np.ndarray], supports: list, expert_scorer) -> dict:
    """The figures of one (model, blend, item) run."""
    psnrs, ssims, de_changed, de_skin, sharp_in, sharp_out = [], [], [], [], [], []
    outside_changed = outside_total = 0
    openings = []
    with FaceLandmarker(video=not item.still) as marker:
        for i, (frame, out) in enumerate(zip(item.frames, outputs, strict=True)):
            marks, region = item.input_landmarks[i], item.regions[i]
            out_marks = marker.locate(out, region) if region is not None else None
            openings.append(lip_opening(out_marks) if out_marks is not None else np.nan)
            if marks is None:
                continue
            x1, y1, x2, y2 = quality.lower_face_box(marks, frame.shape)
            psnrs.append(quality.psnr(out[y1:y2, x1:x2], frame[y1:y2, x1:x2]))
            ssims.append(quality.ssim(out[y1:y2, x1:x2], frame[y1:y2, x1:x2]))
            changed = (out != frame).any(axis=2)
            if changed.any():
                de_changed.append(quality.delta_e(out, frame, changed))
            de_skin.append(quality.delta_e(out, frame, quality.skin_mask(marks, frame.shape)))
            mx1, my1, mx2, my2 = quality.mouth_box(marks, frame.shape)
            sharp_in.append(quality.sharpness(frame[my1:my2, mx1:mx2]))
            sharp_out.append(quality.sharpness(out[my1:my2, mx1:mx2]))
            if supports[i] is not None:
                outside = ~supports[i]
                outside_changed += int((changed & outside).sum())
                outside_total += int(outside.sum())
    envelope = quality.speech_envelope(item.wav, len(item.frames), FPS)
    sync, lag = quality.best_lag_correlation(np.array(openings), envelope)
    finite_psnr = [p for p in psnrs if np.isfinite(p)]
    result = {
        "frames": len(item.frames),
        "frames_measured": len(psnrs),
        "lower_face_psnr_db": float(np.mean(finite_psnr)) if finite_psnr else float("inf"),
        "lower_face_ssim": float(np.mean(ssims)) if ssims else float("nan"),
        "delta_e_changed": float(np.mean(de_changed)) if de_changed else 0.0,
        "delta_e_skin": float(np.nanmean(de_skin)) if de_skin else float("nan"),
        "sharpness_ratio": float(np.mean(sharp_out) / max(np.mean(sharp_in), 1e-9)) if sharp_in else float("nan"),
        "changed_outside_mask": outside_changed / max(outside_total, 1),
        "changed_outside_mask_pixels": outside_changed,
        "sync_lip_vs_loudness": sync,
        "sync_lag_frames": lag,
        "lip_opening_range": float(np.nanpercentile(openings, 95) - np.nanpercentile(openings, 5))
        if np.isfinite(openings).any()
        else float("nan"),
    }
    if expert_scorer is not None:
        result.update(expert_lse(expert_scorer, item, outputs))
    return result


def expert_lse(scorer, item: Item, outputs: list[np.ndarray]) -> dict:
    from lipsync.training.lse import lse_scores, window_count

    crops = [
        crop_face(out, region) if region is not None else None
        for out, region in zip(outputs, item.regions, strict=True)
    ]
    if any(c is None for c in crops):
        return {}
    n = window_count(len(crops), len(item.wav))
    if n == 0:
        return {}
    scores = lse_scores(scorer.video_features(crops, n), scorer.audio_features(item.wav, n))
    return {"lse_d": scores.lse_d, "lse_c": scores.lse_c, "lse_offset": scores.offset}


def input_reference(item: Item) -> dict | None:
    """The input's lip opening against its own speech (what a real recording scores); None for stills and dubs."""
    if item.still or not item.own:
        return None
    openings = np.array([lip_opening(m) if m is not None else np.nan for m in item.input_landmarks])
    sync, lag = quality.best_lag_correlation(openings, quality.speech_envelope(item.wav, len(item.frames), FPS))
    return {"sync_lip_vs_loudness": sync, "sync_lag_frames": lag}


def load_expert(path=None):
    """An LSE scorer with the shipped expert (or `path`); None when the file is missing."""
    import torch

    from lipsync.client.model_repository import SHIPPED_EXPERT
    from lipsync.client.networks.syncnet import SyncNet
    from lipsync.training.evaluate import ExpertScorer

    path = path or SHIPPED_EXPERT
    if not path.is_file():
        return None
    expert = SyncNet.from_checkpoint(path, map_location="cpu").eval()
    return ExpertScorer(expert, torch.device("cpu"), 32, str(path.name))
