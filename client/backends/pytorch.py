"""Runs the generator in-process with PyTorch, behind client's LipSyncBackend interface.

On CPU (and on a GPU without CUDA graphs) it is plain eager inference. On CUDA with
`cuda_graphs=True` it captures one CUDA graph per batch-size bucket and pads every batch up
to its bucket: the fast path used inside Triton's Python backend where TensorRT is absent.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipsync.client import contract
from lipsync.client.backends.base import BackendError, LipSyncBackend
from lipsync.client.networks.wav2lip import Wav2Lip

logger = logging.getLogger(__name__)

_WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuDNN picks its algorithms here)


def graph_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes that get a CUDA graph: powers of two below `max_batch`, then `max_batch` itself."""
    buckets = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return (*buckets, max_batch)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    mel: torch.Tensor  # static inputs: a batch is copied into their first rows before replay
    face: torch.Tensor
    out: torch.Tensor


class PyTorchBackend(LipSyncBackend):
    """The generator in eager PyTorch (CPU or CUDA), optionally FP16 and CUDA-graph accelerated on CUDA."""

    name = "pytorch"

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        model: Wav2Lip | None = None,
        device: str = "cpu",
        fp16: bool = False,
        max_batch: int = contract.MAX_BATCH,
        cuda_graphs: bool = False,
    ) -> None:
        if (checkpoint is None) == (model is None):
            raise ValueError("PyTorchBackend needs exactly one of checkpoint= or model=")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} requested but CUDA is not available")
        if fp16 and self.device.type != "cuda":
            raise ValueError(f"fp16 needs a CUDA device, got device={device!r}")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got device={device!r}")
        self.max_batch = max_batch
        self.dtype = torch.float16 if fp16 else torch.float32
        if model is None:
            model = Wav2Lip.from_checkpoint(checkpoint, map_location="cpu")
        # The weights' audio alignment: files saved before it existed load with offset 0.
        self.mel_offset = model.config.mel_offset
        # The backend owns the module from here on: it is moved and cast in place.
        self.model: Wav2Lip | None = model.eval().to(device=self.device, dtype=self.dtype)
        self._graphs: dict[int, _Graph] = {}
        # One set of static buffers per bucket: replays (and the copies around them) must not interleave.
        self._lock = threading.Lock()
        if cuda_graphs:
            self._capture_graphs()

    @property
    def uses_cuda_graphs(self) -> bool:
        return bool(self._graphs)

    def _capture_graphs(self) -> None:
        assert self.model is not None
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        # Largest first, so smaller graphs reuse the memory the larger ones freed in the shared pool.
        for size in sorted(graph_buckets(self.max_batch), reverse=True):
            with torch.inference_mode():
                mel = torch.zeros(contract.MEL_INPUT.batched_shape(size), device=self.device, dtype=self.dtype)
                face = torch.zeros(contract.FACE_INPUT.batched_shape(size), device=self.device, dtype=self.dtype)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(_WARMUP_RUNS):
                        self.model(mel, face)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    out = self.model(mel, face)
            self._graphs[size] = _Graph(graph, mel, face, out)
        torch.cuda.synchronize(self.device)
        logger.info("captured CUDA graphs for batch sizes %s (%s)", sorted(self._graphs), self.dtype)

    def _infer_batch(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise BackendError("PyTorchBackend is closed")
        n = mel.shape[0]
        with torch.inference_mode():
            mel_t = torch.from_numpy(mel).to(self.device, self.dtype, non_blocking=True)
            face_t = torch.from_numpy(faces).to(self.device, self.dtype, non_blocking=True)
            if not self._graphs:
                return self.model(mel_t, face_t).float().cpu().numpy()
            size = min(b for b in self._graphs if b >= n)
            g = self._graphs[size]
            with self._lock:
                # Rows n: keep the previous call's inputs; in eval mode every op is per sample,
                # so they never reach rows :n and need no clearing.
                g.mel[:n].copy_(mel_t)
                g.face[:n].copy_(face_t)
                g.graph.replay()
                return g.out[:n].float().cpu().numpy()

    def close(self) -> None:
        with self._lock:
            self._graphs.clear()
            self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
