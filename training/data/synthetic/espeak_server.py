"""libespeak-ng through ctypes, served from a small single-threaded process.

libespeak-ng keeps state from one utterance to the next (its pitch flutter, its noise generator),
so only a freshly initialised library says the same text the same way twice. This process loads
the library once and forks a child per utterance that initialises it, speaks and exits. It imports
nothing but the standard library and runs as a script (not through the package), so it has no
threads when it forks: a process that runs mediapipe or OpenCV threads could deadlock a forked child.

Protocol on stdin/stdout: 8-byte little-endian length + pickle, request then reply:
    (library, text, voice) -> {"rate", "pcm" (int16 bytes), "events": [(kind, sample, name)]}
                            or {"error": "not_found" | "voice" | "synth" | "exception", "message"}
voice is (name, rate, pitch, pitch_range), or None to only check that the library initialises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import struct
import sys

# Values from speak_lib.h (espeak-ng 1.51).
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_PHONEME = 7
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4
EE_OK = 0

INSTALL_HINT = "install it with: apt-get install -y espeak-ng libespeak-ng1 (Debian/Ubuntu)"


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


def load_library(path: str) -> ctypes.CDLL:
    """Open libespeak-ng and declare the functions used; OSError when it is not there."""
    lib = ctypes.CDLL(path)
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


def speak_once(lib: ctypes.CDLL, text: str, voice: tuple[str, int, int, int] | None) -> dict:
    """Initialise the library and speak `text` once (in a fresh child: see the module docstring)."""
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 200, None, INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT)
    if rate <= 0:
        msg = f"espeak_Initialize failed (returned {rate}): is espeak-ng-data installed? {INSTALL_HINT}"
        return {"error": "not_found", "message": msg}
    if voice is None:
        return {"rate": int(rate), "pcm": b"", "events": []}
    chunks: list[bytes] = []
    events: list[tuple[int, int, bytes]] = []

    def on_synth(wav, numsamples, evs) -> int:
        if numsamples > 0 and wav:
            chunks.append(ctypes.string_at(wav, numsamples * 2))
        i = 0
        while evs[i].type != EVENT_LIST_TERMINATED:
            ev = evs[i]
            if ev.type == EVENT_PHONEME:
                events.append((EVENT_PHONEME, ev.sample, bytes(ev.id.string).split(b"\0", 1)[0]))
            elif ev.type == EVENT_WORD:
                events.append((EVENT_WORD, ev.sample, b""))
            i += 1
        return 0  # go on

    callback = _SynthCallback(on_synth)
    lib.espeak_SetSynthCallback(callback)
    name, wpm, pitch, pitch_range = voice
    if lib.espeak_SetVoiceByName(name.encode()) != EE_OK:
        return {"error": "voice", "message": f"espeak-ng has no voice {name!r} (see `espeak-ng --voices`)"}
    for param, value in ((PARAM_RATE, wpm), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range), (PARAM_VOLUME, 100)):
        lib.espeak_SetParameter(param, int(value), 0)
    data = text.encode("utf-8") + b"\0"
    buf = ctypes.create_string_buffer(data, len(data))
    err = lib.espeak_Synth(buf, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    if err != EE_OK:
        return {"error": "synth", "message": f"espeak_Synth failed with error {err} for voice {name!r}"}
    return {"rate": int(rate), "pcm": b"".join(chunks), "events": events}


def read_frame(f) -> object | None:
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(f.read(n))


def write_frame(f, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)) + data)
    f.flush()


def _in_fresh_child(lib: ctypes.CDLL, text: str, voice) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: speak, hand the result over, exit without cleanup
        code = 0
        try:
            os.close(r)
            try:
                result = speak_once(lib, text, voice)
            except BaseException as exc:
                result = {"error": "exception", "message": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(w, "wb") as out:
                write_frame(out, result)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as inp:
        result = read_frame(inp)
    _, status = os.waitpid(pid, 0)
    if result is None:
        return {"error": "exception", "message": f"the espeak-ng child died (wait status {status})"}
    return result  # type: ignore[return-value]


def serve() -> None:
    # The protocol owns the real stdout; anything the library prints goes to stderr.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    libs: dict[str, ctypes.CDLL | OSError] = {}
    while (request := read_frame(inp)) is not None:
        library, text, voice = request  # type: ignore[misc]
        if library not in libs:
            try:
                libs[library] = load_library(library)
            except OSError as exc:
                libs[library] = exc
        lib = libs[library]
        if isinstance(lib, OSError):
            reply = {
                "error": "not_found",
                "message": f"libespeak-ng could not be loaded ({library!r}: {lib}); {INSTALL_HINT}",
            }
        else:
            reply = _in_fresh_child(lib, text, voice)
        write_frame(proto_out, reply)


if __name__ == "__main__":
    serve()
