"""One synthetic talking-head clip: speech with its timings, the mouth track, the rendered frames.

Frame k of a clip shows the instant k / fps of its audio; the mouth shape at that instant comes from
the phoneme events that espeak reported at their sample positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .espeak import SAMPLE_RATE, Phoneme, Speech, Voice, synthesize
from .identity import Identity, sample_identity
from .renderer import Camera, Face, Pose, Scene, blink_track, pose_track, sample_scene
from .visemes import frame_track


@dataclass(frozen=True)
class ClipSpeech:
    """Speech laid out for video: audio trimmed to a whole number of frames, timings shifted with it."""

    audio: np.ndarray  # float32 mono at 16 kHz, exactly n_frames / fps long
    phonemes: tuple[Phoneme, ...]
    n_frames: int
    fps: float

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def prepare_speech(
    speech: Speech,
    rng: np.random.Generator,
    fps: float = 25.0,
    max_seconds: float | None = None,
    lead: tuple[float, float] = (0.1, 0.35),
    trail: tuple[float, float] = (0.1, 0.3),
    noise: bool = True,
) -> ClipSpeech:
    """Pad with silence, cut to at most `max_seconds`, set the loudness, optionally add room noise."""
    pre = int(rng.uniform(*lead) * SAMPLE_RATE)
    post = int(rng.uniform(*trail) * SAMPLE_RATE)
    audio = np.concatenate([np.zeros(pre, np.float32), speech.audio, np.zeros(post, np.float32)])
    phonemes = [Phoneme(p.name, p.start + pre) for p in speech.phonemes]
    if max_seconds is not None and len(audio) > int(max_seconds * SAMPLE_RATE):
        cut = int(max_seconds * SAMPLE_RATE)
        fade = min(320, cut)
        audio = audio[:cut].copy()
        audio[cut - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
        phonemes = [p for p in phonemes if p.start < cut]
    spf = SAMPLE_RATE / fps
    n_frames = max(1, int(len(audio) // spf))
    n = int(round(n_frames * spf))
    audio = audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))
    # loudness: a speech RMS between -30 and -18 dBFS, peaks kept under full scale
    voiced = audio[np.abs(audio) > 1e-3]
    rms = float(np.sqrt(np.mean(voiced**2))) if len(voiced) else 0.0
    if rms > 0:
        audio = audio * (10 ** (rng.uniform(-30, -18) / 20) / rms)
    if noise and rng.random() < 0.5:
        level = 10 ** (rng.uniform(-65, -40) / 20)
        hiss = rng.normal(0, 1, len(audio)).astype(np.float32)
        if rng.random() < 0.5:  # pinkish: low-passed
            hiss = np.convolve(hiss, np.ones(8) / np.sqrt(8), mode="same")
        audio = audio + level * hiss
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    return ClipSpeech(audio.astype(np.float32), tuple(p for p in phonemes if p.start < n), n_frames, fps)


def frame_energy(audio: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """RMS of the audio under each video frame."""
    spf = SAMPLE_RATE / fps
    out = np.zeros(n_frames, np.float32)
    for k in range(n_frames):
        seg = audio[int(k * spf) : int((k + 1) * spf)]
        out[k] = float(np.sqrt(np.mean(seg**2))) if len(seg) else 0.0
    return out


@dataclass
class RenderedFrame:
    image: np.ndarray  # BGR uint8, the full frame
    box: tuple[float, float, float, float]  # the renderer's own face box (x1, y1, x2, y2)
    mouth: np.ndarray  # the mouth parameters drawn
    pose: Pose


class ClipRenderer:
    """Renders the frames of one clip: a person, a scene and a mouth track."""

    def __init__(self, identity: Identity, scene: Scene, speech: ClipSpeech, seed: int) -> None:
        self.identity = identity
        self.scene = scene
        self.speech = speech
        self.face = Face(identity, scene)
        self.camera = Camera(self.face, scene, seed)
        n, fps = speech.n_frames, speech.fps
        self.track = frame_track(speech.phonemes, speech.duration, n, fps)
        energy = frame_energy(speech.audio, n, fps)
        energy = energy / (energy.max() + 1e-9)
        self.poses = pose_track(scene, n, fps, 2 * self.face.lay.a, energy)
        self.blinks = blink_track(scene, n, fps)

    def __len__(self) -> int:
        return self.speech.n_frames

    def frame(self, k: int, camera_effects: bool = True) -> RenderedFrame:
        canvas = self.face.canvas(self.track[k], int(self.blinks[k]))
        pose = self.poses[k]
        image = self.camera.compose(canvas, pose, camera_effects)
        return RenderedFrame(image, self.camera.face_box(pose), self.track[k], pose)

    def __iter__(self) -> Iterator[RenderedFrame]:
        for k in range(len(self)):
            yield self.frame(k)


def render_talking_clip(
    seed: int,
    text: str,
    size: tuple[int, int] = (640, 480),
    fps: int = 25,
    voice: Voice | None = None,
    still: bool = False,
    style: str = "photo",
) -> tuple[list[np.ndarray], np.ndarray, list[tuple[float, float, float, float]]]:
    """A full-frame synthetic talking head saying `text`: (BGR frames, float32 16 kHz audio, face boxes).

    For tests and demos of the live and offline paths; the same seed gives the same clip.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A1C]))
    identity = sample_identity(seed, int(rng.integers(1_000_000)), style)
    voice = voice or Voice(
        "en-us", str(rng.choice(["", "m3", "f2", "f4", "m7"])), int(rng.integers(150, 185)), int(rng.integers(35, 65))
    )
    speech = prepare_speech(synthesize(text, voice), rng, fps, noise=False)
    scene = sample_scene(rng, size, still=still, style=style)
    clip = ClipRenderer(identity, scene, speech, int(rng.integers(2**31)))
    frames, boxes = [], []
    for fr in clip:
        frames.append(fr.image)
        boxes.append(fr.box)
    return frames, speech.audio, boxes
