"""PyTorch -> ONNX: the generator with a dynamic batch axis and every other dimension fixed, FP32 and FP16.

Tensor names and shapes come from client/contract.py. The FP16 variant keeps FP32 inputs and
outputs (casts at the edges), so every served model has the same contract.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from lipsync.client import contract

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    max_batch: int = contract.MAX_BATCH,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export `model` (float32, eval) to `path`; the batch axis is dynamic in [1, max_batch].

    `metadata` goes into the file's metadata_props (where the weights came from, the width), so a
    program holding only the ONNX file can say what it runs.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    example = tuple(torch.zeros(spec.batched_shape(min(2, max_batch)), dtype=torch.float32) for spec in contract.INPUTS)
    # max_batch=1 still gets a symbolic axis: clients may send fewer frames than any fixed size.
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    argument_names = ("mel", "face")  # Wav2Lip.forward's parameter names
    # Known noise of the dynamo exporter: torchvision ops it cannot register (we use none), a
    # deprecation inside torch, and the note that both inputs share one batch axis (they do, on purpose).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used.*", category=UserWarning)
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=[spec.name for spec in contract.INPUTS],
            output_names=[spec.name for spec in contract.OUTPUTS],
            dynamic_shapes={name: {0: batch} for name in argument_names},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    if metadata:
        exported = onnx.load(str(path))
        onnx.helper.set_model_props(exported, {str(k): str(v) for k, v in metadata.items()})
        onnx.save(exported, str(path))
    check_onnx_io(path)
    log.info("exported %s (opset %d)", path, opset)
    return path


def check_onnx_io(path: str | Path) -> None:
    """Raise ValueError unless the file's inputs and outputs match the contract (names, dtypes, fixed dims)."""
    model = onnx.load(str(path), load_external_data=False)
    declared = {v.name: v for v in (*model.graph.input, *model.graph.output)}
    for spec in (*contract.INPUTS, *contract.OUTPUTS):
        value = declared.get(spec.name)
        if value is None:
            raise ValueError(f"{path}: tensor {spec.name!r} missing (has {sorted(declared)})")
        elem = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if elem != spec.numpy_dtype:
            raise ValueError(f"{path}: {spec.name} is {elem}, the contract says {spec.numpy_dtype}")
        dims = value.type.tensor_type.shape.dim
        fixed = tuple(d.dim_value for d in dims[1:])
        if fixed != spec.shape or dims[0].dim_value:
            shape = [d.dim_param or d.dim_value for d in dims]
            raise ValueError(f"{path}: {spec.name} has shape {shape}, the contract says (batch, {spec.shape})")


def convert_fp16(source: str | Path, destination: str | Path) -> Path:
    """Write an FP16 copy of an FP32 ONNX model with FP32 inputs/outputs (casts at the edges)."""
    # onnxruntime ships onnxconverter-common's converter; no extra dependency needed.
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    # keep_io_types: the contract's FP32 tensors stay FP32 at the edges.
    half = convert_float_to_float16(model, keep_io_types=True)
    destination = Path(destination)
    onnx.save(half, str(destination))
    check_onnx_io(destination)
    log.info("wrote FP16 variant %s", destination)
    return destination
