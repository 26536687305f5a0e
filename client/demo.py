"""The README's main job: lip-sync a bundled face to freshly synthesised speech, offline, on the CPU.

Inputs come from what the setup installed (no downloads): the public-domain astronaut portrait
that ships with scikit-image, and speech from Debian's espeak-ng.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2

from lipsync.client.lipsync import LipSyncConfig, run
from lipsync.client.video_io import MediaError

OUT_DIR = Path("results/demo")
SPEECH = (
    "Hello, and welcome. This video was lip synced by a neural network running on two processor cores. "
    "The mouth follows the words you hear, and the rest of the picture stays as it was."
)


def make_face_image(path: Path) -> Path:
    from skimage import data

    rgb = data.astronaut()  # 512x512, a real face, public domain
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def make_speech(path: Path, text: str = SPEECH) -> Path:
    if shutil.which("espeak-ng") is None:
        raise MediaError("espeak-ng is not installed; run `make setup` (it installs the Debian package)")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True)
    return path


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    face = make_face_image(OUT_DIR / "astronaut.png")
    speech = make_speech(OUT_DIR / "speech.wav")
    config = LipSyncConfig(face=face, audio=speech, outfile=OUT_DIR / "astronaut_lipsync.mp4")
    report = run(config)
    print(f"\nDemo written to {report.outfile} ({report.frames} frames, {report.audio_seconds:.1f} s).")
    print(f"Weights: {report.weights}")
    print(
        "NOTE: read training/weights/MODEL_CARD.md for what these weights can do. The shipped CPU model is a\n"
        "quarter-width generator trained on synthetic faces only. Only the mouth, its opening and the chin are\n"
        "replaced (the rest of the face is the input's); the new mouth follows the speech but is soft and on open\n"
        "vowels often blue-grey. For the paper's quality pass --checkpoint_path wav2lip_gan.pth."
    )
    print(report.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
