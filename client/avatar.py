"""An enrolled avatar: a folder written by `lipsync-train enroll` that the offline command, the gateway
and the export read. This module only reads it (serving never imports training).

    DIR/avatar.json   the manifest, written last: a folder without it is not an avatar
    DIR/wav2lip.pt    the generator fine-tuned on the person (the project's checkpoint format)
    DIR/model.onnx    the same network in ONNX (written by `lipsync-export --avatar DIR`)
    DIR/still.png     reference still: a frame of the recording with the mouth at rest
    DIR/loop.mp4      reference loop: a few seconds of the recording, video only, for presenter sessions
    DIR/track.npz     the face box on every 25 fps frame of the recording (NaN where none was found)
    DIR/report.json, DIR/report.png   validation figures before and after, and a grid of frames
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST_FILE = "avatar.json"
WEIGHTS_FILE = "wav2lip.pt"
ONNX_FILE = "model.onnx"
STILL_FILE = "still.png"
LOOP_FILE = "loop.mp4"
TRACK_FILE = "track.npz"
REPORT_FILE = "report.json"
REPORT_PLOT_FILE = "report.png"
FORMAT_VERSION = 1
# Triton model names and offer values: lower-case letters, digits, '_' and '-', starting with a letter.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
TRITON_PREFIX = "avatar_"


class AvatarError(ValueError):
    """An avatar folder is missing, incomplete or invalid; the message names the folder and the problem."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise AvatarError(
            f"avatar name {name!r} is not valid: use 1-40 lower-case letters, digits, '_' or '-', starting with a letter"
        )
    return name


def name_from_folder(folder: str | Path) -> str:
    """A valid avatar name derived from a folder name ('Anna Smith' -> 'anna_smith')."""
    raw = re.sub(r"[^a-z0-9_-]+", "_", Path(folder).resolve().name.lower()).strip("_-")
    if not raw or not raw[0].isalpha():
        raw = f"avatar_{raw}" if raw else "avatar"
    return raw[:40]


def triton_model_name(name: str) -> str:
    """The name of the avatar's own model in the Triton repository."""
    return TRITON_PREFIX + check_name(name).replace("-", "_")


@dataclass(frozen=True)
class Avatar:
    """A loaded avatar manifest with its files resolved."""

    name: str
    root: Path
    fps: float
    source: dict
    training: dict

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS_FILE

    @property
    def onnx(self) -> Path:
        return self.root / ONNX_FILE

    @property
    def still(self) -> Path:
        return self.root / STILL_FILE

    @property
    def loop(self) -> Path:
        return self.root / LOOP_FILE

    @property
    def track(self) -> Path:
        return self.root / TRACK_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def triton_model(self) -> str:
        return triton_model_name(self.name)

    def weights_for(self, backend: str) -> Path:
        """The weights file a backend runs: ONNX for onnxruntime, the checkpoint for pytorch."""
        if backend == "onnxruntime":
            if not self.onnx.is_file():
                raise AvatarError(
                    f"avatar {self.name!r} ({self.root}) has no {ONNX_FILE}: run `lipsync-export --avatar {self.root}` "
                    "or use the pytorch backend"
                )
            return self.onnx
        return self.weights


def load_avatar(folder: str | Path) -> Avatar:
    """Read and check an avatar folder; AvatarError says what is wrong."""
    root = Path(folder)
    manifest = root / MANIFEST_FILE
    if not root.is_dir():
        raise AvatarError(f"avatar folder {root} does not exist")
    if not manifest.is_file():
        raise AvatarError(
            f"{root} is not an avatar: it has no {MANIFEST_FILE} (enrolment did not finish; "
            f"run `lipsync-train enroll --video FILE --out {root}` or resume it with --resume)"
        )
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AvatarError(f"{manifest} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise AvatarError(
            f"{manifest}: unknown avatar format {data.get('format') if isinstance(data, dict) else data!r}"
        )
    avatar = Avatar(
        name=check_name(data.get("name", "")),
        root=root,
        fps=float(data.get("fps", 25.0)),
        source=dict(data.get("source") or {}),
        training=dict(data.get("training") or {}),
    )
    for path in (avatar.weights, avatar.still, avatar.loop):
        if not path.is_file():
            raise AvatarError(f"avatar {avatar.name!r} ({root}) is missing {path.name}")
    return avatar


def load_avatars(folders: list[str] | tuple[str, ...]) -> dict[str, Avatar]:
    """Several avatars by name; two folders with one name are refused."""
    avatars: dict[str, Avatar] = {}
    for folder in folders:
        avatar = load_avatar(folder)
        if avatar.name in avatars:
            raise AvatarError(f"two avatars are named {avatar.name!r}: {avatars[avatar.name].root} and {folder}")
        avatars[avatar.name] = avatar
    return avatars
