"""Text to speech with Debian's espeak-ng, for trying a push-speech session without a microphone or a TTS service.

`synthesize()` runs `espeak-ng --stdout` as a child process (never a shell; the text goes in on stdin, so
no text can be read as an option), with the text, voice and speaking rate checked first, and returns the
PCM it wrote. It is a coroutine: the event loop only waits on the process's pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import re
import shutil
import subprocess
import wave
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

ESPEAK = "espeak-ng"
MAX_TEXT_CHARS = 500  # about 30 s of speech at the default rate: half the push queue's default 60 s
RATE_WPM_RANGE = (80, 400)  # espeak-ng's -s; outside this it is unintelligible or a drone
DEFAULT_RATE_WPM = 160
DEFAULT_VOICE = "en-us"
# A language code (en-us, pt-br, cmn-latn-pinyin), optionally "+variant" (en-us+f3, en+Alicia).
_VOICE_NAME = re.compile(r"[a-z]{2,3}(-[a-z0-9]{1,8}){0,3}(\+[A-Za-z0-9_-]{1,20})?")
SYNTHESIS_TIMEOUT_S = 20.0


class TextRefused(ValueError):
    """Text, voice or rate that will not be spoken; the message names the bad value and the limit."""


class TextTooLong(TextRefused):
    """More text than one request may speak."""


class SynthesisError(RuntimeError):
    """espeak-ng is missing, failed, or ran past its deadline."""


@dataclass(frozen=True)
class Speech:
    """Synthesized speech: float32 mono samples in [-1, 1] at `sample_rate` (espeak-ng's own, 22050 Hz)."""

    samples: np.ndarray
    sample_rate: int
    voice: str
    rate_wpm: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def check_text(text: object) -> str:
    if not isinstance(text, str):
        raise TextRefused(f"'text' must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise TextRefused("'text' is empty: give something to say")
    if len(text) > MAX_TEXT_CHARS:
        raise TextTooLong(f"'text' has {len(text)} characters, over the {MAX_TEXT_CHARS}-character limit")
    # Control characters other than line breaks and tabs mean nothing to a speaker.
    return "".join(c if c.isprintable() or c in "\n\t" else " " for c in text)


def check_rate(rate: object) -> int:
    low, high = RATE_WPM_RANGE
    if rate is None:
        return DEFAULT_RATE_WPM
    if isinstance(rate, bool) or not isinstance(rate, int) or not low <= rate <= high:
        raise TextRefused(f"'rate' must be an integer number of words per minute in [{low}, {high}], got {rate!r}")
    return rate


@functools.cache
def installed_voices() -> frozenset[str]:
    """The languages espeak-ng can speak here (its own voices; MBROLA ones need MBROLA, not installed)."""
    espeak = shutil.which(ESPEAK)
    if espeak is None:
        return frozenset()
    listing = subprocess.run([espeak, "--voices"], capture_output=True, text=True, timeout=10, check=False).stdout
    voices = set()
    for line in listing.splitlines()[1:]:  # Pty Language Age/Gender VoiceName File Other Languages
        fields = line.split()
        if len(fields) >= 5 and not fields[4].startswith("mb/"):
            voices.add(fields[1])
    return frozenset(voices)


@functools.cache
def installed_variants() -> frozenset[str]:
    """Voice variants (f3, m2, Alicia, ...): espeak-ng lists them as files under !v/."""
    espeak = shutil.which(ESPEAK)
    if espeak is None:
        return frozenset()
    listing = subprocess.run([espeak, "--voices=variant"], capture_output=True, text=True, timeout=10, check=False)
    return frozenset(
        f.split("/", 1)[1] for line in listing.stdout.splitlines()[1:] for f in line.split()[4:5] if "/" in f
    )


def check_voice(voice: object) -> str:
    if voice is None:
        return DEFAULT_VOICE
    if not isinstance(voice, str) or not _VOICE_NAME.fullmatch(voice):
        raise TextRefused(f"'voice' must be an espeak-ng language code like 'en-us' or 'en-us+f3', got {voice!r}")
    language, _, variant = voice.partition("+")
    if (voices := installed_voices()) and language not in voices:
        raise TextRefused(f"no espeak-ng voice {language!r} here; some that are: {', '.join(sorted(voices)[:12])}, ...")
    if variant and (variants := installed_variants()) and variant not in variants:
        raise TextRefused(f"no espeak-ng voice variant {variant!r}; some that are: {', '.join(sorted(variants)[:12])}")
    return voice


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """espeak-ng's --stdout WAV as float32 samples and its rate.

    Written to a pipe, its RIFF and data sizes are placeholders (0x7ffff000): the samples are simply
    everything after the data chunk's header, which `wave` reads up to the end of the bytes."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
                raise SynthesisError(f"espeak-ng wrote {wav.getnchannels()} channels of {wav.getsampwidth()} bytes")
            rate = wav.getframerate()
            pcm = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise SynthesisError(f"espeak-ng wrote no readable WAV ({len(data)} bytes): {exc}") from exc
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, rate


async def synthesize(
    text: str, voice: str | None = None, rate_wpm: int | None = None, *, timeout_s: float = SYNTHESIS_TIMEOUT_S
) -> Speech:
    """Speak `text` with espeak-ng; TextRefused for bad input, SynthesisError when espeak-ng fails."""
    text, rate_wpm = check_text(text), check_rate(rate_wpm)
    voice = await asyncio.to_thread(check_voice, voice)  # the first call asks espeak-ng for its voices
    espeak = shutil.which(ESPEAK)
    if espeak is None:
        raise SynthesisError("espeak-ng is not installed on the gateway (apt-get install espeak-ng)")
    process = await asyncio.create_subprocess_exec(
        espeak, "--stdout", "--stdin", "-v", voice, "-s", str(rate_wpm),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate(text.encode())
    except TimeoutError as exc:
        raise SynthesisError(f"espeak-ng did not finish within {timeout_s:g} s") from exc
    finally:  # past the deadline, or the request cancelled: the child must not outlive it
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.returncode != 0:
        raise SynthesisError(
            f"espeak-ng exited with {process.returncode}: {err.decode(errors='replace').strip()[:200]}"
        )
    samples, rate = decode_wav(out)
    if not len(samples):
        raise SynthesisError(f"espeak-ng produced no speech for {text[:40]!r}")
    logger.debug("espeak-ng: %d chars -> %.2f s at %d Hz (voice %s)", len(text), len(samples) / rate, rate, voice)
    return Speech(samples, rate, voice, rate_wpm)
