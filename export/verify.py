"""Checks each export stage against the one before: inputs (random and real) and stated tolerances.

A comparison reports the max and mean absolute error of the outputs (faces in [0, 1]) and their PSNR; a
stage passes when both errors are within its tolerance (and the PSNR above its floor, where the stage states
one). Failures raise VerificationError carrying the measured numbers.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.client import contract

# Stated tolerances on generated faces in [0, 1] (max abs, mean abs).
FP32_TOLERANCE = (1e-4, 1e-5)  # ONNX FP32 vs PyTorch FP32: only summation order differs
FP16_TOLERANCE = (2e-2, 2e-3)  # FP16 (ONNX or TensorRT) vs FP32: 10-bit mantissa through ~40 layers
# PyTorch bf16 on the CPU vs FP32: an 8-bit mantissa. Measured on the three shipped width-0.25 generators,
# 64 real inputs each: max abs 0.007-0.011, mean abs 0.0009-0.0015, PSNR 54.3-58.1 dB; about twice passes.
BF16_TOLERANCE = (3e-2, 3e-3)
BF16_MIN_PSNR_DB = 50.0

# The astronaut's face in skimage.data.astronaut() (512x512), padded like a tracker's box.
ASTRONAUT_FACE_BOX = (165, 55, 295, 195)  # x1, y1, x2, y2
SPEECH_TEXT = "The quick brown fox jumps over the lazy dog, while five wizards box quickly."
SPEECH_FPS = 25.0

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


class VerificationError(RuntimeError):
    """A stage's outputs differ from the reference by more than its tolerance."""

    def __init__(self, result: Comparison) -> None:
        self.result = result
        super().__init__(result.describe())


@dataclass(frozen=True)
class Comparison:
    stage: str
    inputs: str
    batch: int
    max_abs: float
    mean_abs: float
    max_tolerance: float
    mean_tolerance: float
    # PSNR of the candidate against the reference (peak 1.0), in dB; inf when they are equal.
    psnr_db: float = math.nan
    min_psnr_db: float | None = None  # a stage's floor, where it states one (the lossy ones: INT8, bf16)

    @property
    def ok(self) -> bool:
        errors_ok = self.max_abs <= self.max_tolerance and self.mean_abs <= self.mean_tolerance
        return errors_ok and (self.min_psnr_db is None or self.psnr_db >= self.min_psnr_db)

    def describe(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        floor = f" (min {self.min_psnr_db:g})" if self.min_psnr_db is not None else ""
        return (
            f"{self.stage} on {self.inputs} inputs (batch {self.batch}): max abs {self.max_abs:.3g} "
            f"(tolerance {self.max_tolerance:.3g}), mean abs {self.mean_abs:.3g} "
            f"(tolerance {self.mean_tolerance:.3g}), PSNR {self.psnr_db:.1f} dB{floor} {verdict}"
        )


def compare(
    stage: str,
    inputs: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: tuple[float, float],
    min_psnr_db: float | None = None,
) -> Comparison:
    if reference.shape != candidate.shape:
        raise ValueError(f"{stage}: output shape {candidate.shape} differs from the reference {reference.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    if not np.isfinite(diff).all():
        max_abs = mean_abs = float("inf")
        psnr = -float("inf")
    else:
        max_abs, mean_abs = float(diff.max()), float(diff.mean())
        psnr = psnr_db(float(np.mean(diff**2)))
    return Comparison(
        stage, inputs, int(reference.shape[0]), max_abs, mean_abs, *tolerance, psnr_db=psnr, min_psnr_db=min_psnr_db
    )


def psnr_db(mse: float) -> float:
    """PSNR of faces in [0, 1] (peak 1.0) from their mean squared error."""
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def random_inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mel windows in the mel's range [-4, 4] and face pairs in [0, 1] with the target's lower half zeroed."""
    rng = np.random.default_rng(seed)
    mel = rng.uniform(-4.0, 4.0, contract.MEL_INPUT.batched_shape(batch)).astype(np.float32)
    faces = rng.uniform(0.0, 1.0, contract.FACE_INPUT.batched_shape(batch)).astype(np.float32)
    faces[:, :3, contract.MASK_START_ROW :, :] = 0.0
    return mel, faces


@functools.cache
def _speech_mel() -> np.ndarray:
    from lipsync.client.audio import load_audio, mel_windows, melspectrogram

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("real-input verification needs espeak-ng for speech (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([espeak, "-w", str(wav), SPEECH_TEXT], check=True, capture_output=True)
        samples = load_audio(wav)
    return mel_windows(melspectrogram(samples), SPEECH_FPS)


@functools.cache
def _astronaut_bgr() -> np.ndarray:
    try:
        from skimage import data
    except ImportError as exc:
        raise RuntimeError("real-input verification needs scikit-image for its test photo (a real face)") from exc
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def real_inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A real face (skimage's astronaut, jittered like a tracker's box) and real speech (espeak-ng) windows."""
    from lipsync.client.face_crop import CropRegion, batch_face_inputs, crop_face

    rng = np.random.default_rng(seed)
    windows = _speech_mel()
    picks = rng.choice(len(windows), size=batch, replace=len(windows) < batch)
    mel = windows[picks][:, None].astype(np.float32)
    frame = _astronaut_bgr()
    x1, y1, x2, y2 = ASTRONAUT_FACE_BOX
    reference = crop_face(frame, CropRegion(x1, y1, x2, y2))
    targets = []
    for dx, dy in rng.integers(-6, 7, size=(batch, 2)):
        targets.append(crop_face(frame, CropRegion(x1 + dx, y1 + dy, x2 + dx, y2 + dy)))
    return mel, batch_face_inputs(targets, [reference] * batch)


INPUT_SETS: dict[str, Callable[[int, int], tuple[np.ndarray, np.ndarray]]] = {
    "random": random_inputs,
    "real": real_inputs,
}


def verify(
    stage: str,
    reference: Runner,
    candidate: Runner,
    tolerance: tuple[float, float],
    *,
    samples: int,
    input_sets: tuple[str, ...] = ("random", "real"),
    batches: tuple[int, ...] = (1,),
    seed: int = 0,
    min_psnr_db: float | None = None,
) -> list[Comparison]:
    """Compare two runners on each input set, at batch 1 and at `samples`; raise on the first failure."""
    results = []
    for name in input_sets:
        for batch in sorted({*batches, samples}):
            mel, faces = INPUT_SETS[name](batch, seed)
            result = compare(stage, name, reference(mel, faces), candidate(mel, faces), tolerance, min_psnr_db)
            results.append(result)
            if not result.ok:
                raise VerificationError(result)
    return results
