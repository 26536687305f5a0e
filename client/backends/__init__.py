"""Backends that run the generator; `create_backend` picks one by name without importing the others."""

from __future__ import annotations

from pathlib import Path

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.backends.base import BackendError, BackendUnavailable, LipSyncBackend

BACKEND_NAMES = ("onnxruntime", "pytorch", "triton")

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
) -> LipSyncBackend:
    """The one mapping from what a user chose (backend name, weights file, server address) to a backend.

    onnxruntime runs `weights` (.onnx, default: the exported model), pytorch runs `weights` (a
    checkpoint, default: the shipped one), triton asks the server at `triton_url` for `triton_model`
    (the weights are the server's). Each implementation is imported only when chosen.
    """
    if name == "onnxruntime":
        from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path=weights or DEFAULT_ONNX_MODEL)
    if name == "pytorch":
        try:
            from lipsync.client.backends.pytorch import PyTorchBackend
        except ImportError as exc:
            raise BackendError(f"the pytorch backend needs the [torch] extra installed: {exc}") from exc
        return PyTorchBackend(checkpoint=weights or DEFAULT_CHECKPOINT)
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
    "BackendError",
    "BackendUnavailable",
    "LipSyncBackend",
    "create_backend",
]
