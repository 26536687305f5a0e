"""Training and evaluation configs: frozen dataclasses, named presets, and the command-line flags generated from them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lipsync.client.cli_config import config_from_mapping
from lipsync.client.contract import check_mel_offset

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names it."""


def _positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not value > 0:
            raise ConfigError(f"{type(owner).__name__}.{name} must be > 0, got {value!r}")


def _non_negative(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value < 0:
            raise ConfigError(f"{type(owner).__name__}.{name} must be >= 0, got {value!r}")


def _check_width(owner: object, name: str) -> None:
    value = getattr(owner, name)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{type(owner).__name__}.{name} must be in (0, 1], got {value!r}")


def _check_device(owner: object) -> None:
    device = owner.device  # type: ignore[attr-defined]
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"{type(owner).__name__}.device must be auto, cpu or cuda[:N], got {device!r}")


@dataclass(frozen=True)
class DeviceConfig:
    """Where the networks run: shared by the trainers and the evaluation."""

    torch_threads: int = field(
        default=0, metadata={"help": "CPU threads for PyTorch (0 = its default; 1 is faster on a busy machine)"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})

    def _check_device_fields(self) -> None:
        _non_negative(self, "torch_threads")
        _check_device(self)


@dataclass(frozen=True)
class RunConfig(DeviceConfig):
    """What every trainer shares: checkpoint retention, logging, data workers, seed and device."""

    keep_checkpoints: int = field(default=3, metadata={"help": "step checkpoints kept on disk (0 = all)"})
    log_interval: int = field(default=50, metadata={"help": "steps between metrics.csv rows"})
    num_workers: int = field(default=8, metadata={"help": "data loader processes per training process"})
    mel_cache_mb: int = field(default=512, metadata={"help": "memory per worker for cached mel spectrograms"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and sampling"})

    def _check_run(self) -> None:
        _positive(self, "log_interval")
        _non_negative(self, "keep_checkpoints", "num_workers", "mel_cache_mb")
        self._check_device_fields()


EXPERT_OPTIMIZERS = ("adam", "adamax")


@dataclass(frozen=True)
class ExpertTrainConfig(RunConfig):
    """The lip-sync expert (SyncNet_color) trainer; defaults are the paper's (reference 3.5)."""

    data_root: str = field(default="data/corpus", metadata={"help": "corpus in the LRS2 layout with filelists/"})
    out_dir: str = field(default="runs/expert", metadata={"help": "checkpoints, metrics.csv, config.json"})
    width: float = field(default=1.0, metadata={"help": "channel width multiplier of the expert (1.0 = paper)"})
    batch_size: int = field(default=64, metadata={"help": "samples per step and per process"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate"})
    center_frames: bool = field(
        default=False,
        metadata={"help": "subtract the 5-frame mean from the face input (not in the paper; see SyncNetConfig)"},
    )
    optimizer: str = field(
        default="adam",
        metadata={"help": "adam (the paper's) or adamax (leaves the 0.69 plateau far sooner on small data)"},
    )
    steps: int = field(default=250_000, metadata={"help": "total optimiser steps"})
    min_negative_offset: int = field(
        default=1, metadata={"help": "smallest |frame offset| of an off-sync (negative) window; the paper has 1"}
    )
    eval_interval: int = field(default=10_000, metadata={"help": "steps between validation runs"})
    eval_batches: int = field(default=1400, metadata={"help": "validation batches per evaluation"})
    checkpoint_interval: int = field(default=10_000, metadata={"help": "steps between checkpoints"})

    def __post_init__(self) -> None:
        _check_width(self, "width")
        _positive(self, "batch_size", "lr", "steps", "min_negative_offset", "eval_interval", "eval_batches")
        _positive(self, "checkpoint_interval")
        if self.optimizer not in EXPERT_OPTIMIZERS:
            raise ConfigError(
                f"ExpertTrainConfig.optimizer must be one of {', '.join(EXPERT_OPTIMIZERS)}, got {self.optimizer!r}"
            )
        self._check_run()


@dataclass(frozen=True)
class GeneratorTrainConfig(RunConfig):
    """The generator trainer with the frozen expert and the visual-quality GAN (hq_wav2lip_train, reference 5)."""

    data_root: str = field(default="data/corpus", metadata={"help": "corpus in the LRS2 layout with filelists/"})
    out_dir: str = field(default="runs/generator", metadata={"help": "checkpoints, samples/, metrics.csv"})
    expert_checkpoint: str = field(
        default="", metadata={"help": "trained expert: our checkpoint or a released lipsync_expert.pth (required)"}
    )
    width: float = field(default=1.0, metadata={"help": "channel width multiplier of the generator (1.0 = paper)"})
    head: str = field(
        default="image",
        metadata={
            "choices": ("image", "composite"),
            "help": "image: the paper's output; composite: content + mask over the reference (keeps the face)",
        },
    )
    init_from: str = field(
        default="",
        metadata={
            "help": "start a new run from this generator checkpoint's weights (a new head's extra channel is added)"
        },
    )
    mask_wt: float = field(
        default=0.0,
        metadata={"help": "composite head: weight of the mean mask (prefers the reference where it suffices)"},
    )
    mask_init_bias: float = field(
        default=0.0,
        metadata={
            "help": "composite head grown by --init-from from an image head: the mask channel's initial bias "
            "(0: an even mix, where the sigmoid learns fastest; 3: starts as the image head, mask 0.95)"
        },
    )
    disc_width: float = field(default=1.0, metadata={"help": "channel width multiplier of the quality discriminator"})
    batch_size: int = field(default=16, metadata={"help": "5-frame windows per step and per process"})
    lr: float = field(default=1e-4, metadata={"help": "generator Adam learning rate"})
    disc_lr: float = field(default=1e-4, metadata={"help": "discriminator Adam learning rate"})
    adam_beta1: float = field(default=0.5, metadata={"help": "Adam beta1 of both optimisers (0.5 in the GAN setup)"})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2 of both optimisers"})
    syncnet_wt: float = field(
        default=0.03, metadata={"help": "expert sync-loss weight once switched on (0.03 with the GAN)"}
    )
    sync_threshold: float = field(
        default=0.75, metadata={"help": "the sync loss is switched on when the eval sync loss drops below this"}
    )
    disc_wt: float = field(default=0.07, metadata={"help": "adversarial weight; 0 trains without the discriminator"})
    mel_shift: int = field(
        default=-1,
        metadata={"help": "video-frame shift of each frame's mel window (-1 = the original's get_segmented_mels)"},
    )
    mel_offset: int = field(
        default=0,
        metadata={
            "help": "mel columns (12.5 ms) each frame's window starts from its own: 0 reaches 200 ms ahead, "
            "-10 only 75 ms (a low-look-ahead live model); saved with the weights"
        },
    )
    steps: int = field(default=300_000, metadata={"help": "total optimiser steps"})
    eval_interval: int = field(default=3000, metadata={"help": "steps between validation runs (and the switch test)"})
    eval_batches: int = field(default=300, metadata={"help": "validation batches per evaluation"})
    checkpoint_interval: int = field(default=3000, metadata={"help": "steps between checkpoints"})
    sample_interval: int = field(default=3000, metadata={"help": "steps between PNG sample grids"})

    def __post_init__(self) -> None:
        _check_width(self, "width")
        _check_width(self, "disc_width")
        _positive(self, "batch_size", "lr", "disc_lr", "steps", "eval_interval", "eval_batches")
        _positive(self, "checkpoint_interval", "sample_interval", "sync_threshold")
        _non_negative(self, "syncnet_wt", "disc_wt", "mask_wt")
        if self.head not in ("image", "composite"):
            raise ConfigError(f"GeneratorTrainConfig.head must be 'image' or 'composite', got {self.head!r}")
        if self.mask_wt > 0 and self.head != "composite":
            raise ConfigError("GeneratorTrainConfig.mask_wt needs head='composite'")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"GeneratorTrainConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.syncnet_wt + self.disc_wt >= 1.0:
            raise ConfigError(
                f"GeneratorTrainConfig: syncnet_wt + disc_wt must be < 1 (L1 gets the rest), "
                f"got {self.syncnet_wt} + {self.disc_wt}"
            )
        if not -2 <= self.mel_shift <= 2:
            raise ConfigError(f"GeneratorTrainConfig.mel_shift must be in [-2, 2], got {self.mel_shift}")
        try:
            check_mel_offset(self.mel_offset)
        except ValueError as exc:
            raise ConfigError(f"GeneratorTrainConfig.{exc}") from exc
        self._check_run()


@dataclass(frozen=True)
class EvaluateConfig(DeviceConfig):
    """LSE-D / LSE-C and the expert's off-sync accuracy on the held-out split (reference 7.2)."""

    data_root: str = field(default="data/corpus", metadata={"help": "corpus in the LRS2 layout with filelists/"})
    out_dir: str = field(default="runs/eval", metadata={"help": "report.json and lse.png go here"})
    expert_checkpoint: str = field(
        default="", metadata={"help": "the project's expert (scores LSE without syncnet_v2)"}
    )
    generator_checkpoint: str = field(
        default="", metadata={"help": "generator to evaluate; without it only real clips are scored"}
    )
    syncnet_v2: str = field(
        default="", metadata={"help": "syncnet_v2.model weights: score LSE with syncnet_python's network"}
    )
    split: str = field(default="test", metadata={"help": "filelist scored for LSE and accuracy"})
    max_clips: int = field(default=0, metadata={"help": "score at most this many clips (0 = all)"})
    vshift: int = field(default=15, metadata={"help": "offset search range in frames (+-)"})
    shifts: tuple[int, ...] = field(
        default=(-20, -5, 5, 20), metadata={"help": "audio shifts in frames for the off-sync conditions"}
    )
    accuracy_samples: int = field(default=8, metadata={"help": "expert accuracy: windows per clip"})
    accuracy_min_offset: int = field(default=1, metadata={"help": "expert accuracy: smallest negative offset"})
    mel_shift: int | None = field(
        default=None, metadata={"help": "generator mel shift (default: the one it was trained with)"}
    )
    batch_size: int = field(default=32, metadata={"help": "windows per network call"})
    seed: int = field(default=0, metadata={"help": "seed of the accuracy samples and reference frames"})

    def __post_init__(self) -> None:
        _positive(self, "vshift", "batch_size", "accuracy_samples", "accuracy_min_offset")
        _non_negative(self, "max_clips")
        if not self.expert_checkpoint and not self.syncnet_v2:
            raise ConfigError("EvaluateConfig needs expert_checkpoint or syncnet_v2 (something must score sync)")
        if any(s == 0 for s in self.shifts):
            raise ConfigError(f"EvaluateConfig.shifts must not contain 0 (that is the real condition): {self.shifts}")
        self._check_device_fields()


# Presets: `paper` is the paper's hyperparameters (GPUs; run until the eval losses flatten).
# `cpu-small` fits about 50 min per model on a 2-core machine: one PyTorch thread plus one data
# worker process (two threads would contend with the worker, and on a busy machine OpenMP's
# spinning made 2 threads 3-5x slower than 1). Sized from measured CPU time per step with one
# thread: expert (width 0.5, 32 windows) 1.07 s, generator (width 0.25, 8 windows of 5 frames,
# GAN on) 2.15 s. `tiny` exists for smoke tests: it proves the loop runs, nothing more.
PRESETS: dict[type, dict[str, dict[str, Any]]] = {
    ExpertTrainConfig: {
        "paper": {},
        "cpu-small": {
            "width": 0.5,
            "batch_size": 32,
            "steps": 3000,
            "eval_interval": 500,
            "eval_batches": 16,
            "checkpoint_interval": 500,
            "log_interval": 25,
            "num_workers": 1,
            "torch_threads": 1,
            "device": "cpu",
        },
        "tiny": {
            "width": 0.125,
            "batch_size": 4,
            "steps": 4,
            "eval_interval": 2,
            "eval_batches": 1,
            "checkpoint_interval": 2,
            "log_interval": 1,
            "num_workers": 0,
            "torch_threads": 1,
            "device": "cpu",
        },
    },
    GeneratorTrainConfig: {
        "paper": {},
        "cpu-small": {
            "width": 0.25,
            "disc_width": 0.25,
            "batch_size": 8,
            "steps": 1500,
            "eval_interval": 250,
            "eval_batches": 8,
            "checkpoint_interval": 250,
            "sample_interval": 250,
            "log_interval": 25,
            "num_workers": 1,
            "torch_threads": 1,
            "device": "cpu",
        },
        "tiny": {
            "width": 0.25,  # the generator's narrowest layer (16 channels) needs width >= 0.22
            "disc_width": 0.125,
            "batch_size": 2,
            "steps": 4,
            "eval_interval": 2,
            "eval_batches": 1,
            "checkpoint_interval": 2,
            "sample_interval": 2,
            "log_interval": 1,
            "num_workers": 0,
            "torch_threads": 1,
            "device": "cpu",
        },
    },
}


def _type_of(cls: type, name: str) -> tuple[Any, bool]:
    """(element type, is_tuple) of a field: `int | None` -> (int, False), `tuple[int, ...]` -> (int, True)."""
    annotation = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is tuple:
        return args[0], True
    if args and typing.get_origin(annotation) is not None:  # a union with None
        return args[0], False
    return annotation, False


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field-name` flag per dataclass field (underscore spelling accepted too), plus --preset/--config.

    Flags default to "not given" so that a preset, a JSON file or a resumed checkpoint is only
    overridden by what the user actually typed.
    """
    presets = PRESETS.get(cls)
    if presets:
        parser.add_argument(
            "--preset", choices=sorted(presets), default=argparse.SUPPRESS, help="named set of values (default: paper)"
        )
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="JSON file of config values")
    group = parser.add_argument_group(f"{cls.__name__} fields")
    for f in dataclasses.fields(cls):
        kind, is_tuple = _type_of(cls, f.name)
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        if default not in (None, ""):
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" ({'paper default' if presets else 'default'}: {shown})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if is_tuple:
                kwargs["nargs"] = "*"
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        group.add_argument(*flags, **kwargs)


# Resolution order: dataclass defaults (the paper's values) < --preset < --config FILE.json < explicit
# flags; a resumed run starts from the config saved in its checkpoint instead of defaults and preset.
def config_from_args(
    cls: type[T], args: argparse.Namespace, base: dict[str, Any] | None = None, extra_keys: tuple[str, ...] = ()
) -> T:
    """Resolve defaults < preset < --config JSON < explicit flags; `base` (a resumed run's config) replaces the first two."""
    values: dict[str, Any] = {}
    preset = getattr(args, "preset", None)
    if base is not None:
        values.update(base)
    elif preset is not None:
        values.update(PRESETS[cls][preset])
    if getattr(args, "config", None) is not None:
        try:
            loaded = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config file {args.config}: {exc}") from exc
        # A resolved config.json written by a run has the values under "config".
        values.update(loaded.get("config", loaded) if isinstance(loaded, dict) else {})
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return build_config(cls, values)


def build_config(cls: type[T], values: dict[str, Any]) -> T:
    """`cls(**values)` with unknown keys rejected and JSON lists turned back into tuples."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return config_from_mapping(cls, values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def preset(cls: type[T], name: str, **overrides: Any) -> T:
    """A preset's config with `overrides`, for code and tests."""
    if name not in PRESETS.get(cls, {}):
        raise ConfigError(f"{cls.__name__} has no preset {name!r}; presets: {', '.join(sorted(PRESETS.get(cls, {})))}")
    return build_config(cls, {**PRESETS[cls][name], **overrides})


def save_config(config: object, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `{"config": ..., **extra}` as JSON (the resolved config next to a run's outputs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"config": dataclasses.asdict(config), "config_class": type(config).__name__, **(extra or {})}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
