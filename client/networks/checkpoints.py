"""Reading and writing network checkpoints: our own format, the released Wav2Lip files, TorchScript.

Our format is `{"model", "config", "config_class", "optimizer", "step", "extra"}` (nanoGPT style).
The released `.pth` files are `{"state_dict", "optimizer", "global_step", "global_epoch"}` with keys
that may contain `module.`; the newer `.pt` files are TorchScript archives. Every load is strict,
and every failure is a `CheckpointError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lipsync.client.networks.blocks import scaled_channels

logger = logging.getLogger(__name__)

_SHOWN = 5  # keys listed per kind of mismatch; the rest are counted


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the network it is loaded into."""


@dataclass(frozen=True)
class _Loaded:
    state_dict: dict[str, Tensor]
    config: dict[str, Any] | None
    config_class: str | None


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running statistics not included)."""
    return sum(p.numel() for p in model.parameters())


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside a DataParallel/DDP wrapper or a torch.compile module."""
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return _unwrap(model.module)
    original = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
    return _unwrap(original) if isinstance(original, nn.Module) else model


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    config: Any,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write our checkpoint format atomically (temporary file in the same folder, then rename).

    `extra` must hold plain data (numbers, strings, lists, dicts, tensors): files are read back
    with `torch.load(weights_only=True)`.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")
    payload = {
        "model": _unwrap(model).state_dict(),
        "config": dataclasses.asdict(config),
        "config_class": type(config).__name__,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "extra": dict(extra) if extra is not None else None,
    }
    return write_atomically(payload, path)


def write_atomically(payload: Mapping[str, Any], path: str | Path) -> Path:
    """torch.save into a temporary file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, pickle.UnpicklingError):
        # torch's own text advises weights_only=False, which would run arbitrary code from the file.
        return (
            "UnpicklingError: not a pickle of tensors and plain data (other objects are refused, they could run code)"
        )
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line[:300]}" if first_line else type(exc).__name__


def _torch_load(path: Path, map_location: Any) -> Any:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                # Deprecated, but the TorchScript .pt files of the newer README links need it.
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location=map_location)
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint (truncated, corrupt or another kind of file): "
            f"{_describe_failure(exc)}"
        ) from exc


def _read(path: str | Path, map_location: Any = "cpu") -> _Loaded:
    path = Path(path)
    obj = _torch_load(path, map_location)
    config: dict[str, Any] | None = None
    config_class: str | None = None
    if isinstance(obj, torch.jit.ScriptModule):
        state = dict(obj.state_dict())
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and "config" in obj:
        state = dict(obj["model"])
        config = dict(obj["config"]) if isinstance(obj["config"], Mapping) else None
        config_class = obj.get("config_class")
        if config is None:
            raise CheckpointError(f"checkpoint {path}: 'config' must be a dict, got {type(obj['config']).__name__}")
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = dict(obj["state_dict"])
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = dict(obj)
    else:
        what = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint {path} holds no state dict (expected our format with 'model', the released format "
            f"with 'state_dict', a bare state dict or a TorchScript archive), found {what}"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: {len(bad)} state dict entries are not tensors, e.g. {bad[:_SHOWN]}")
    # The release strips "module." anywhere in a key (str.replace), left there by nn.DataParallel.
    stripped = {k.replace("module.", ""): v for k, v in state.items()}
    if len(stripped) != len(state):
        raise CheckpointError(f"checkpoint {path}: keys collide once 'module.' is removed")
    return _Loaded(stripped, config, config_class)


def load_state_dict(path: str | Path, map_location: Any = "cpu") -> tuple[dict[str, Tensor], dict | None]:
    """The state dict of any supported checkpoint file (with `module.` removed) and our saved config, if any."""
    loaded = _read(path, map_location)
    return loaded.state_dict, loaded.config


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The whole dict of a checkpoint in our format (model, config, config_class, optimizer, step, extra)."""
    path = Path(path)
    obj = _torch_load(path, map_location)
    if not (isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and "config" in obj):
        kind = "TorchScript archive" if isinstance(obj, torch.jit.ScriptModule) else type(obj).__name__
        keys = f" with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else ""
        raise CheckpointError(
            f"checkpoint {path} is not in this project's format (a dict with 'model' and 'config'); "
            f"found a {kind}{keys}"
        )
    return dict(obj)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ("," if t.dim() == 1 else "") + ")"


