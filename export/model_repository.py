"""Writes Triton's model repository: one config.pbtxt per served model, rendered from client/contract.py,
plus the artifacts export produced (ONNX files, the TensorRT engine, the PyTorch checkpoint), and an
enrolled avatar's own model (avatar_<name>: the embedded Python model on the avatar's weights).

Every config names the exported weights' mel offset (contract.lookahead_ms) as a parameter, which the
Triton client reads. The committed config.pbtxt files are exactly what `render_config` returns for the
contract's defaults and the shipped weights' offset 0 (tests/unit/test_model_configs.py checks that), so
a hand edit shows up as a test failure.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.backends.cpu_paths import INT8_ONNX_FILE
from lipsync.client.model_repository import artifact_path, config_path

log = logging.getLogger(__name__)

# Dynamic batcher settings of the GPU models (official Triton container). A GPU batch costs a few ms: waiting
# 2 ms for company is cheap, and the queue is bounded so overload is refused, not hoarded.
MAX_QUEUE_DELAY_US = 2000
MAX_QUEUE_SIZE = 4 * contract.MAX_BATCH
# The embedded model's batcher (and the avatar and live models', which share its body) has no queue delay and
# no queue policy. Any default_queue_policy (deadlines, a max queue size) turns off Triton's payload prefetch:
# the batcher then hands a batch over only while the instance waits for work, and nothing wakes it when the
# instance comes back to wait (core r24.10 dynamic_batch_scheduler.cc, WaitForPayloadSlotAvailable), so queued
# frames sleep until the next request arrives or 500 ms pass. Measured (benchmarks/serving.py --sweep config,
# 2-core Xeon, one-frame requests at concurrency 1/2/4/8): width 0.25, 36/63/46/51 frames/s with p99 513-628 ms
# under the old policy, 106/115/110/89 frames/s with p99 21-216 ms without; width 0.5, 17/40/22/28 against
# 41/48/45/38. On the CPU a batch costs per frame what single frames do (ONNX Runtime, batch 1 to 8), so
# batching off measures the same within noise and a 2 ms delay only adds latency (85 against 109 frames/s at
# concurrency 1, width 0.25); the batcher stays for the GPU path, and batches still form from what queued
# during the last one. Deadlines still hold: the client cancels a request at its deadline and the batcher and
# 1/model.py drop it (16-frame bursts, 60 ms deadline, width 0.5: 23 of 80 frames computed, 9 under the old
# policy); the clients' requests in flight bound the queue.
EMBEDDED_MAX_QUEUE_DELAY_US = 0
WARMUP_BATCHES = (1, contract.OPT_BATCH)

_HEADERS = {
    contract.EMBEDDED_MODEL: (
        "The embedded model, for the tritonserver in the nvidia-pytriton wheel (Python backend only):\n"
        "ONNX Runtime on a CPU, PyTorch FP16 with CUDA graphs when a GPU is present (see 1/model.py)."
    ),
    contract.ONNX_MODEL: "ONNX Runtime on a GPU, for hosts running the official Triton container.",
    contract.TENSORRT_MODEL: (
        "TensorRT FP16 engine (profile min 1 / opt {opt} / max {max}), for hosts running the official\n"
        "Triton container; the engine must be built with that container's TensorRT version."
    ),
}

_LIVE_HEADER = (
    "The live default, served to the gateway: the embedded Python-backend model of\n"
    f"{contract.EMBEDDED_MODEL} (1/model.py) on the shipped low-look-ahead weights (training/weights/MODEL_CARD.md)."
)
_AVATAR_HEADER = (
    "An enrolled avatar's own generator, written by `lipsync-export --avatar DIR`: the embedded\n"
    f"Python-backend model of {contract.EMBEDDED_MODEL} (1/model.py) on the avatar's weights."
)
# What client/avatar.triton_model_name produces: avatar names with '-' made '_' (Triton model names).
_AVATAR_MODEL_NAME = re.compile(rf"^{re.escape(layout.AVATAR_MODEL_PREFIX)}[a-z][a-z0-9_]{{0,39}}$")

# Backend line, instance group and anything model-specific, per model.
_BODIES = {
    contract.EMBEDDED_MODEL: (
        'backend: "python"',
        # One instance: on a GPU one set of CUDA graphs serves every batch; on the CPU its one ONNX Runtime
        # thread leaves the other core to tracking, blending and WebRTC. A second instance raised throughput
        # only where a core sat idle (serving benchmark, batching off, width 0.25, concurrency 2-8: 131-160
        # frames/s against 86-98, 2 cores, the client the only other load); the gateway needs that core.
        "instance_group [ { kind: KIND_CPU count: 1 } ]",
    ),
    contract.ONNX_MODEL: (
        'platform: "onnxruntime_onnx"',
        "instance_group [ { kind: KIND_GPU count: 1 } ]",
    ),
    contract.TENSORRT_MODEL: (
        'platform: "tensorrt_plan"',
        # Two instances per GPU overlap one batch's copies with the other's compute.
        "instance_group [ { kind: KIND_GPU count: 2 } ]",
    ),
}

# Settings the Python model reads (1/model.py); file names are relative to the version folder.
EMBEDDED_PARAMETERS = {
    "onnx_file": layout.ONNX_FILE,
    "int8_onnx_file": INT8_ONNX_FILE,  # written by lipsync-export when it verifies on real inputs (the default)
    "checkpoint": layout.CHECKPOINT_FILE,
    "device": "auto",  # auto: CUDA (PyTorch FP16 + CUDA graphs) when available, else the CPU path below
    # The CPU path: fp32 | int8 | bf16 | auto (the fastest of them measured at start, client/backends/cpu_paths.py).
    # fp32 by default: served faces then equal in-process ONNX Runtime's to 1e-5, which the integration tests
    # and the avatar checks rely on; int8 (45-50 dB PSNR against FP32) and bf16 (54-58 dB) are opt-in.
    "precision": "fp32",
    # One thread per instance: with more, ORT threads spin against tracking, blending and the other
    # sessions; measured in the gateway loop on 2 cores: inference p50 441 ms with 0 (all cores), 19 ms with 1.
    "intra_op_threads": "1",
}
# The live model serves the gateway's frames, where time matters more than the last dB against FP32: it runs
# the fastest CPU path measured at start (INT8 on a Xeon without AMX: 1.2-1.6x FP32, 48 dB PSNR against it).
LIVE_PARAMETERS = {**EMBEDDED_PARAMETERS, "precision": "auto"}


def _triton_dtype(spec: contract.TensorSpec) -> str:
    return spec.dtype if spec.dtype.startswith("TYPE_") else f"TYPE_{spec.dtype}"


def _dims(spec: contract.TensorSpec) -> str:
    return ", ".join(str(d) for d in spec.shape)


def _tensor(spec: contract.TensorSpec) -> str:
    return f'  {{ name: "{spec.name}" data_type: {_triton_dtype(spec)} dims: [ {_dims(spec)} ] }}'


def render_config(model: str, *, max_batch: int = contract.MAX_BATCH, mel_offset: int = 0) -> str:
    """The config.pbtxt text of one served model whose weights were trained with `mel_offset`."""
    if model not in _BODIES:
        raise ValueError(
            f"unknown model {model!r}; served models are {', '.join(contract.SERVED_MODELS)} "
            f"(an avatar's model: render_avatar_config)"
        )
    return _render(model, _HEADERS[model], like=model, max_batch=max_batch, mel_offset=mel_offset)


def render_live_config(*, max_batch: int = contract.MAX_BATCH, mel_offset: int = 0) -> str:
    """The config.pbtxt text of the live default: the embedded model's body under contract.LIVE_MODEL."""
    return _render(
        contract.LIVE_MODEL,
        _LIVE_HEADER,
        like=contract.EMBEDDED_MODEL,
        max_batch=max_batch,
        mel_offset=mel_offset,
        parameters=LIVE_PARAMETERS,
    )


