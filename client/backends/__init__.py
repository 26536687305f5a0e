"""Backends that run the generator; `create_backend` picks one by name without importing the others."""

from __future__ import annotations

from lipsync.client import model_repository as layout
from lipsync.client.backends.base import BackendError, BackendUnavailable, LipSyncBackend

BACKEND_NAMES = ("onnxruntime", "pytorch", "triton")

# Written by `lipsync-export`; the ONNX Runtime backend's default model.
DEFAULT_ONNX_MODEL = layout.default_onnx_model()
# Shipped in the repository (see training/weights/MODEL_CARD.md).
DEFAULT_CHECKPOINT = layout.SHIPPED_GENERATOR


def create_backend(name: str, **options: object) -> LipSyncBackend:
    """Build a backend by name: "onnxruntime" (model_path), "pytorch" (checkpoint) or "triton" (url, model)."""
    if name == "onnxruntime":
        from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend

        options.setdefault("model_path", DEFAULT_ONNX_MODEL)
        return OnnxRuntimeBackend(**options)
    if name == "pytorch":
        try:
            from lipsync.client.backends.pytorch import PyTorchBackend
        except ImportError as exc:
            raise BackendError(f"the pytorch backend needs the [torch] extra installed: {exc}") from exc
        options.setdefault("checkpoint", DEFAULT_CHECKPOINT)
        return PyTorchBackend(**options)
    if name == "triton":
        from lipsync.client.backends.triton import TritonBackend

        return TritonBackend(**options)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_ONNX_MODEL",
    "BackendError",
    "BackendUnavailable",
    "LipSyncBackend",
    "create_backend",
]
