"""`lipsync-train`: corpus generation, preprocessing of real video, expert and generator training, evaluation."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from lipsync.training.config import (
    ConfigError,
    EvaluateConfig,
    ExpertTrainConfig,
    GeneratorTrainConfig,
    add_config_arguments,
    config_from_args,
)

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  lipsync-train corpus --out data/corpus --clips 3000
  lipsync-train preprocess videos/ --out data/lrs2_style --workers 2
  lipsync-train enroll --video anna.mp4 --out avatars/anna --minutes 10
  lipsync-train expert --preset cpu-small --data-root data/corpus --out-dir runs/expert
  lipsync-train generator --preset cpu-small --data-root data/corpus --out-dir runs/generator \\
      --expert-checkpoint runs/expert/checkpoint_step000003000.pt
  lipsync-train generator --resume auto --out-dir runs/generator
  lipsync-train evaluate --data-root data/corpus --expert-checkpoint ... --generator-checkpoint ... [--syncnet-v2 PATH]
  torchrun --nproc_per_node 4 -m training.cli expert --preset paper --data-root lrs2/   (DistributedDataParallel)

Subcommands import what they need only when they run, so --help stays fast.
"""


def _add_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume",
        default=None,
        metavar="CKPT|DIR|auto",
        help="continue from a checkpoint (auto: the newest in --out-dir, or start fresh if there is none); "
        "the run's saved config is the base, flags given here override it",
    )


def _trainer_config(cls: type, args: argparse.Namespace):
    """Resolve a trainer config; with --resume the checkpoint's saved config replaces defaults and preset."""
    from lipsync.training.runtime import resolve_resume, saved_train_config

    provisional = config_from_args(cls, args)
    resume = resolve_resume(args.resume, provisional.out_dir)
    if resume is None:
        return provisional, None
    return config_from_args(cls, args, base=saved_train_config(resume)), resume


def _print_result(result: dict) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(json.dumps(result, indent=2, default=float))


def _run_expert(args: argparse.Namespace) -> int:
    from lipsync.training.train_expert import train

    config, resume = _trainer_config(ExpertTrainConfig, args)
    _print_result(train(config, resume))
    return 0


def _run_generator(args: argparse.Namespace) -> int:
    from lipsync.training.train_generator import train

    config, resume = _trainer_config(GeneratorTrainConfig, args)
    _print_result(train(config, resume))
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from lipsync.training.evaluate import evaluate

    report = evaluate(config_from_args(EvaluateConfig, args))
    summary = {k: report[k] for k in ("scorer", "split", "conditions") if k in report}
    if "expert_accuracy" in report:
        summary["expert_accuracy"] = report["expert_accuracy"]
    print(json.dumps(summary, indent=2))
    return 0


def _run_enroll(args: argparse.Namespace) -> int:
    from lipsync.training.enroll.config import EnrollConfig
    from lipsync.training.enroll.run import enroll

    result = enroll(config_from_args(EnrollConfig, args))
    print(json.dumps(result, indent=2, default=float))
    return 0


def _run_preprocess(args: argparse.Namespace) -> int:
    from lipsync.training.data.preprocess import run

    return run(args)


def _add_corpus(subparsers: argparse._SubParsersAction) -> None:
    try:
        from lipsync.training.data.synthetic import cli as synthetic_cli
    except ImportError as exc:  # the synthetic corpus module is optional for everything else
        reason = str(exc)
        p = subparsers.add_parser("corpus", help="generate the synthetic corpus (unavailable here)")

        def unavailable(args: argparse.Namespace) -> int:
            logger.error("the synthetic corpus generator cannot be imported: %s", reason)
            return 2

        p.set_defaults(func=unavailable)
        return
    synthetic_cli.add_subcommand(subparsers)
    # Dispatch through run(args) unless add_subcommand already set its own func.
    parser = subparsers.choices["corpus"]
    if parser.get_default("func") is None:
        parser.set_defaults(func=synthetic_cli.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lipsync-train", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_corpus(sub)

    from lipsync.training.data import preprocess  # light: no torch

    p = sub.add_parser(
        "preprocess", help="real video -> face crops + audio.wav in the LRS2 layout", description=preprocess.__doc__
    )
    preprocess.add_arguments(p)
    p.set_defaults(func=_run_preprocess)

    p = sub.add_parser(
        "expert",
        help="train the lip-sync expert (SyncNet_color)",
        description="Train the expert on 5-frame lower-half windows vs 200 ms mel windows. Presets: paper (GPU), cpu-small, tiny.",
    )
    add_config_arguments(p, ExpertTrainConfig)
    _add_resume(p)
    p.set_defaults(func=_run_expert)

    p = sub.add_parser(
        "generator",
        help="train the generator against the frozen expert (+ quality GAN)",
        description="Train Wav2Lip with L1, the frozen expert's sync loss and the visual-quality discriminator. "
        "Presets: paper (GPU), cpu-small, tiny.",
    )
    add_config_arguments(p, GeneratorTrainConfig)
    _add_resume(p)
    p.set_defaults(func=_run_generator)

    p = sub.add_parser(
        "evaluate",
        help="LSE-D/LSE-C of real, generated, shifted and mismatched clips; expert accuracy",
        description="Scores the held-out split with syncnet_v2 (--syncnet-v2) or the project's expert; "
        "writes report.json and lse.png.",
    )
    add_config_arguments(p, EvaluateConfig)
    p.set_defaults(func=_run_evaluate)

    from lipsync.training.enroll.config import EnrollConfig

    p = sub.add_parser(
        "enroll",
        help="fine-tune the shipped generator on one recording of a person: an avatar folder",
        description="From a recording of one person speaking (5 s to 10 min, any container PyAV reads): track the "
        "face, fine-tune the shipped generator with L1, the frozen expert's sync loss and the quality "
        "discriminator within --minutes, and write an avatar folder (weights, face track, reference still and "
        "loop, report.json/png). Use it with lipsync --avatar DIR, lipsync-gateway --avatar DIR, "
        "lipsync-export --avatar DIR.",
    )
    add_config_arguments(p, EnrollConfig)
    p.set_defaults(func=_run_enroll)

    from lipsync.training import publish

    publish.add_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from lipsync.training.runtime import setup_logging

    setup_logging()
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError) as exc:
        parser.exit(2, f"lipsync-train {args.command}: error: {exc}\n")
    except ValueError as exc:  # CheckpointError, CorpusError: setup errors with a message that names the culprit
        logger.error("%s", exc)
        logger.debug("where it was raised", exc_info=True)  # -v shows the traceback
        return 2


if __name__ == "__main__":
    sys.exit(main())
