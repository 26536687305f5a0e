"""Enrolment benchmark: how long `lipsync-train enroll` takes and what it buys, for 10 s, 1 min and 5 min
recordings of one person, measured on the held-out end of the recording and on another recording of
the same person.

The recordings are synthetic (training/data/synthetic/recording.py: one photo-style identity and voice;
another session changes light, background, framing and words): no real talking-face video can be
installed here. Figures per length, generic default vs enrolled avatar, through the product path
(tracker, crop, model, mouth blend): lower-face PSNR/SSIM in self-reconstruction, skin dE, mouth
sharpness, independent sync (lip opening vs loudness) with the own and with new speech.

    .venv/bin/python -m lipsync.benchmarks.enroll [--lengths 10 60 300] [--minutes 10] [--other-seconds 20]

Writes benchmarks/results/enroll.json and enroll.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lipsync.benchmarks.machine import describe_machine
from lipsync.client.avatar import load_avatar
from lipsync.client.model_repository import SHIPPED_GENERATOR
from lipsync.training.data.synthetic.recording import write_recording
from lipsync.training.enroll.config import EnrollConfig
from lipsync.training.enroll.recording import FPS, load_speech
from lipsync.training.enroll.report import evaluate_models, make_items
from lipsync.training.enroll.run import enroll

log = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results"
PERSON = 7
OWN, NEW = "held_out_own_speech", "held_out_new_speech"


def other_recording_figures(avatar_dir: Path, other: Path, seconds: float) -> dict:
    """Generic vs enrolled on another session of the person: re-driven by its own speech, and dubbed with
    speech from the second half of that recording."""
    wav = load_speech(other)
    frames = int(seconds * FPS)
    half = len(wav) // 2
    items = make_items(other, wav, 0, frames, new_speech=wav[half:])
    figures, _ = evaluate_models(items, {"generic": SHIPPED_GENERATOR, "enrolled": load_avatar(avatar_dir).weights})
    return figures


def gains(figures: dict) -> dict:
    g, e = figures["generic"], figures["enrolled"]
    return {
        "lower_face_psnr_db": e[OWN]["lower_face_psnr_db"] - g[OWN]["lower_face_psnr_db"],
        "delta_e_skin": e[OWN]["delta_e_skin"] - g[OWN]["delta_e_skin"],
        "sharpness_ratio": e[OWN]["sharpness_ratio"] - g[OWN]["sharpness_ratio"],
        "sync_new_speech": e[NEW]["sync_lip_vs_loudness"] - g[NEW]["sync_lip_vs_loudness"],
    }


def targets_met(g: dict) -> dict:
    return {
        "psnr_at_least_3_db_above_generic": g["lower_face_psnr_db"] >= 3.0,
        "colour_at_least_as_good": g["delta_e_skin"] <= 0.0,
        "sharpness_at_least_as_good": g["sharpness_ratio"] >= 0.0,
        "sync_with_new_speech_not_lower": g["sync_new_speech"] >= 0.0,
    }


def plot(runs: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = [f"{r['recording_seconds']:.0f} s" for r in runs]
    x = np.arange(len(runs))
    for where, offset, colour in (("held_out", -0.2, "tab:blue"), ("other_recording", 0.2, "tab:orange")):
        axes[0].bar(x + offset, [r[where]["gains"]["lower_face_psnr_db"] for r in runs], 0.4, label=where, color=colour)
        axes[1].bar(x + offset, [r[where]["gains"]["sync_new_speech"] for r in runs], 0.4, label=where, color=colour)
    axes[0].axhline(3.0, color="k", ls="--", lw=1, label="target +3 dB")
    axes[0].set_title("lower-face PSNR gain over generic (dB)")
    axes[1].axhline(0.0, color="k", lw=1)
    axes[1].set_title("sync with new speech: enrolled - generic")
    axes[2].bar(x, [r["enrolment_seconds"] / 60 for r in runs], 0.5, color="tab:green")
    axes[2].axhline(10, color="k", ls="--", lw=1, label="10 min")
    axes[2].set_title("enrolment time (min)")
    for ax in axes:
        ax.set_xticks(x, labels)
        ax.legend(fontsize=8)
    fig.suptitle(f"Avatar enrolment (synthetic recordings), {describe_machine()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync.benchmarks.enroll", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 60.0, 300.0], help="recording seconds")
    parser.add_argument("--minutes", type=float, default=10.0, help="enrolment budget per recording")
    parser.add_argument("--other-seconds", type=float, default=20.0, help="length of the other recording")
    parser.add_argument("--eval-seconds", type=float, default=10.0, help="frames of the other recording measured")
    parser.add_argument("--out", type=Path, default=RESULTS / "enroll.json")
    parser.add_argument("--work", type=Path, default=None, help="keep recordings and avatars here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="enroll-bench-"))
    started = time.perf_counter()

    def recording(name: str, session: int, seconds: float) -> Path:
        path = work / name  # reused when --work already holds it: the same person, session and length
        return path if path.is_file() else write_recording(path, person=PERSON, session=session, seconds=seconds)

    other = recording(f"other_session_{args.other_seconds:.0f}s.mp4", 1, args.other_seconds)
    runs = []
    for seconds in args.lengths:
        video = recording(f"recording_{seconds:.0f}s.mp4", 0, seconds)
        out = work / f"avatar_{seconds:.0f}s"
        enroll(EnrollConfig(video=str(video), out=str(out), minutes=args.minutes, overwrite=True))
        report = json.loads((out / "report.json").read_text())
        other_figures = other_recording_figures(out, other, args.eval_seconds)
        run = {
            "recording_seconds": seconds,
            "enrolment_seconds": report["enrolment_seconds"],
            "stage_seconds": report["stage_seconds"],
            "training": report["training"],
            "held_out": {
                "figures": report["figures"],
                "gains": report["gains"],
                "targets": targets_met(report["gains"]),
            },
            "other_recording": {
                "figures": other_figures,
                "gains": gains(other_figures),
                "targets": targets_met(gains(other_figures)),
            },
        }
        runs.append(run)
        log.info(
            "%.0f s recording: %s", seconds, json.dumps({k: run[k]["gains"] for k in ("held_out", "other_recording")})
        )
        out_data = {
            "benchmark": "enroll",
            "machine": describe_machine(),
            "command": " ".join(["python -m lipsync.benchmarks.enroll", *(argv if argv is not None else sys.argv[1:])]),
            "material": f"synthetic photo-style person {PERSON}: session 0 recordings of each length, session 1 "
            f"({args.other_seconds:g} s) as the other recording",
            "budget_minutes": args.minutes,
            "runs": runs,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out_data, indent=2, allow_nan=True) + "\n")  # after every length
    plot(runs, args.out.with_suffix(".png"))
    print(
        json.dumps(
            [
                {
                    "seconds": r["recording_seconds"],
                    "minutes": r["enrolment_seconds"] / 60,
                    "held_out": r["held_out"]["gains"],
                    "other": r["other_recording"]["gains"],
                }
                for r in runs
            ],
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
