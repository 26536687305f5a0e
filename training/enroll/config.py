"""The enrolment job's settings: one frozen dataclass, validated on creation; `lipsync-train enroll` flags come from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lipsync.training.config import ConfigError

MIN_SECONDS = 5.0
MAX_SECONDS = 600.0


@dataclass(frozen=True)
class EnrollConfig:
    """Fine-tune the shipped generator on one recording of one person and write an avatar folder."""

    video: str = field(default="", metadata={"help": "recording of one person speaking (any container PyAV reads)"})
    out: str = field(default="", metadata={"help": "avatar folder to write"})
    name: str = field(default="", metadata={"help": "avatar name (default: from the folder name)"})
    minutes: float = field(default=10.0, metadata={"help": "time budget of the whole enrolment, in minutes"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted enrolment in --out"})
    overwrite: bool = field(default=False, metadata={"help": "replace an avatar already in --out"})
    val_share: float = field(
        default=0.15, metadata={"help": "share of the recording, at its end, held out for validation"}
    )
    max_val_seconds: float = field(default=45.0, metadata={"help": "at most this much held out"})
    lr: float = field(default=1e-4, metadata={"help": "generator learning rate"})
    batch_size: int = field(default=8, metadata={"help": "5-frame windows per step"})
    syncnet_wt: float = field(
        default=0.01,
        metadata={
            "help": "expert sync-loss weight during fine-tuning (the paper's is 0.03). Measured on a 1-minute "
            "recording: 0 kept the default weights (the sync guard refused every checkpoint), 0.01 gave +2.0 dB "
            "held-out PSNR with sync unchanged (docs/enrollment.md)"
        },
    )
    disc_wt: float = field(default=0.07, metadata={"help": "visual-quality discriminator weight (the paper's)"})
    train_layers: str = field(
        default="decoder",
        metadata={
            "choices": ("output", "decoder", "all"),
            "help": "decoder: the face and speech encoders stay the shipped ones (faster steps, and the learnt "
            "speech-to-mouth mapping is kept); all: every layer",
        },
    )
    contrast: float = field(
        default=0.7,
        metadata={
            "help": "share of training windows whose reference shows the opposite speech level (a closed mouth for "
            "a spoken target); the rest are random, as in the paper"
        },
    )
    motion_wt: float = field(
        default=4.0,
        metadata={
            "help": "weight of motion preservation: with other speech, the output changes as the shipped "
            "generator's does (0: off)"
        },
    )
    eval_every_s: float = field(default=45.0, metadata={"help": "seconds of training between validations"})
    eval_batches: int = field(default=4, metadata={"help": "validation batches per evaluation"})
    patience: int = field(
        default=4, metadata={"help": "stop after this many validations without a better held-out PSNR"}
    )
    max_steps: int = field(default=20_000, metadata={"help": "hard cap on optimiser steps"})
    report_seconds: float = field(
        default=10.0, metadata={"help": "held-out seconds the before/after report runs the product path on"}
    )
    torch_threads: int = field(default=0, metadata={"help": "PyTorch threads (0: one per core, at most 4)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and sampling"})

    def __post_init__(self) -> None:
        if not self.video:
            raise ConfigError("--video is required: the recording of the person")
        if not self.out:
            raise ConfigError("--out is required: the avatar folder to write")
        if not (math.isfinite(self.minutes) and 0.2 <= self.minutes <= 600):
            raise ConfigError(f"--minutes must be in [0.2, 600], got {self.minutes}")
        if not 0.05 <= self.val_share <= 0.5:
            raise ConfigError(f"--val-share must be in [0.05, 0.5], got {self.val_share}")
        for name in ("lr", "batch_size", "eval_every_s", "eval_batches", "patience", "max_steps", "report_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.syncnet_wt < 0 or self.disc_wt < 0 or self.syncnet_wt + self.disc_wt >= 1:
            raise ConfigError("--syncnet-wt and --disc-wt must be >= 0 with a sum below 1")
        if not 0.0 <= self.contrast <= 1.0:
            raise ConfigError(f"--contrast must be in [0, 1], got {self.contrast}")
        if self.train_layers not in ("output", "decoder", "all"):
            raise ConfigError(f"--train-layers must be output, decoder or all, got {self.train_layers!r}")
        if self.resume and self.overwrite:
            raise ConfigError("give --resume or --overwrite, not both")
