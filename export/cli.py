"""`lipsync-export`: checkpoint -> ONNX FP32/FP16/INT8 -> (TensorRT FP16) -> model_repository/, each stage verified.

Every stage prints its measured max/mean absolute error against the stage before and the tolerance;
any failure exits non-zero. The resolved config and the measurements go to export_config.json in
the output directory.

With `--avatar DIR` the enrolled avatar's weights are exported instead, verified the same way: the
ONNX goes to DIR/model.onnx and the avatar's own model (avatar_<name>, served like wav2lip_python)
into the repository beside the default models, which are left as they are; its export_config.json
goes into that model's folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.avatar import Avatar, AvatarError, load_avatar
from lipsync.client.backends import DEFAULT_CHECKPOINT, cpu_paths
from lipsync.client.cli_config import (
    add_dataclass_arguments,
    config_from_args,
    config_from_mapping,
    write_resolved_config,
)
from lipsync.export import model_repository, quantize, verify

log = logging.getLogger(__name__)

DEFAULT_TIMING_CACHE = layout.PROJECT_ROOT / "artifacts" / "tensorrt_timing.cache"


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path | None = field(
        default=None,
        metadata={
            "flag": "--checkpoint",
            "help": f"generator weights (default: the shipped {DEFAULT_CHECKPOINT.name})",
        },
    )
    avatar: Path | None = field(
        default=None,
        metadata={
            "flag": "--avatar",
            "help": "export an enrolled avatar's weights (DIR/wav2lip.pt) to DIR/model.onnx and to its own "
            "Triton model avatar_<name> in the repository; the default models are not touched",
        },
    )
    live: bool = field(
        default=False,
        metadata={
            "flag": "--live",
            "help": f"export the live default ({contract.LIVE_MODEL}: the embedded model on the shipped low-look-ahead "
            f"weights {layout.SHIPPED_LIVE_GENERATOR.name}, or on --checkpoint) into its own Triton model; the gateway "
            "serves it; the default models are not touched",
        },
    )
    random_weights: bool = field(
        default=False, metadata={"flag": "--random-weights", "help": "export a randomly initialised generator (tests)"}
    )
    width: float = field(
        default=1.0, metadata={"flag": "--width", "help": "width multiplier, only with --random-weights"}
    )
    output_dir: Path = field(
        default=layout.DEFAULT_REPOSITORY, metadata={"flag": "--output-dir", "help": "Triton model repository to write"}
    )
    opset: int = field(default=18, metadata={"flag": "--opset", "help": "ONNX opset (>= 17)"})
    fp16: bool = field(
        default=True,
        metadata={
            "flag": "--fp16",
            "help": "also write and verify the FP16 ONNX variant (default models only: an avatar's model is served "
            "by the Python backend, FP32 ONNX on a CPU and PyTorch FP16 on a GPU)",
        },
    )
    int8: bool = field(
        default=True,
        metadata={
            "flag": "--int8",
            "help": f"also write and verify the INT8 ONNX model ({cpu_paths.INT8_ONNX_FILE}, static quantization "
            "calibrated on real inputs; a CPU path of the embedded model and of the onnxruntime backend); needs "
            "--real-inputs",
        },
    )
    tensorrt: bool = field(
        default=False, metadata={"flag": "--tensorrt", "help": "build the TensorRT FP16 engine (needs TensorRT + GPU)"}
    )
    max_batch: int = field(
        default=contract.MAX_BATCH,
        metadata={"flag": "--max-batch", "help": "largest batch: ONNX axis bound, TensorRT profile max, Triton config"},
    )
    verify_samples: int = field(
        default=8, metadata={"flag": "--verify-samples", "help": "batch size of the verification inputs"}
    )
    real_inputs: bool = field(
        default=True,
        metadata={"flag": "--real-inputs", "help": "also verify on a real face and real speech (skimage, espeak-ng)"},
    )
    fp32_tolerance: float = field(
        default=verify.FP32_TOLERANCE[0],
        metadata={"flag": "--fp32-tolerance", "help": "max abs error of FP32 ONNX vs PyTorch (mean: a tenth)"},
    )
    fp16_tolerance: float = field(
        default=verify.FP16_TOLERANCE[0],
        metadata={"flag": "--fp16-tolerance", "help": "max abs error of FP16 stages vs FP32 (mean: a tenth)"},
    )
    int8_tolerance: float = field(
        default=quantize.INT8_TOLERANCE[0],
        metadata={"flag": "--int8-tolerance", "help": "max abs error of INT8 vs FP32 ONNX (mean: scaled alike)"},
    )
    int8_min_psnr_db: float = field(
        default=quantize.INT8_MIN_PSNR_DB,
        metadata={"flag": "--int8-min-psnr-db", "help": "lowest PSNR of INT8 vs FP32 ONNX, in dB"},
    )
    timing_cache: Path = field(
        default=DEFAULT_TIMING_CACHE, metadata={"flag": "--timing-cache", "help": "TensorRT timing cache file"}
    )
    seed: int = field(default=0, metadata={"flag": "--seed", "help": "seed of the random weights and inputs"})
    quiet: bool = field(default=False, metadata={"flag": "--quiet", "help": "print only failures"})

    def __post_init__(self) -> None:
        if self.random_weights and self.checkpoint is not None:
            raise ValueError("give either --checkpoint or --random-weights, not both")
        if self.avatar is not None and (self.checkpoint is not None or self.random_weights):
            raise ValueError(
                f"--avatar {self.avatar} brings its own weights: give it without --checkpoint or --random-weights"
            )
        if self.live and self.avatar is not None:
            raise ValueError("give --live or --avatar, not both: each writes its own model")
        if (self.avatar is not None or self.live) and self.tensorrt:
            raise ValueError(
                "--tensorrt builds the default models' engine; an avatar's model is served by the Python backend "
                "(PyTorch FP16 with CUDA graphs on a GPU): export it without --tensorrt"
            )
        if self.width != 1.0 and not self.random_weights:
            raise ValueError(f"--width {self.width} applies only to --random-weights; a checkpoint carries its width")
        if not 1 <= self.max_batch:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 1 <= self.verify_samples <= self.max_batch:
            raise ValueError(f"verify_samples must be in [1, max_batch={self.max_batch}], got {self.verify_samples}")
        if self.opset < 17:
            raise ValueError(f"opset must be >= 17, got {self.opset}")
        for name in ("fp32_tolerance", "fp16_tolerance", "int8_tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.int8_min_psnr_db >= 0:
            raise ValueError(f"int8_min_psnr_db must be >= 0, got {self.int8_min_psnr_db}")

    @property
    def input_sets(self) -> tuple[str, ...]:
        return ("random", "real") if self.real_inputs else ("random",)

    @property
    def writes_int8(self) -> bool:
        """INT8 is calibrated and checked on real inputs: without them (tests' quick exports) there is none."""
        return self.int8 and self.real_inputs

    def report_path(self) -> Path:
        """Where the resolved config and measurements go: an avatar's beside its model, so a later avatar
        export never replaces the default export's record (or another avatar's)."""
        if self.avatar is not None or self.live:
            return layout.config_path(self.output_dir, self.served_model()).with_name(layout.EXPORT_REPORT_FILE)
        return Path(self.output_dir) / layout.EXPORT_REPORT_FILE

    def served_model(self) -> str:
        """The Triton model this export writes (the default export also writes the ONNX and TensorRT ones)."""
        if self.avatar is not None:
            return load_avatar(self.avatar).triton_model
        return contract.LIVE_MODEL if self.live else contract.EMBEDDED_MODEL


class ExportError(RuntimeError):
    pass


def _training_steps(checkpoint: Path) -> int | str:
    """Optimiser steps behind the weights: ours store `step`, the released files `global_step`."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # TorchScript archives and other formats carry no step
        return "unknown"
    if isinstance(state, dict):
        return state.get("step", state.get("global_step", "unknown"))
    return "unknown"


def _load_model(config: ExportConfig, avatar: Avatar | None = None):
    import torch

    from lipsync.client.networks import Wav2Lip, Wav2LipConfig, count_parameters

    if avatar is not None:
        checkpoint = avatar.weights
        model = Wav2Lip.from_checkpoint(checkpoint)
        source = f"avatar {avatar.name!r} ({checkpoint})"
    elif config.random_weights:
        torch.manual_seed(config.seed)
        model = Wav2Lip(Wav2LipConfig(width=config.width)).eval()
        source = f"random weights (seed {config.seed})"
    else:
        checkpoint = config.checkpoint or (layout.SHIPPED_LIVE_GENERATOR if config.live else DEFAULT_CHECKPOINT)
        if not Path(checkpoint).is_file():
            if config.checkpoint is None:
                raise ExportError(
                    f"no --checkpoint given and the shipped default weights {DEFAULT_CHECKPOINT} do not exist; "
                    "pass --checkpoint PATH (or --random-weights for a test export)"
                )
            raise ExportError(f"checkpoint not found: {checkpoint}")
        model = Wav2Lip.from_checkpoint(checkpoint)
        source = str(checkpoint)
    metadata = {
        "weights": "random" if config.random_weights else "trained",
        "checkpoint": source,
        "width": str(model.config.width),
        "head": model.config.head,
        # The audio alignment the weights were trained with: every backend cuts its mel windows by it.
        contract.MEL_OFFSET_METADATA_KEY: str(model.config.mel_offset),
    }
    if not config.random_weights:
        metadata["training_steps"] = str(_training_steps(Path(checkpoint)))
    if avatar is not None:
        metadata["avatar"] = avatar.name
    offset = model.config.mel_offset
    description = (
        f"{source}, width {model.config.width}, {count_parameters(model) / 1e6:.2f} M parameters, "
        f"mel offset {offset} ({contract.lookahead_ms(offset):g} ms look-ahead)"
    )
    return model, metadata, description


def run(config: ExportConfig) -> dict:
    """Run every stage; raise ExportError or verify.VerificationError on failure. Returns the report."""

    def say(text: str) -> None:
        if not config.quiet:
            print(text, flush=True)

    def stage(text: str) -> None:
        nonlocal number
        number += 1
        say(f"[{number}/{total}] {text}")

    def record(results: list[verify.Comparison]) -> None:
        for result in results:
            say(f"      {result.describe()}")
        report["verification"] += [asdict(r) for r in results]

    from lipsync.export.onnx_export import convert_fp16, export_onnx
    from lipsync.export.tensorrt_build import EngineSpec, TensorRTRunner, build_engine, tensorrt_unavailable

    if config.tensorrt:
        reason = tensorrt_unavailable()
        if reason:
            raise ExportError(f"the TensorRT stage cannot run here: {reason}")

    import torch

    from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
    from lipsync.client.backends.pytorch import PyTorchBackend
    from lipsync.client.networks import save_checkpoint

    repo = Path(config.output_dir)
    avatar = load_avatar(config.avatar) if config.avatar is not None else None
    served = config.served_model()
    variant = avatar is not None or config.live  # the embedded model's code on other weights, under its own name
    fp16 = config.fp16 and not variant
    total = 3 + fp16 + config.writes_int8 + config.tensorrt
    number = 0
    report: dict = {"verification": [], "artifacts": {}, "seconds": {}}
    fp32_tol = (config.fp32_tolerance, config.fp32_tolerance / 10)
    fp16_tol = (config.fp16_tolerance, config.fp16_tolerance / 10)
    int8_max, int8_mean = quantize.INT8_TOLERANCE
    int8_tol = (config.int8_tolerance, config.int8_tolerance * int8_mean / int8_max)
    check = {"samples": config.verify_samples, "input_sets": config.input_sets, "seed": config.seed}

    stage("load the PyTorch generator")
    model, metadata, description = _load_model(config, avatar)
    say(f"      {description}")
    report["model"] = description
    if avatar is not None:
        report["avatar"] = {"name": avatar.name, "folder": str(avatar.root), "triton_model": avatar.triton_model}
        if config.fp16:
            say(f"      avatar {avatar.name!r}: no FP16 ONNX (its model {avatar.triton_model} runs FP32 ONNX on a CPU)")
    reference = PyTorchBackend(model=model, device="cpu", max_batch=config.max_batch)

    # An avatar's ONNX belongs to the avatar (the onnxruntime backend runs it from there); the live model's
    # to its own folder.
    if avatar is not None:
        onnx_path = avatar.onnx
    else:
        onnx_path = layout.artifact_path(repo, served if config.live else contract.ONNX_MODEL, layout.ONNX_FILE)
    stage(f"PyTorch -> ONNX FP32 (opset {config.opset}, batch 1..{config.max_batch}): {onnx_path}")
    started = time.perf_counter()
    onnx_path.unlink(missing_ok=True)  # it may be a hard link shared with the Python model's copy
    export_onnx(model, onnx_path, opset=config.opset, max_batch=config.max_batch, metadata=metadata)
    report["seconds"]["onnx_export"] = round(time.perf_counter() - started, 2)
    with OnnxRuntimeBackend(onnx_path, max_batch=config.max_batch) as onnx_fp32:
        record(verify.verify("ONNX FP32 vs PyTorch FP32", reference.infer, onnx_fp32.infer, fp32_tol, **check))
        report["artifacts"]["onnx_fp32"] = str(onnx_path)

        if fp16:
            fp16_path = onnx_path.with_name(layout.ONNX_FP16_FILE)
            stage(f"ONNX FP32 -> ONNX FP16 (FP32 inputs/outputs): {fp16_path}")
            convert_fp16(onnx_path, fp16_path)
            with OnnxRuntimeBackend(fp16_path, max_batch=config.max_batch) as onnx_fp16:
                record(verify.verify("ONNX FP16 vs PyTorch FP32", reference.infer, onnx_fp16.infer, fp16_tol, **check))
            report["artifacts"]["onnx_fp16"] = str(fp16_path)

        int8_path = cpu_paths.int8_path(onnx_path)
        # Never leave an INT8 model of earlier weights beside new FP32 ones (unlinked: it may be a hard link).
        int8_path.unlink(missing_ok=True)
        if config.writes_int8:
            samples = quantize.CALIBRATION_SAMPLES
            stage(f"ONNX FP32 -> ONNX INT8 (static, calibrated on {samples} real inputs): {int8_path}")
            started = time.perf_counter()
            quantize.quantize_int8(onnx_path, int8_path, samples=samples, seed=config.seed + quantize.CALIBRATION_SEED)
            report["seconds"]["int8_quantize"] = round(time.perf_counter() - started, 2)
            try:
                with OnnxRuntimeBackend(int8_path, max_batch=config.max_batch) as onnx_int8:
                    record(
                        quantize.check_int8(
                            onnx_fp32.infer,
                            onnx_int8.infer,
                            samples=config.verify_samples,
                            seed=config.seed,
                            tolerance=int8_tol,
                            min_psnr_db=config.int8_min_psnr_db,
                        )
                    )
            except verify.VerificationError:
                int8_path.unlink()  # a model that failed its check must not be found and served
                raise
            report["artifacts"]["onnx_int8"] = str(int8_path)
        elif config.int8:
            say("      no INT8 model: its calibration and check need real inputs (--real-inputs)")

        engine_path = None
        if config.tensorrt:
            engine_path = layout.artifact_path(repo, contract.TENSORRT_MODEL, layout.ENGINE_FILE)
            spec = EngineSpec(opt_batch=min(contract.OPT_BATCH, config.max_batch), max_batch=config.max_batch)
            stage(f"ONNX -> TensorRT FP16 (profile {spec.min_batch}/{spec.opt_batch}/{spec.max_batch}): {engine_path}")
            started = time.perf_counter()
            build_engine(onnx_path, engine_path, spec=spec, timing_cache=config.timing_cache)
            report["seconds"]["tensorrt_build"] = round(time.perf_counter() - started, 2)
            runner = TensorRTRunner(engine_path)
            record(
                verify.verify(
                    "TensorRT FP16 vs ONNX Runtime FP32",
                    onnx_fp32.infer,
                    runner,
                    fp16_tol,
                    batches=(1, spec.opt_batch, spec.max_batch),
                    **check,
                )
            )
            report["artifacts"]["tensorrt_engine"] = str(engine_path)

    stage(f"write the Triton model repository: {repo}" + (f" (model {served})" if variant else ""))
    # Re-saved in this project's format whatever the source was (released .pth, TorchScript, ours).
    checkpoint_path = layout.artifact_path(repo, served, model_repository.EMBEDDED_PARAMETERS["checkpoint"])
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(checkpoint_path, model=model, config=model.config)
    if variant:
        written = model_repository.write_variant_model(
            repo,
            served,
            onnx_fp32=onnx_path,
            checkpoint=checkpoint_path,
            max_batch=config.max_batch,
            mel_offset=model.config.mel_offset,
        )
    else:
        written = model_repository.write_repository(
            repo,
            onnx_fp32=onnx_path,
            checkpoint=checkpoint_path,
            engine=engine_path,
            max_batch=config.max_batch,
            mel_offset=model.config.mel_offset,
        )
    served_int8 = layout.artifact_path(repo, served, model_repository.EMBEDDED_PARAMETERS["int8_onnx_file"])
    if served_int8 != int8_path:  # the live model's INT8 file is written in place
        served_int8.unlink(missing_ok=True)
    if config.writes_int8:
        written.append(model_repository.install_file(int8_path, served_int8))
    for path in written:
        say(f"      {path}")
    report["versions"] = {"torch": torch.__version__, "onnxruntime": _version("onnxruntime")}
    return report


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def parse_config(argv: list[str] | None = None) -> ExportConfig:
    parser = argparse.ArgumentParser(prog="lipsync-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="JSON file of ExportConfig keys (flags given override it)")
    add_dataclass_arguments(parser, ExportConfig)
    args = parser.parse_args(argv)
    try:
        if args.config is not None:
            mapping = json.loads(args.config.read_text())
            mapping = mapping.get("config", mapping)  # accept a previous run's export_config.json
            base = config_from_mapping(ExportConfig, mapping)
            given = {k: v for k, v in vars(args).items() if k != "config" and v != getattr(ExportConfig(), k)}
            return config_from_mapping(ExportConfig, {**asdict(base), **given})
        return config_from_args(ExportConfig, args)
    except (OSError, TypeError, ValueError) as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    try:
        report = run(config)
        path = write_resolved_config(config, config.report_path(), extra=report)
    except verify.VerificationError as exc:
        print(f"lipsync-export: verification failed: {exc}", file=sys.stderr)
        return 1
    except (ExportError, AvatarError, FileNotFoundError, RuntimeError) as exc:
        print(f"lipsync-export: {exc}", file=sys.stderr)
        return 1
    if not config.quiet:
        print(f"done; resolved config and measurements in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
