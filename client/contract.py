"""The I/O contract of the served lip-sync model: tensor names, shapes, dtypes, batch limits.

Export, the Triton configs, every backend, the benchmarks and the tests import these values;
a tensor name or shape is never written down anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Audio and video conventions of the original network (docs/network-facts.md, sections 1.6 and 4).
SAMPLE_RATE = 16_000
MEL_BINS = 80
MEL_WINDOW_FRAMES = 16  # 16 mel frames = 200 ms of audio per video frame
MEL_FRAMES_PER_SECOND = 80  # hop 200 samples at 16 kHz
FACE_SIZE = 96  # the generator works on 96x96 BGR crops in [0, 1]
FACE_CHANNELS = 6  # [masked target (BGR), reference (BGR)]
MASK_START_ROW = FACE_SIZE // 2  # rows 48..95 of the target are zeroed

# The look-ahead (docs/latency.md): the mel window of video frame t starts `mel_offset` columns
# (12.5 ms each) from t's own column. The released network and offset 0 reach 200 ms ahead; a
# model trained with offset -10 needs only 75 ms of future audio. The offset belongs to the
# weights: it is saved in the checkpoint's config and in the exported model's metadata, and
# whatever cuts mel windows reads it from there.
MEL_COLUMN_MS = 1000 / MEL_FRAMES_PER_SECOND  # 12.5
FULL_LOOKAHEAD_MS = MEL_WINDOW_FRAMES * MEL_COLUMN_MS  # 200 ms: offset 0
MEL_OFFSET_RANGE = (-MEL_WINDOW_FRAMES, 0)  # from a window wholly in the past to the released alignment
MEL_OFFSET_METADATA_KEY = "mel_offset"  # ONNX metadata_props and Triton model-config parameter


def lookahead_ms(mel_offset: int) -> float:
    """How far past a frame's time its mel window reaches, in ms, for a model trained with `mel_offset`."""
    check_mel_offset(mel_offset)
    return FULL_LOOKAHEAD_MS + MEL_COLUMN_MS * mel_offset


def check_mel_offset(mel_offset: object) -> int:
    low, high = MEL_OFFSET_RANGE
    if isinstance(mel_offset, bool) or not isinstance(mel_offset, int) or not low <= mel_offset <= high:
        raise ValueError(f"mel_offset must be an integer number of mel columns in [{low}, {high}], got {mel_offset!r}")
    return mel_offset


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output, without the batch axis."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # Triton dtype name

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(TRITON_TO_NUMPY[self.dtype])

    def batched_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape)


TRITON_TO_NUMPY = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "FP32": np.float32, "FP16": np.float16}

MEL_INPUT = TensorSpec("mel_window", (1, MEL_BINS, MEL_WINDOW_FRAMES), "FP32")
FACE_INPUT = TensorSpec("face_pair", (FACE_CHANNELS, FACE_SIZE, FACE_SIZE), "FP32")
FACE_OUTPUT = TensorSpec("generated_face", (3, FACE_SIZE, FACE_SIZE), "FP32")
INPUTS = (MEL_INPUT, FACE_INPUT)
OUTPUTS = (FACE_OUTPUT,)

# Largest batch any served model accepts; the TensorRT profile's max and Triton's max_batch_size.
MAX_BATCH = 32
# Batch sizes the dynamic batcher prefers to form (and the TensorRT profile's opt point is 8).
PREFERRED_BATCHES = (4, 8, 16)
OPT_BATCH = 8

# Served model names. The embedded server (Python backend only) loads EMBEDDED_MODEL;
# GPU hosts running the official Triton container load the ONNX and TensorRT models.
EMBEDDED_MODEL = "wav2lip_python"
ONNX_MODEL = "wav2lip_onnx"
TENSORRT_MODEL = "wav2lip_trt"
SERVED_MODELS = (EMBEDDED_MODEL, ONNX_MODEL, TENSORRT_MODEL)
# The live default: the embedded model's code on the shipped low-look-ahead weights (75 ms of future
# audio instead of 200; docs/latency.md), written by `lipsync-export --live`. The gateway serves it;
# the offline command keeps the 200 ms model, which has the better sync figures.
LIVE_MODEL = "wav2lip_live"


def check_batch(mel: np.ndarray, faces: np.ndarray) -> int:
    """Validate a batch against the contract and return its size; raise ValueError naming the bad value."""
    if mel.ndim != 4 or mel.shape[1:] != MEL_INPUT.shape:
        raise ValueError(
            f"{MEL_INPUT.name} must have shape (B, {', '.join(map(str, MEL_INPUT.shape))}), got {mel.shape}"
        )
    if faces.ndim != 4 or faces.shape[1:] != FACE_INPUT.shape:
        raise ValueError(
            f"{FACE_INPUT.name} must have shape (B, {', '.join(map(str, FACE_INPUT.shape))}), got {faces.shape}"
        )
    if mel.shape[0] != faces.shape[0]:
        raise ValueError(f"batch sizes differ: {MEL_INPUT.name} {mel.shape[0]} vs {FACE_INPUT.name} {faces.shape[0]}")
    if mel.shape[0] == 0:
        raise ValueError("empty batch")
    return int(mel.shape[0])
