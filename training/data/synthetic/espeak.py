"""Speech with phoneme timings from libespeak-ng (Debian's espeak-ng), through ctypes.

The library is driven by `espeak_server.py`, a small single-threaded process that speaks every
utterance with a freshly initialised library (libespeak-ng carries state from one utterance to the
next), so the same text and voice always give the same samples. Audio comes back at espeak's native
rate (22050 Hz) and is resampled to 16 kHz with a polyphase filter; every phoneme event keeps its
position as a 16 kHz sample index. Linux/macOS (the server forks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import espeak_server
from .espeak_server import INSTALL_HINT

SAMPLE_RATE = 16_000
LIBRARY_ENV = "LIPSYNC_ESPEAK_LIBRARY"
__all__ = [
    "INSTALL_HINT",
    "LIBRARY_ENV",
    "SAMPLE_RATE",
    "Espeak",
    "EspeakError",
    "EspeakNotFound",
    "Phoneme",
    "Speech",
    "Voice",
    "find_library",
    "list_variants",
    "synthesize",
]


class EspeakError(RuntimeError):
    """libespeak-ng failed (bad voice, synthesis error)."""


class EspeakNotFound(EspeakError):
    """libespeak-ng (or its voice data) is not installed."""


@dataclass(frozen=True)
class Phoneme:
    """One phoneme event: espeak's phoneme mnemonic and where it starts, in 16 kHz samples."""

    name: str
    start: int


@dataclass(frozen=True)
class Voice:
    """What espeak is asked to speak with: a language voice, a variant (timbre), rate and pitch."""

    language: str  # an espeak voice name, e.g. "en-us", "de"
    variant: str = ""  # a file in espeak-ng-data/voices/!v, e.g. "f3", "klatt2"; "" for the default
    rate: int = 175  # words per minute, 80..450
    pitch: int = 50  # 0..100
    pitch_range: int = 50  # 0..100

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language

    def __post_init__(self) -> None:
        if not 80 <= self.rate <= 450:
            raise ValueError(f"rate must be in 80..450 words per minute, got {self.rate}")
        if not 0 <= self.pitch <= 100 or not 0 <= self.pitch_range <= 100:
            raise ValueError(f"pitch and pitch_range must be in 0..100, got {self.pitch}, {self.pitch_range}")


@dataclass(frozen=True)
class Speech:
    """Synthesized speech: float32 mono audio at 16 kHz and its phoneme events in time order."""

    audio: np.ndarray
    phonemes: tuple[Phoneme, ...]
    word_starts: tuple[int, ...]
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


def find_library() -> str:
    """Path or soname of libespeak-ng; $LIPSYNC_ESPEAK_LIBRARY overrides the search."""
    override = os.environ.get(LIBRARY_ENV)
    if override is not None:
        return override
    return ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"


class Espeak:
    """A client of one espeak server process; thread-safe, one request at a time."""

    _instance: Espeak | None = None
    _instance_lock = threading.Lock()

    def __init__(self, library: str | None = None) -> None:
        self.library = library or find_library()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        probe = self._request("", None)  # raises EspeakNotFound with the install hint
        self.native_rate = int(probe["rate"])
        ratio = Fraction(SAMPLE_RATE, self.native_rate)
        self._up, self._down = ratio.numerator, ratio.denominator

    @classmethod
    def instance(cls) -> Espeak:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _start(self) -> subprocess.Popen:
        # -I: the server needs nothing but the standard library, and no PYTHON* settings
        cmd = [sys.executable, "-I", espeak_server.__file__]
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _request(self, text: str, voice: Voice | None) -> dict:
        payload = (
            self.library,
            text,
            None if voice is None else (voice.name, voice.rate, voice.pitch, voice.pitch_range),
        )
        with self._lock:
            for attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                try:
                    espeak_server.write_frame(self._proc.stdin, payload)
                    reply = espeak_server.read_frame(self._proc.stdout)
                except (BrokenPipeError, OSError):
                    reply = None
                if reply is not None:
                    break
                self._proc.kill()
                self._proc = None
                if attempt:
                    raise EspeakError("the espeak server process died twice in a row")
        if "error" in reply:
            raise (EspeakNotFound if reply["error"] == "not_found" else EspeakError)(reply["message"])
        return reply

    def synthesize(self, text: str, voice: Voice) -> Speech:
        """Speak `text` with `voice`; raise EspeakError for an unknown voice or a failed synthesis."""
        from scipy.signal import resample_poly

        result = self._request(text, voice)
        native = np.frombuffer(result["pcm"], dtype="<i2")
        audio = resample_poly(native.astype(np.float32) / 32768.0, self._up, self._down).astype(np.float32)
        n = len(audio)
        scale = SAMPLE_RATE / self.native_rate

        def at(sample: int) -> int:
            return min(max(int(round(sample * scale)), 0), n)

        kinds = espeak_server.EVENT_PHONEME, espeak_server.EVENT_WORD
        events = result["events"]
        phonemes = tuple(Phoneme(nm.decode("utf-8", "replace"), at(s)) for k, s, nm in events if k == kinds[0])
        words = tuple(at(s) for k, s, _ in events if k == kinds[1])
        return Speech(audio=audio, phonemes=phonemes, word_starts=words)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait(timeout=5)
            self._proc = None


def synthesize(text: str, voice: Voice) -> Speech:
    return Espeak.instance().synthesize(text, voice)


def list_variants(data_dir: str | None = None) -> list[str]:
    """Voice variants installed in espeak-ng-data/voices/!v (sorted)."""
    for d in [data_dir] if data_dir else _data_dirs():
        vdir = os.path.join(d, "voices", "!v")
        if os.path.isdir(vdir):
            return sorted(f for f in os.listdir(vdir) if os.path.isfile(os.path.join(vdir, f)))
    return []


def _data_dirs() -> list[str]:
    return [
        "/usr/lib/x86_64-linux-gnu/espeak-ng-data",
        "/usr/lib/aarch64-linux-gnu/espeak-ng-data",
        "/usr/share/espeak-ng-data",
        "/usr/local/share/espeak-ng-data",
    ]
