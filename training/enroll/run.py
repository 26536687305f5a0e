"""`lipsync-train enroll`: a recording of one person -> an avatar folder (client/avatar.py describes it).

Steps: check and track the recording (cached), fine-tune the shipped generator on its first part
within the time budget (resumable), choose the reference still and loop, measure before and after
on the held-out end, and write the manifest last. A failure before the manifest leaves no avatar:
the folder is removed if this run created it, and an earlier avatar in it is kept until the new
one is complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from lipsync.client import avatar as layout
from lipsync.client.contract import SAMPLE_RATE
from lipsync.client.model_repository import SHIPPED_EXPERT, SHIPPED_GENERATOR
from lipsync.client.networks.checkpoints import load_checkpoint, save_checkpoint
from lipsync.client.networks.wav2lip import Wav2Lip
from lipsync.training.config import GeneratorTrainConfig, build_config
from lipsync.training.enroll.config import EnrollConfig
from lipsync.training.enroll.recording import FPS, EnrollError, load_boxes, load_speech, track_recording
from lipsync.training.enroll.reference import LOOP_SECONDS, choose_loop, choose_still, frame_loudness, write_references
from lipsync.training.enroll.report import write_report
from lipsync.training.enroll.trainer import EnrollTrainer
from lipsync.training.runtime import latest_checkpoint, setup_distributed

logger = logging.getLogger(__name__)

# Seconds kept back from the budget for what follows training: reference frames and the report's
# four product-path runs (measured on 2 cores: 24-57 s for 10 s of held-out 480x360 video, the more when the machine is busy).
REPORT_RESERVE_S = 15.0
REPORT_S_PER_FRAME = 0.15
MIN_TRAIN_S = 20.0


def train_config(config: EnrollConfig, work: Path, threads: int) -> GeneratorTrainConfig:
    shipped = Wav2Lip.from_checkpoint(SHIPPED_GENERATOR).config
    never = 10**9  # evaluations and checkpoints are paced by time (EnrollTrainer), not by step counts
    return build_config(
        GeneratorTrainConfig,
        {
            "data_root": str(work / "corpus"),
            "out_dir": str(work / "train"),
            "expert_checkpoint": str(SHIPPED_EXPERT),
            "width": shipped.width,
            "head": shipped.head,
            "mel_offset": shipped.mel_offset,  # the avatar hears the audio as the model it starts from
            "init_from": str(SHIPPED_GENERATOR),
            "disc_width": 0.25,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "syncnet_wt": config.syncnet_wt,
            # The shipped generator already syncs: the expert's loss is on from the first step (the switch
            # exists for training from scratch). Without it, 2 min of L1 alone taught the network to copy
            # the reference mouth: new speech then moved the lips half as much (sync 0.13 against 0.47).
            "sync_threshold": 1e9,
            "disc_wt": config.disc_wt,
            "steps": config.max_steps,
            "eval_interval": never,
            "eval_batches": config.eval_batches,
            "checkpoint_interval": never,
            "sample_interval": never,
            "log_interval": 10,
            "keep_checkpoints": 1,
            "num_workers": 1,
            "mel_cache_mb": 64,
            "torch_threads": threads,
            "device": config.device,
            "seed": config.seed,
        },
    )


def _threads(config: EnrollConfig) -> int:
    import os

    return config.torch_threads or max(1, min(4, os.cpu_count() or 1))


def enroll(config: EnrollConfig, *, progress: bool = True) -> dict:
    started = time.monotonic()
    video, out = Path(config.video), Path(config.out)
    name = layout.check_name(config.name) if config.name else layout.name_from_folder(out)
    manifest = out / layout.MANIFEST_FILE
    if out.exists() and not out.is_dir():
        raise EnrollError(f"--out {out} is a file; give a folder for the avatar")
    if manifest.is_file() and not (config.overwrite or config.resume):
        raise EnrollError(
            f"{out} already holds avatar {json.loads(manifest.read_text()).get('name')!r}: pass --overwrite to replace it"
        )
    created = not out.exists()
    work = out / ".work"
    try:
        work.mkdir(parents=True, exist_ok=True)
        track = track_recording(
            video, work, val_share=config.val_share, max_val_seconds=config.max_val_seconds, progress=progress
        )
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    prep_s = time.monotonic() - started
    logger.info(
        "recording: %.1f s, %d frames, face on %.0f %%, speech %.0f %%; held out from %.1f s",
        track.seconds,
        track.frames,
        100 * track.face_share,
        100 * track.speech_share,
        track.val_start / FPS,
    )
    report_frames = min(int(config.report_seconds * FPS), track.frames - track.val_start)
    reserve = REPORT_RESERVE_S + REPORT_S_PER_FRAME * report_frames
    budget = max(MIN_TRAIN_S, config.minutes * 60 - prep_s - reserve)

    train_dir = work / "train"
    resume = latest_checkpoint(train_dir) if config.resume else None
    if resume is None:
        shutil.rmtree(train_dir, ignore_errors=True)
    gen_config = train_config(config, work, _threads(config))
    ctx = setup_distributed(gen_config.device, gen_config.torch_threads)
    best = work / "best.pt"
    trainer = EnrollTrainer(
        gen_config,
        ctx,
        resume,
        budget_s=budget,
        eval_every_s=config.eval_every_s,
        patience=config.patience,
        best_path=best,
        train_layers=config.train_layers,
        contrast=config.contrast,
        motion_wt=config.motion_wt,
    )
    try:
        result = trainer.run()
    except KeyboardInterrupt:
        raise EnrollError(f"interrupted at step {trainer.step}: continue with the same command and --resume") from None
    train_s = trainer.used_s

    # Reference frames from the training part: the quietest stretch with a face on every frame.
    boxes = load_boxes(work / "track.npz")
    wav = load_speech(video)[: track.frames * (SAMPLE_RATE // FPS)]
    loudness = frame_loudness(wav, track.frames)
    loop = choose_loop(boxes, loudness, track.val_start, int(LOOP_SECONDS * FPS))
    still = choose_still(boxes, loudness, *loop)
    staging = work / "avatar"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write_references(video, staging, loop, still, still_name=layout.STILL_FILE, loop_name=layout.LOOP_FILE)

    enrolled = load_checkpoint(best)
    model = Wav2Lip.from_checkpoint(best)
    source = {
        "file": video.name,
        "seconds": track.seconds,
        "fingerprint": track.fingerprint,
        "width": track.width,
        "height": track.height,
        "fps": track.source_fps,
    }
    training = {
        "from": SHIPPED_GENERATOR.name,
        "steps": int(trainer.step),
        "best_step": int(enrolled.get("step", 0)),
        "train_seconds": round(train_s, 1),
        "budget_seconds": round(budget, 1),
        "stopped": result.get("stopped") or "max steps",
        "held_out_lower_psnr_db": {"before": trainer.baseline.get("lower_psnr"), "after": trainer.best_psnr},
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("video", "out")},
    }
    save_checkpoint(
        staging / layout.WEIGHTS_FILE,
        model=model,
        config=model.config,
        step=trainer.step,
        extra={"avatar": name, "source": source, "training": training},
    )
    shutil.copy2(work / "track.npz", staging / layout.TRACK_FILE)
    report = write_report(
        video,
        wav,
        track.val_start,
        report_frames,
        {"generic": SHIPPED_GENERATOR, "enrolled": staging / layout.WEIGHTS_FILE},
        trainer.history,
        {"avatar": name, "source": source, "training": training, "machine": _machine()},
        staging / layout.REPORT_FILE,
        staging / layout.REPORT_PLOT_FILE,
    )
    total_s = time.monotonic() - started
    report["enrolment_seconds"] = round(total_s, 1)
    report["stage_seconds"] = {
        "track": round(prep_s, 1),
        "train": round(train_s, 1),
        "report": round(total_s - prep_s - train_s, 1),
    }
    (staging / layout.REPORT_FILE).write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")

    # Publish: the old manifest goes first, the files move in, the new manifest comes last.
    manifest.unlink(missing_ok=True)
    for path in staging.iterdir():
        path.replace(out / path.name)
    staging.rmdir()
    data = {
        "format": layout.FORMAT_VERSION,
        "name": name,
        "fps": float(FPS),
        "source": source,
        "training": training,
        # Frames of the recording (25 fps numbering, track.npz's rows) the references were taken from.
        "reference": {"still_frame": int(still), "loop_frames": [int(loop[0]), int(loop[1])]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(manifest)
    return {
        "avatar": name,
        "folder": str(out),
        "seconds": round(total_s, 1),
        **report.get("gains", {}),
        "held_out_lower_psnr_db": training["held_out_lower_psnr_db"],
        "steps": trainer.step,
        "stopped": training["stopped"],
    }


def _machine() -> str:
    import os
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model or platform.processor()}, {os.cpu_count()} cores, {'CUDA' if torch.cuda.is_available() else 'no GPU'}"
    )
