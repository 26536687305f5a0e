"""Speech with phoneme timings from libespeak-ng, through ctypes (no dev headers needed).

libespeak-ng keeps state from one utterance to the next, so every utterance is spoken by a freshly
initialised library in a forked child (about 5 ms): the same text and voice always give the same
samples. Linux/macOS only (fork). Audio is resampled from espeak's native rate (22050 Hz) to 16 kHz with a polyphase filter, and every
phoneme event keeps its position as a 16 kHz sample index.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import threading
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16_000

# Values from speak_lib.h (espeak-ng 1.51).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_EE_OK = 0

INSTALL_HINT = "install it with: apt-get install -y espeak-ng libespeak-ng1 (Debian/Ubuntu)"
LIBRARY_ENV = "LIPSYNC_ESPEAK_LIBRARY"


class EspeakError(RuntimeError):
    """libespeak-ng failed (bad voice, synthesis error)."""


class EspeakNotFound(EspeakError):
    """libespeak-ng (or its voice data) is not installed."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


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


def load_library(path: str | None = None) -> ctypes.CDLL:
    path = path or find_library()
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise EspeakNotFound(f"libespeak-ng could not be loaded ({path!r}: {exc}); {INSTALL_HINT}") from exc
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    return lib


class _Collector:
    """Gathers what libespeak-ng's synthesis callback hands over."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.events: list[tuple[int, int, bytes]] = []
        self.callback = _SynthCallback(self._on_synth)  # kept referenced: espeak holds the pointer

    def _on_synth(self, wav, numsamples, events) -> int:
        if numsamples > 0 and wav:
            self.chunks.append(ctypes.string_at(wav, numsamples * 2))
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                self.events.append((_EVENT_PHONEME, ev.sample, bytes(ev.id.string).split(b"\0", 1)[0]))
            elif ev.type == _EVENT_WORD:
                self.events.append((_EVENT_WORD, ev.sample, b""))
            i += 1
        return 0  # continue synthesis


def _synthesize_fresh(library: str, text: str, voice: Voice | None) -> dict:
    """Initialise libespeak-ng and speak once (run in a fresh child: the library keeps state)."""
    lib = load_library(library)
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, None, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT)
    if rate <= 0:
        return {"error": "not_found", "message": f"espeak_Initialize failed (returned {rate}): is espeak-ng-data installed? {INSTALL_HINT}"}
    if voice is None:
        return {"rate": int(rate), "pcm": b"", "events": []}
    collector = _Collector()
    lib.espeak_SetSynthCallback(collector.callback)
    if lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
        return {"error": "voice", "message": f"espeak-ng has no voice {voice.name!r} (see `espeak-ng --voices`)"}
    for param, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch), (_PARAM_RANGE, voice.pitch_range), (_PARAM_VOLUME, 100)):
        lib.espeak_SetParameter(param, int(value), 0)
    data = text.encode("utf-8") + b"\0"
    buf = ctypes.create_string_buffer(data, len(data))
    err = lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    if err != _EE_OK:
        return {"error": "synth", "message": f"espeak_Synth failed with error {err} for voice {voice.name!r}"}
    return {"rate": int(rate), "pcm": b"".join(collector.chunks), "events": collector.events}


def _in_child(fn, *args) -> dict:
    """Run fn(*args) in a forked child and return its (picklable) result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 0
        try:
            os.close(r)
            try:
                payload = pickle.dumps(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                payload = pickle.dumps({"error": "exception", "message": f"{type(exc).__name__}: {exc}"})
            view = memoryview(payload)
            while view:
                view = view[os.write(w, view) :]
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        raise EspeakError(f"the espeak-ng child process died (wait status {status})")
    return pickle.loads(b"".join(chunks))


class Espeak:
    """The synthesizer. Each utterance is spoken by a freshly initialised libespeak-ng in a forked
    child: the library carries state from one utterance to the next (its pitch flutter, its noise
    generator), so only a fresh one says the same text the same way every time: determinism."""

    _instance: Espeak | None = None
    _instance_lock = threading.Lock()

    def __init__(self, library: str | None = None) -> None:
        self.library = library or find_library()
        load_library(self.library)  # raises EspeakNotFound with the install hint
        probe = _in_child(_synthesize_fresh, self.library, "", None)
        self._raise_for(probe)
        self.native_rate = int(probe["rate"])
        ratio = Fraction(SAMPLE_RATE, self.native_rate)
        self._up, self._down = ratio.numerator, ratio.denominator

    @classmethod
    def instance(cls) -> Espeak:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    @staticmethod
    def _raise_for(result: dict) -> None:
        if "error" in result:
            raise (EspeakNotFound if result["error"] == "not_found" else EspeakError)(result["message"])

    def synthesize(self, text: str, voice: Voice) -> Speech:
        """Speak `text` with `voice`; raise EspeakError for an unknown voice or a failed synthesis."""
        result = _in_child(_synthesize_fresh, self.library, text, voice)
        self._raise_for(result)
        native = np.frombuffer(result["pcm"], dtype="<i2")
        audio = resample_poly(native.astype(np.float32) / 32768.0, self._up, self._down).astype(np.float32)
        n = len(audio)
        scale = SAMPLE_RATE / self.native_rate

        def at(sample: int) -> int:
            return min(max(int(round(sample * scale)), 0), n)

        events = result["events"]
        phonemes = tuple(Phoneme(name.decode("utf-8", "replace"), at(s)) for kind, s, name in events if kind == _EVENT_PHONEME)
        words = tuple(at(s) for kind, s, _ in events if kind == _EVENT_WORD)
        return Speech(audio=audio, phonemes=phonemes, word_starts=words)


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
