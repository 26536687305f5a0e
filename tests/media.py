"""Media for tests: the astronaut's face moving on a known path, face-free frames, and espeak-ng speech.

A plain helper module (import it as `from tests.media import ...`; pytest runs from the
repository root). The generators live in benchmarks/synthetic_media.py, because the
benchmarks use them too and must not import tests.
"""

import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from lipsync.benchmarks.synthetic_media import (
    ASTRONAUT_FACE_BOX,
    SyntheticClip,
    astronaut_bgr,
    face_path,
    frame_without_face,
    make_moving_face_clip,
    moving_face_clip,
    render_face,
)

__all__ = [
    "ASTRONAUT_FACE_BOX",
    "espeak",
    "SyntheticClip",
    "astronaut_bgr",
    "face_path",
    "frame_without_face",
    "make_moving_face_clip",
    "moving_face_clip",
    "render_face",
]


def espeak(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng, as 16 kHz float32 samples; the test is skipped where espeak-ng is missing."""
    from lipsync.client.audio import load_audio

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-w", f.name, text], check=True)
        return load_audio(f.name)
