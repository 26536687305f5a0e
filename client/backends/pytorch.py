"""Runs the generator in-process with PyTorch, behind client's LipSyncBackend interface.

On CPU (and on a GPU without CUDA graphs) it is plain eager inference; with `bf16=True` on a CPU
with native bf16 (AMX or AVX512_BF16) it runs bf16 weights and activations, BatchNorm folded into the
convolutions, channels-last (client/backends/cpu_paths.py measures it against ONNX Runtime). On CUDA
with `cuda_graphs=True` it captures one CUDA graph per batch-size bucket and pads every batch up
to its bucket: the fast path used inside Triton's Python backend where TensorRT is absent.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lipsync.client import contract
from lipsync.client.backends.base import BackendError, LipSyncBackend
from lipsync.client.backends.cpu_paths import require_native_bf16
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
        bf16: bool = False,
        max_batch: int = contract.MAX_BATCH,
        cuda_graphs: bool = False,
        threads: int | None = None,
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
        if bf16 and (fp16 or self.device.type != "cpu"):
            raise ValueError(f"bf16 is the CPU path (fp16 is CUDA's), got device={device!r} fp16={fp16}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.bf16_flag = require_native_bf16() if bf16 else None
        if threads is not None:
            # Process-wide: PyTorch has no per-module thread count. Inside Triton's stub the process is the model's.
            torch.set_num_threads(threads)
        self.max_batch = max_batch
        self.dtype = torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32
        if model is None:
            model = Wav2Lip.from_checkpoint(checkpoint, map_location="cpu")
        # The weights' audio alignment: files saved before it existed load with offset 0.
        self.mel_offset = model.config.mel_offset
        # The backend owns the module from here on: it is moved, cast (and for bf16 folded) in place.
        model = model.eval()
        if bf16:
            # Folding BatchNorm into the convolutions (in fp32, before the cast) saves a pass over every
            # activation and rounds once instead of twice: max abs error vs FP32 0.015 -> 0.008 (shipped
            # width-0.25 generator, 8 real inputs).
            fold_batchnorm(model)
        # Channels-last is the layout oneDNN's bf16 (and AMX) convolutions run without reordering.
        self.memory_format = torch.channels_last if bf16 else torch.contiguous_format
        self.model: Wav2Lip | None = model.to(device=self.device, dtype=self.dtype)
        if bf16:
            self.model = self.model.to(memory_format=self.memory_format)
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
                face_t = face_t.contiguous(memory_format=self.memory_format)
                return self.model(mel_t, face_t).float().contiguous().cpu().numpy()
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


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that follows a convolution in a `conv_block` into that convolution.

    The BatchNorm becomes an Identity, so the module no longer loads checkpoints strictly: only for inference.
    """
    for module in model.modules():
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[1], nn.BatchNorm2d):
            conv = module[0]
            if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d):
                module[0] = fuse_conv_bn_eval(
                    conv.eval(), module[1].eval(), transpose=isinstance(conv, nn.ConvTranspose2d)
                )
                module[1] = nn.Identity()
    return model
