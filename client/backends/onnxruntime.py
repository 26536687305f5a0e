"""In-process ONNX Runtime backend: the CPU default, and what Triton's embedded model runs inside."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from lipsync.client import contract
from lipsync.client.backends.base import BackendError, LipSyncBackend

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(LipSyncBackend):
    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int | None = None,
        max_batch: int = contract.MAX_BATCH,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort  # imported here so `client` imports stay light

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}. Create it with `lipsync-export` (see README.md).")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Intra-op threads default to the cores this process may use: the offline command owns the machine.
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        # Spinning threads burn the cores that tracking, blending and other sessions need; measured under
        # contention at width 0.25, batch 1: p50 46.5 ms with spinning, 25.4 ms without.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"cannot load ONNX model {path}: {exc}") from exc
        names = {i.name for i in self._session.get_inputs()}
        expected = {spec.name for spec in contract.INPUTS}
        if names != expected:
            raise BackendError(f"{path} has inputs {sorted(names)}, the contract expects {sorted(expected)}")
        # An FP16 export takes half-precision inputs; feed it the dtype it declares.
        self._input_dtypes = {
            i.name: np.float16 if i.type == "tensor(float16)" else np.float32 for i in self._session.get_inputs()
        }
        self.model_path = path
        # Provenance written by `lipsync-export` (weights: trained | random, checkpoint, width, ...).
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.mel_offset = _mel_offset(self.metadata, path)
        self.max_batch = max_batch
        log.info("ONNX Runtime model %s loaded (%d threads)", path, options.intra_op_num_threads)

    def _infer_batch(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        feeds = {
            contract.MEL_INPUT.name: mel.astype(self._input_dtypes[contract.MEL_INPUT.name], copy=False),
            contract.FACE_INPUT.name: faces.astype(self._input_dtypes[contract.FACE_INPUT.name], copy=False),
        }
        (out,) = self._session.run([contract.FACE_OUTPUT.name], feeds)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self._session = None


def _mel_offset(metadata: dict[str, str], path: Path) -> int:
    """The weights' audio alignment from the export's metadata; files exported before it was recorded mean 0."""
    value = metadata.get(contract.MEL_OFFSET_METADATA_KEY)
    if value is None:
        return 0
    try:
        return contract.check_mel_offset(int(value))
    except ValueError as exc:
        raise BackendError(
            f"{path}: metadata {contract.MEL_OFFSET_METADATA_KEY}={value!r} is not a mel offset ({exc}); "
            "export the model again with `lipsync-export`"
        ) from exc
