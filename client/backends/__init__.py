"""Backends that run the generator; `create_backend` picks one by name without importing the others."""

from __future__ import annotations

from pathlib import Path

from client.backends.base import BackendError, BackendUnavailable, LipSyncBackend

BACKEND_NAMES = ("onnxruntime", "pytorch", "triton")

REPO_ROOT = Path(__file__).resolve().parents[2]
# Written by `lipsync-export`; the ONNX Runtime backend's default model.
DEFAULT_ONNX_MODEL = REPO_ROOT / "model_repository" / "wav2lip_onnx" / "1" / "model.onnx"
# Shipped in the repository by the training issue (see training/weights/MODEL_CARD.md).
DEFAULT_CHECKPOINT = REPO_ROOT / "training" / "weights" / "wav2lip_cpu.pt"


def create_backend(name: str, **options: object) -> LipSyncBackend:
    """Build a backend by name: "onnxruntime" (model_path), "pytorch" (checkpoint) or "triton" (url, model)."""
    if name == "onnxruntime":
        from client.backends.onnxruntime import OnnxRuntimeBackend

        options.setdefault("model_path", DEFAULT_ONNX_MODEL)
        return OnnxRuntimeBackend(**options)
    if name == "pytorch":
        try:
            from training.pytorch_backend import PyTorchBackend
        except ImportError as exc:
            raise BackendError(f"the pytorch backend needs the [torch] extra installed: {exc}") from exc
        options.setdefault("checkpoint", DEFAULT_CHECKPOINT)
        return PyTorchBackend(**options)
    if name == "triton":
        from client.backends.triton import TritonBackend

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
