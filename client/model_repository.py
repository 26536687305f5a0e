"""The one module that knows where things are: the Triton model repository's layout (models, version
folder, file names) and the shipped weights. Export writes this layout, the server launcher checks it,
the backends, the Triton Python model and the benchmarks read it; nobody else spells a path.
"""

from __future__ import annotations

from pathlib import Path

from lipsync.client import contract
from lipsync.client.avatar import TRITON_PREFIX as AVATAR_MODEL_PREFIX

# The project's root: the checkout for an editable install, site-packages/lipsync for a wheel.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
# Shipped in the repository (see training/weights/MODEL_CARD.md): data, not an import of training.
SHIPPED_WEIGHTS = PROJECT_ROOT / "training" / "weights"
SHIPPED_GENERATOR = SHIPPED_WEIGHTS / "wav2lip_cpu.pt"
# The live default's weights (contract.LIVE_MODEL): fine-tuned with mel offset -10, a 75 ms look-ahead.
SHIPPED_LIVE_GENERATOR = SHIPPED_WEIGHTS / "wav2lip_cpu_lookahead75.pt"
SHIPPED_EXPERT = SHIPPED_WEIGHTS / "expert_cpu.pt"

VERSION = "1"
CONFIG_FILE = "config.pbtxt"
PYTHON_MODEL_FILE = "model.py"
ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model_fp16.onnx"
CHECKPOINT_FILE = "model.pt"
ENGINE_FILE = "model.plan"
EXPORT_REPORT_FILE = "export_config.json"

# Files each model's version folder must hold before Triton can load it (written by `lipsync-export`).
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    contract.EMBEDDED_MODEL: (PYTHON_MODEL_FILE, ONNX_FILE),
    contract.LIVE_MODEL: (PYTHON_MODEL_FILE, ONNX_FILE),
    contract.ONNX_MODEL: (ONNX_FILE,),
    contract.TENSORRT_MODEL: (ENGINE_FILE,),
}


def is_avatar_model(model: str) -> bool:
    """An enrolled avatar's own model (`lipsync-export --avatar DIR` writes avatar_<name>)."""
    return model.startswith(AVATAR_MODEL_PREFIX)


def required_files(model: str) -> tuple[str, ...]:
    """The files `model`'s version folder must hold: an avatar's model is the embedded Python model on its
    own weights, so it needs what that one needs."""
    if is_avatar_model(model):
        return REQUIRED_FILES[contract.EMBEDDED_MODEL]
    return REQUIRED_FILES.get(model, ())


def config_path(repository: str | Path, model: str) -> Path:
    return Path(repository) / model / CONFIG_FILE


def artifact_path(repository: str | Path, model: str, filename: str) -> Path:
    """A file inside a model's (only) version folder."""
    return Path(repository) / model / VERSION / filename


def default_onnx_model(repository: str | Path = DEFAULT_REPOSITORY) -> Path:
    """The exported FP32 ONNX generator, the ONNX Runtime backend's default."""
    return artifact_path(repository, contract.ONNX_MODEL, ONNX_FILE)


def live_onnx_model(repository: str | Path = DEFAULT_REPOSITORY) -> Path:
    """The live default's FP32 ONNX generator (`lipsync-export --live`), the gateway's in-process default."""
    return artifact_path(repository, contract.LIVE_MODEL, ONNX_FILE)


def missing_files(repository: str | Path, model: str) -> list[Path]:
    """The files `model` still needs in `repository` (its config first), empty when it can be served."""
    needed = [config_path(repository, model)]
    needed += [artifact_path(repository, model, name) for name in required_files(model)]
    return [path for path in needed if not path.is_file()]