def render_avatar_config(model: str, *, max_batch: int = contract.MAX_BATCH, mel_offset: int = 0) -> str:
    """The config.pbtxt text of an avatar's own model: the embedded model's body under the avatar's name."""
    if not _AVATAR_MODEL_NAME.match(model):
        raise ValueError(
            f"avatar model name {model!r} is not valid: {layout.AVATAR_MODEL_PREFIX!r} and then an avatar name "
            "(lower-case letters, digits and '_', starting with a letter; see client/avatar.triton_model_name)"
        )
    return _render(model, _AVATAR_HEADER, like=contract.EMBEDDED_MODEL, max_batch=max_batch, mel_offset=mel_offset)


def _render(
    model: str, header: str, *, like: str, max_batch: int, mel_offset: int, parameters: dict[str, str] | None = None
) -> str:
    """config.pbtxt for `model` with the backend, instances and parameters of the served model `like`."""
    if not 1 <= max_batch:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    contract.check_mel_offset(mel_offset)
    preferred = [b for b in contract.PREFERRED_BATCHES if b <= max_batch] or [max_batch]
    header = header.format(opt=min(contract.OPT_BATCH, max_batch), max=max_batch)
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append("# Written by `lipsync-export` from client/contract.py; do not edit by hand.")
    backend, instances = _BODIES[like]
    lines += [
        f'name: "{model}"',
        backend,
        f"max_batch_size: {max_batch}",
        "input [",
        ",\n".join(_tensor(spec) for spec in contract.INPUTS),
        "]",
        "output [",
        ",\n".join(_tensor(spec) for spec in contract.OUTPUTS),
        "]",
        instances,
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
    ]
    if like == contract.EMBEDDED_MODEL:
        lines.append(f"  max_queue_delay_microseconds: {EMBEDDED_MAX_QUEUE_DELAY_US}")
    else:
        lines += [
            f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
            # Clients send their deadline with each request; a frame whose deadline passed in the queue is dropped.
            f"  default_queue_policy {{ timeout_action: REJECT allow_timeout_override: true max_queue_size: {MAX_QUEUE_SIZE} }}",
        ]
    lines.append("}")
    if parameters is None:
        parameters = EMBEDDED_PARAMETERS if like == contract.EMBEDDED_MODEL else {}
    # Not read by the server: the Triton client learns from it how to cut the mel windows.
    parameters = {**parameters, contract.MEL_OFFSET_METADATA_KEY: str(mel_offset)}
    lines += [
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in parameters.items()
    ]
    lines.append("model_warmup [")
    warmups = []
    for batch in sorted({min(b, max_batch) for b in WARMUP_BATCHES}):
        inputs = "\n".join(
            f'    inputs {{ key: "{spec.name}" value: {{ data_type: {_triton_dtype(spec)} dims: [ {_dims(spec)} ]'
            " zero_data: true } }"
            for spec in contract.INPUTS
        )
        warmups.append(f'  {{\n    name: "batch_{batch}"\n    batch_size: {batch}\n{inputs}\n  }}')
    lines += [",\n".join(warmups), "]"]
    return "\n".join(lines) + "\n"