def strict_load(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    path: str | Path,
    *,
    optional: Callable[[str], bool] | None = None,
) -> None:
    """Load `state_dict` into `model` strictly; on a mismatch raise CheckpointError listing the bad keys.

    `optional(key)` marks model keys the file may lack (they keep the model's values), e.g. the
    `num_batches_tracked` buffers that files written by torch < 0.4.1 do not have.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not (optional and optional(k))]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} file {_shape(state_dict[k])} vs model {_shape(expected[k])}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} wrongly shaped key(s): {_listing(wrong)}")
        raise CheckpointError(
            f"checkpoint {path} does not fit {_describe_model(model)} "
            f"({len(state_dict)} keys in file, {len(expected)} in model): " + "; ".join(parts)
        )
    full = dict(state_dict)
    for k, v in expected.items():
        full.setdefault(k, v)
    model.load_state_dict(full, strict=True)


def _describe_model(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        fields = ", ".join(f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config))
        return f"{type(model).__name__}({fields})"
    return type(model).__name__


@dataclass(frozen=True)
class WidthProbe:
    """A tensor whose size along `dim` is `scaled_channels(base, width)`: lets a width be read off a file."""

    key: str
    dim: int
    base: int


def infer_width(state_dict: Mapping[str, Tensor], probes: Iterable[WidthProbe], path: str | Path) -> float:
    """The width multiplier a state dict was built with, read from the channel counts of `probes`.

    Every probe narrows the interval of widths that round to its channel count; the answer is
    the simplest ratio (widest layer first) inside all of them. A file lacking a probe key gets
    1.0, and the strict load that follows names the missing keys.
    """
    probes = list(probes)
    if not all(p.key in state_dict and state_dict[p.key].dim() > p.dim for p in probes):
        return 1.0
    lo, hi = 0.0, float("inf")
    for p in probes:
        n = state_dict[p.key].shape[p.dim]
        lo, hi = max(lo, (n - 0.5) / p.base), min(hi, (n + 0.5) / p.base)
    candidates = [state_dict[p.key].shape[p.dim] / p.base for p in sorted(probes, key=lambda p: -p.base)]
    candidates.append((lo + hi) / 2)
    for width in candidates:
        if all(scaled_channels(p.base, width) == state_dict[p.key].shape[p.dim] for p in probes):
            return width
    shapes = ", ".join(f"{p.key}: {state_dict[p.key].shape[p.dim]} (full width {p.base})" for p in probes)
    raise CheckpointError(f"checkpoint {path}: channel counts fit no single width multiplier: {shapes}")


ModelT = TypeVar("ModelT", bound=nn.Module)


def model_from_checkpoint(
    model_cls: Callable[[Any], ModelT],
    config_cls: type,
    probes: Iterable[WidthProbe],
    path: str | Path,
    map_location: Any = "cpu",
) -> ModelT:
    """Build `model_cls(config)` from any supported file and load it strictly, in eval mode.

    The config comes from the file when it is in our format, otherwise its width is inferred
    from the tensor shapes (released files give width 1.0).
    """
    loaded = _read(path, map_location)
    if loaded.config is not None:
        if loaded.config_class not in (None, config_cls.__name__):
            raise CheckpointError(
                f"checkpoint {path} holds a {loaded.config_class} network, not a {config_cls.__name__} one"
            )
        try:
            config = config_cls(**loaded.config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: saved config {loaded.config} is invalid: {exc}") from exc
    else:
        width = infer_width(loaded.state_dict, probes, path)
        try:
            config = config_cls(width=width)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: inferred width {width:g} is invalid: {exc}") from exc
    model = model_cls(config)
    strict_load(model, loaded.state_dict, path)
    if isinstance(map_location, str | torch.device):
        model = model.to(map_location)
    logger.debug("loaded %s from %s", _describe_model(model), path)
    return model.eval()
