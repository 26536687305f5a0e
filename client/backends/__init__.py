"""Backends that run the generator; `create_backend` picks one by name without importing the others."""

from __future__ import annotations

from pathlib import Path

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.backends.base import BackendError, BackendUnavailable, LipSyncBackend
from lipsync.client.backends.cpu_paths import PRECISIONS, CpuArtifacts, check_precision, choose

BACKEND_NAMES = ("onnxruntime", "pytorch", "triton")
# The CPU paths each in-process backend runs from its own weights (precision "auto" chooses among them).
ONNXRUNTIME_PATHS = ("fp32", "int8")
PYTORCH_PATHS = ("fp32", "bf16")

# Written by `lipsync-export`; the ONNX Runtime backend's default model.
DEFAULT_ONNX_MODEL = layout.default_onnx_model()
# Shipped in the repository (see training/weights/MODEL_CARD.md).
DEFAULT_CHECKPOINT = layout.SHIPPED_GENERATOR


DEFAULT_TRITON_URL = "127.0.0.1:8001"


def create_backend(
    name: str,
    *,
    weights: str | Path | None = None,
    triton_url: str | None = None,
    triton_model: str = contract.EMBEDDED_MODEL,
    timeout_s: float | None = None,
    precision: str = "fp32",
) -> LipSyncBackend:
    """The one mapping from what a user chose (backend name, weights file, server address) to a backend.

    onnxruntime runs `weights` (.onnx, default: the exported model), pytorch runs `weights` (a
    checkpoint, default: the shipped one), triton asks the server at `triton_url` for `triton_model`
    (the weights are the server's). Each implementation is imported only when chosen.

    `precision` picks the in-process CPU path (client/backends/cpu_paths.py): onnxruntime runs fp32 (the
    .onnx itself) or int8 (its model_int8.onnx sibling, written by lipsync-export), pytorch runs fp32 or
    bf16 (CPUs with native bf16 only); "auto" measures the backend's paths for about a second and keeps
    the fastest. Paths never mix backends: each backend's files are one set of weights. The default stays
    fp32, whose faces the other backends and the served model match at FP32 tolerance; int8 and bf16 are
    opt-in (measured 45-50 and 54-58 dB PSNR against FP32 on the shipped generators).
    """
    check_precision(precision)
    if name == "onnxruntime":
        onnx_fp32 = Path(weights or DEFAULT_ONNX_MODEL)
        if precision == "fp32":
            from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend

            return OnnxRuntimeBackend(model_path=onnx_fp32)
        return choose(precision, CpuArtifacts.beside(onnx_fp32), candidates=ONNXRUNTIME_PATHS).backend
    if name == "pytorch":
        try:
            from lipsync.client.backends.pytorch import PyTorchBackend
        except ImportError as exc:
            raise BackendError(f"the pytorch backend needs the [torch] extra installed: {exc}") from exc
        checkpoint = Path(weights or DEFAULT_CHECKPOINT)
        if precision == "fp32":
            return PyTorchBackend(checkpoint=checkpoint)
        return choose(precision, CpuArtifacts(checkpoint=checkpoint), candidates=PYTORCH_PATHS).backend
    if precision != "fp32":
        raise ValueError(f"precision {precision!r} is for the in-process backends; the triton server sets its own")
    if name == "triton":
        from lipsync.client.backends.triton import TritonBackend

        timeout = {} if timeout_s is None else {"timeout_s": timeout_s}
        return TritonBackend(url=triton_url or DEFAULT_TRITON_URL, model=triton_model, **timeout)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_ONNX_MODEL",
    "DEFAULT_TRITON_URL",
    "PRECISIONS",
    "BackendError",
    "BackendUnavailable",
    "LipSyncBackend",
    "create_backend",
]
