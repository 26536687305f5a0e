"""A synthetic "recording of one person": one identity and voice saying sentence after sentence, written as a
video file with its soundtrack, as a user would bring to `lipsync-train enroll`.

No real talking-face video can be installed here, so the enrolment tests and benchmark use these: the
same `person` gives the same face and voice in every recording, and `session` changes the scene
(light, background, framing) and the words, so "another recording of the same person" is another
session. Every file is labelled synthetic in its metadata.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from .clip import ClipRenderer, prepare_speech
from .espeak import SAMPLE_RATE, Phoneme, Speech, Voice, synthesize
from .identity import sample_identity
from .renderer import sample_scene
from .text import sentence

POPULATION_SEED = 424_242  # persons of these recordings; no training corpus is drawn from it


def person_voice(person: int) -> Voice:
    rng = np.random.default_rng(np.random.SeedSequence([POPULATION_SEED, person, 0xB0CE]))
    return Voice(
        "en-us", str(rng.choice(["", "m3", "f2", "f4", "m7"])), int(rng.integers(150, 180)), int(rng.integers(40, 60))
    )


def long_speech(person: int, session: int, seconds: float) -> Speech:
    """Sentences with short pauses between them until `seconds` of speech are reached."""
    rng = np.random.default_rng(np.random.SeedSequence([POPULATION_SEED, person, session, 0x5E55]))
    voice = person_voice(person)
    pieces: list[np.ndarray] = []
    phonemes: list[Phoneme] = []
    words: list[int] = []
    total = 0
    while total < seconds * SAMPLE_RATE:
        spoken = synthesize(sentence(rng, "en-us", int(rng.integers(6, 14))), voice)
        pause = np.zeros(int(rng.uniform(0.15, 0.6) * SAMPLE_RATE), np.float32)
        phonemes += [Phoneme(p.name, p.start + total) for p in spoken.phonemes]
        words += [w + total for w in spoken.word_starts]
        pieces += [spoken.audio.astype(np.float32), pause]
        total += len(spoken.audio) + len(pause)
    return Speech(np.concatenate(pieces), tuple(phonemes), tuple(words))


def write_recording(
    path: str | Path,
    *,
    person: int = 0,
    session: int = 0,
    seconds: float = 10.0,
    size: tuple[int, int] = (480, 360),
    fps: int = 25,
    audio_rate: int = 44_100,
) -> Path:
    """Render `seconds` of `person` talking in `session` to an MP4 (H.264 + AAC at `audio_rate`)."""
    import av
    from scipy.signal import resample_poly

    rng = np.random.default_rng(np.random.SeedSequence([POPULATION_SEED, person, session]))
    identity = sample_identity(POPULATION_SEED, person, "photo")
    speech = prepare_speech(long_speech(person, session, seconds), rng, fps, max_seconds=seconds, noise=False)
    scene = sample_scene(rng, size, style="photo")
    clip = ClipRenderer(identity, scene, speech, int(rng.integers(2**31)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = resample_poly(speech.audio, audio_rate // 100, SAMPLE_RATE // 100).astype(np.float32)
    with av.open(str(path), "w") as container:
        container.metadata["comment"] = f"SYNTHETIC: rendered talking head, person {person}, session {session}"
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "18", "preset": "veryfast"}
        sound = container.add_stream("aac", rate=audio_rate)
        sound.layout = "mono"
        for k in range(len(clip)):
            frame = av.VideoFrame.from_ndarray(clip.frame(k).image, format="bgr24")
            frame.pts = k
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        step = 1024
        for start in range(0, len(audio), step):
            chunk = audio[None, start : start + step]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
            frame.sample_rate = audio_rate
            frame.pts = start
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return path
