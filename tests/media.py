"""Synthetic media for tests: the astronaut's face moving on a known path, and face-free frames.

A plain helper module (import it as `from tests.media import ...`; pytest runs from the
repository root). The generators live in benchmarks/synthetic_media.py, because the
benchmarks use them too and must not import tests.
"""

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
    "SyntheticClip",
    "astronaut_bgr",
    "face_path",
    "frame_without_face",
    "make_moving_face_clip",
    "moving_face_clip",
    "render_face",
]
