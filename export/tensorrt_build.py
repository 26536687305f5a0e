"""ONNX -> TensorRT FP16 engine with the TensorRT Python API, and a runner to verify it.

TensorRT cannot be installed from this project's package registries; it exists in NVIDIA's
containers on GPU hosts (the Triton and PyTorch NGC images). Elsewhere `tensorrt_unavailable()`
says why and the export stops. Device buffers come from torch (no pycuda needed).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.client import contract

log = logging.getLogger(__name__)


def tensorrt_unavailable() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else the reason they are not."""
    if importlib.util.find_spec("tensorrt") is None:
        return (
            "TensorRT is not installed here (it is not on this project's registries); build the engine inside "
            "NVIDIA's Triton or PyTorch container on a GPU host, e.g. nvcr.io/nvidia/tritonserver:<yy.mm>-py3"
        )
    try:
        import torch
    except ImportError:
        return "the TensorRT stage needs PyTorch with CUDA for its device buffers"
    if not torch.cuda.is_available():
        return "TensorRT is installed but no CUDA GPU is available"
    return None


@dataclass(frozen=True)
class EngineSpec:
    """The optimization profile (batch sizes) and builder settings of an engine."""

    min_batch: int = 1
    opt_batch: int = contract.OPT_BATCH
    max_batch: int = contract.MAX_BATCH
    fp16: bool = True
    workspace_mib: int = 2048

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= min_batch <= opt_batch <= max_batch, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    spec: EngineSpec = EngineSpec(),
    timing_cache: str | Path | None = None,
) -> Path:
    """Parse the ONNX file, build a serialized engine with one batch profile, and write it (and the timing cache)."""
    reason = tensorrt_unavailable()
    if reason:
        raise RuntimeError(reason)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode from TensorRT 10 on; the flag is needed (and accepted) before that.
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    if spec.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for tensor in contract.INPUTS:
        profile.set_shape(
            tensor.name,
            tensor.batched_shape(spec.min_batch),
            tensor.batched_shape(spec.opt_batch),
            tensor.batched_shape(spec.max_batch),
        )
    config.add_optimization_profile(profile)

    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info(
        "built %s (TensorRT %s, batch %d/%d/%d)",
        engine_path,
        trt.__version__,
        spec.min_batch,
        spec.opt_batch,
        spec.max_batch,
    )
    return engine_path


class TensorRTRunner:
    """Runs a serialized engine on the GPU with torch-allocated buffers (TensorRT 10 tensor API)."""

    def __init__(self, engine_path: str | Path, device: int = 0) -> None:
        reason = tensorrt_unavailable()
        if reason:
            raise RuntimeError(reason)
        import tensorrt as trt
        import torch

        self._torch = torch
        self.device = torch.device("cuda", device)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize {engine_path} (built with another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.max_batch = int(self.engine.get_tensor_profile_shape(contract.INPUTS[0].name, 0)[2][0])

    def __call__(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        torch = self._torch
        batch = contract.check_batch(mel, faces)
        if batch > self.max_batch:
            raise ValueError(f"batch {batch} exceeds the engine's profile max {self.max_batch}")
        stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            buffers = {
                contract.MEL_INPUT.name: torch.from_numpy(np.ascontiguousarray(mel, np.float32)).to(self.device),
                contract.FACE_INPUT.name: torch.from_numpy(np.ascontiguousarray(faces, np.float32)).to(self.device),
            }
            for spec in contract.INPUTS:
                self.context.set_input_shape(spec.name, tuple(buffers[spec.name].shape))
            out = torch.empty(contract.FACE_OUTPUT.batched_shape(batch), dtype=torch.float32, device=self.device)
            buffers[contract.FACE_OUTPUT.name] = out
            for name, tensor in buffers.items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu().numpy()