def write_config(repository: Path, model: str, *, max_batch: int = contract.MAX_BATCH, mel_offset: int = 0) -> Path:
    """Write one model's config.pbtxt (an avatar's model and the live one get the embedded model's body)."""
    path = config_path(repository, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model == contract.LIVE_MODEL:
        text = render_live_config(max_batch=max_batch, mel_offset=mel_offset)
    else:
        render = render_avatar_config if layout.is_avatar_model(model) else render_config
        text = render(model, max_batch=max_batch, mel_offset=mel_offset)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
        log.info("wrote %s", path)
    return path


def install_file(source: Path, destination: Path) -> Path:
    """Place an artifact in the repository: a hard link when possible (the same ONNX file serves two models)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists() or destination.is_symlink():
        if destination.resolve() == Path(source).resolve():
            return destination
        destination.unlink()
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
    log.info("installed %s", destination)
    return destination


def install_python_model(repository: Path, model: str = contract.EMBEDDED_MODEL) -> Path:
    """Copy the Python model's code into `model` of a repository (unless it is the project's own file)."""
    destination = artifact_path(repository, model, layout.PYTHON_MODEL_FILE)
    source = artifact_path(layout.DEFAULT_REPOSITORY, contract.EMBEDDED_MODEL, layout.PYTHON_MODEL_FILE)
    if destination.resolve() != source.resolve():
        if not source.is_file():
            raise FileNotFoundError(f"the Python backend model is missing from the project: {source}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return destination


def write_repository(
    repository: Path,
    *,
    onnx_fp32: Path,
    checkpoint: Path | None = None,
    engine: Path | None = None,
    max_batch: int = contract.MAX_BATCH,
    mel_offset: int = 0,
) -> list[Path]:
    """Write every model's config and install the artifacts given; return the paths written.

    `mel_offset` is the one the artifacts' weights were trained with (their Wav2LipConfig's).
    """
    repository = Path(repository)
    written = [
        write_config(repository, model, max_batch=max_batch, mel_offset=mel_offset) for model in contract.SERVED_MODELS
    ]
    written.append(install_python_model(repository))
    written.append(install_file(onnx_fp32, artifact_path(repository, contract.ONNX_MODEL, layout.ONNX_FILE)))
    written.append(
        install_file(onnx_fp32, artifact_path(repository, contract.EMBEDDED_MODEL, EMBEDDED_PARAMETERS["onnx_file"]))
    )
    if checkpoint is not None:
        target = artifact_path(repository, contract.EMBEDDED_MODEL, EMBEDDED_PARAMETERS["checkpoint"])
        written.append(install_file(checkpoint, target))
    if engine is not None:
        written.append(install_file(engine, artifact_path(repository, contract.TENSORRT_MODEL, layout.ENGINE_FILE)))
    return written


def write_variant_model(
    repository: Path,
    model: str,
    *,
    onnx_fp32: Path,
    checkpoint: Path,
    max_batch: int = contract.MAX_BATCH,
    mel_offset: int = 0,
) -> list[Path]:
    """Write the embedded model on other weights under its own name (an avatar's model, or the live default):
    config, the Python model's code, its ONNX and checkpoint, beside the others; the served models' folders
    are not touched, so the default model keeps serving."""
    if not (layout.is_avatar_model(model) or model == contract.LIVE_MODEL):
        raise ValueError(
            f"{model!r} is not an avatar model name (they start with {layout.AVATAR_MODEL_PREFIX!r}) "
            f"nor the live model {contract.LIVE_MODEL!r}"
        )
    repository = Path(repository)
    written = [
        write_config(repository, model, max_batch=max_batch, mel_offset=mel_offset),
        install_python_model(repository, model),
    ]
    written.append(install_file(onnx_fp32, artifact_path(repository, model, EMBEDDED_PARAMETERS["onnx_file"])))
    written.append(install_file(checkpoint, artifact_path(repository, model, EMBEDDED_PARAMETERS["checkpoint"])))
    return written
