"""Phonemes -> visemes -> a smooth per-frame mouth-parameter track.

Each espeak phoneme maps to a viseme, a target vector of mouth parameters (`PARAMS`). Targets are
blended over time with Cohen-Massaro style dominance functions (flat-topped, Gaussian fall-off), so
neighbouring sounds shape each other (coarticulation) and motion is smooth, while bilabials
(p, b, m) dominate strongly enough that the lips really close on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .espeak import Phoneme

# The mouth parameters, in this order in every vector:
#   jaw       0..1  jaw opening (vertical separation of the lips)
#   spread   -1..1  lip corners pulled out (+) or drawn in
#   round     0..1  lip rounding / protrusion (narrow, rounder opening)
#   close     0..1  lips pressed together whatever the jaw does
#   teeth_lip 0..1  lower lip tucked under the upper teeth (f, v)
#   teeth     0..1  how much the lips retract to show the teeth
#   tongue    0..1  tongue tip raised and visible (th, l, t, d, n)
PARAMS = ("jaw", "spread", "round", "close", "teeth_lip", "teeth", "tongue")
P = {name: i for i, name in enumerate(PARAMS)}


@dataclass(frozen=True)
class Viseme:
    name: str
    target: tuple[float, ...]  # one value per PARAMS
    dominance: float  # strength against neighbours
    lip_dominance: float  # strength of its spread/round (low for consonants that borrow lip shape)
    tau: float  # seconds of Gaussian fall-off outside the segment


def _v(name, jaw, spread, rnd, close, tl, teeth, tongue, dom, lip_dom, tau) -> Viseme:
    return Viseme(name, (jaw, spread, rnd, close, tl, teeth, tongue), dom, lip_dom, tau)


VISEMES: dict[str, Viseme] = {
    v.name: v
    for v in (
        #   name      jaw  sprd  rnd  close t_lip teeth tongue dom  lipdom tau
        _v("rest", 0.02, 0.0, 0.0, 0.85, 0.0, 0.0, 0.0, 0.8, 0.8, 0.06),
        _v("PBM", 0.04, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 8.0, 2.0, 0.016),
        _v("B_fric", 0.08, 0.0, 0.1, 0.7, 0.0, 0.0, 0.0, 4.0, 1.0, 0.03),
        _v("FV", 0.12, 0.1, 0.0, 0.0, 1.0, 0.8, 0.0, 5.0, 1.5, 0.02),
        _v("TH", 0.22, 0.1, 0.0, 0.0, 0.0, 0.9, 1.0, 3.0, 0.4, 0.03),
        _v("TDNL", 0.20, 0.15, 0.0, 0.0, 0.0, 0.7, 0.5, 1.5, 0.3, 0.03),
        _v("S", 0.10, 0.35, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.5, 0.03),
        _v("SH", 0.18, -0.2, 0.65, 0.0, 0.0, 0.8, 0.0, 2.5, 2.0, 0.035),
        _v("KG", 0.30, 0.0, 0.0, 0.0, 0.0, 0.5, 0.15, 1.0, 0.2, 0.03),
        _v("H", 0.35, 0.0, 0.0, 0.0, 0.0, 0.4, 0.0, 0.4, 0.1, 0.03),
        _v("R", 0.22, -0.1, 0.5, 0.0, 0.0, 0.4, 0.1, 1.2, 1.2, 0.035),
        _v("W", 0.10, -0.4, 1.0, 0.0, 0.0, 0.1, 0.0, 3.0, 3.0, 0.035),
        _v("J", 0.15, 0.5, 0.0, 0.0, 0.0, 0.6, 0.1, 1.2, 0.8, 0.03),
        _v("AA", 0.95, 0.2, 0.0, 0.0, 0.0, 0.6, 0.1, 1.0, 1.0, 0.05),
        _v("AE", 0.65, 0.5, 0.0, 0.0, 0.0, 0.7, 0.1, 1.0, 1.0, 0.05),
        _v("EH", 0.50, 0.45, 0.0, 0.0, 0.0, 0.7, 0.05, 1.0, 1.0, 0.05),
        _v("EE", 0.22, 0.9, 0.0, 0.0, 0.0, 0.9, 0.0, 1.0, 1.0, 0.05),
        _v("IH", 0.32, 0.6, 0.0, 0.0, 0.0, 0.7, 0.0, 1.0, 1.0, 0.05),
        _v("UE", 0.22, -0.3, 0.85, 0.0, 0.0, 0.3, 0.0, 1.0, 1.2, 0.05),  # front rounded y, 2
        _v("OE", 0.45, -0.2, 0.7, 0.0, 0.0, 0.4, 0.0, 1.0, 1.2, 0.05),  # open rounded 9, W
        _v("OH", 0.62, -0.25, 0.75, 0.0, 0.0, 0.3, 0.05, 1.0, 1.2, 0.05),
        _v("OO", 0.20, -0.45, 1.0, 0.0, 0.0, 0.1, 0.0, 1.0, 1.4, 0.05),
        _v("ER", 0.40, 0.1, 0.15, 0.0, 0.0, 0.5, 0.1, 0.8, 0.6, 0.05),
        _v("UH", 0.60, 0.15, 0.0, 0.0, 0.0, 0.5, 0.1, 0.9, 0.8, 0.05),
    )
}

_DIACRITICS = ":;#-~^!'\",.2/|"
_VOWEL_VISEME = {
    "a": "AA", "A": "AA", "&": "AE", "E": "EH", "e": "EH", "i": "EE", "I": "IH", "y": "UE", "Y": "UE",
    "2": "UE", "9": "OE", "W": "OE", "o": "OH", "O": "OH", "0": "OH", "u": "OO", "U": "OO",
    "@": "ER", "3": "ER", "V": "UH",
}  # fmt: skip
_CONSONANT_VISEME = {
    "p": "PBM", "b": "PBM", "m": "PBM", "B": "B_fric", "f": "FV", "v": "FV", "T": "TH", "D": "TH",
    "s": "S", "z": "S", "S": "SH", "Z": "SH", "C": "J", "t": "TDNL", "d": "TDNL", "n": "TDNL",
    "l": "TDNL", "L": "TDNL", "J": "TDNL", "c": "KG", "k": "KG", "g": "KG", "N": "KG", "x": "KG",
    "Q": "KG", "q": "KG", "G": "KG", "h": "H", "!": "H", "?": "H", "r": "R", "R": "R", "*": "TDNL",
    "w": "W", "j": "J",
}  # fmt: skip
_AFFRICATES = {"tS": "SH", "dZ": "SH", "ts": "S", "dz": "S"}
_VOICELESS_STOPS = set("ptkc")
_VOICED_STOPS = set("bdgJ")


def visemes_for(phoneme: str) -> list[str]:
    """Viseme names for one espeak phoneme mnemonic: [] for a language switch, two for a diphthong."""
    if not phoneme or phoneme.startswith("("):
        return []
    if phoneme.startswith("_"):
        return ["rest"]
    if phoneme[:2] in _AFFRICATES:
        return [_AFFRICATES[phoneme[:2]]]
    core = phoneme[0] + "".join(ch for ch in phoneme[1:] if ch not in _DIACRITICS)
    if len(core) >= 2 and core[0] in _VOWEL_VISEME and core[1] in _VOWEL_VISEME:
        return [_VOWEL_VISEME[core[0]], _VOWEL_VISEME[core[1]]]
    first = core[0]
    if first in _VOWEL_VISEME:
        return [_VOWEL_VISEME[first]]
    return [_CONSONANT_VISEME.get(first, "KG")]


@dataclass(frozen=True)
class Target:
    """One viseme placed in time: its flat top spans [start, end] seconds."""

    viseme: Viseme
    start: float
    end: float
    phoneme: str


def place_targets(
    phonemes: tuple[Phoneme, ...] | list[Phoneme], duration: float, sample_rate: int = 16_000
) -> list[Target]:
    """Turn phoneme events into timed viseme targets, with a rest at both ends.

    espeak reports a voiceless stop where its burst starts; its silent closure comes just before,
    so the closure of p/t/k is placed before the event. Voiced stops start with their closure.
    """
    events = [(p.name, p.start / sample_rate) for p in phonemes if visemes_for(p.name)]
    targets: list[Target] = []
    first = events[0][1] if events else duration
    targets.append(Target(VISEMES["rest"], -1.0, first, "_"))
    for i, (name, t0) in enumerate(events):
        t1 = events[i + 1][1] if i + 1 < len(events) else duration
        t1 = max(t1, t0 + 1e-3)
        names = visemes_for(name)
        if len(names) == 2:  # diphthong: glide from the first to the second vowel
            mid = t0 + 0.45 * (t1 - t0)
            targets.append(Target(VISEMES[names[0]], t0, t0 + 0.25 * (t1 - t0), name))
            targets.append(Target(VISEMES[names[1]], mid + 0.2 * (t1 - t0), t1, name))
            continue
        vis = VISEMES[names[0]]
        if name[0] in _VOICELESS_STOPS and not name.startswith("ts"):
            prev = events[i - 1][1] if i > 0 else t0 - 0.1
            lead = min(0.07, 0.5 * (t0 - prev))
            start, end = t0 - lead, t0 + min(0.012, 0.3 * (t1 - t0))
        elif name[0] in _VOICED_STOPS and names[0] in ("PBM", "TDNL", "KG"):
            start, end = t0, t0 + 0.6 * (t1 - t0)
        elif vis.name == "rest":
            start, end = t0 + 0.03, t1
        elif vis.name == "PBM":  # m: closed through the murmur, opening as the next sound starts
            start, end = t0 + 0.1 * (t1 - t0), t1 - 0.3 * (t1 - t0)
        else:
            start, end = t0 + 0.1 * (t1 - t0), t1 - 0.1 * (t1 - t0)
        targets.append(Target(vis, start, max(end, start), name))
    targets.append(Target(VISEMES["rest"], duration, duration + 1.0, "_"))
    return targets


def mouth_track(targets: list[Target], times: np.ndarray) -> np.ndarray:
    """Blend targets at `times` (seconds) into a (len(times), len(PARAMS)) float32 track."""
    times = np.asarray(times, dtype=np.float64)
    n = len(PARAMS)
    lip_params = np.zeros(n, dtype=bool)
    lip_params[[P["spread"], P["round"]]] = True
    num = np.zeros((len(times), n))
    den = np.zeros((len(times), n))
    for tg in targets:
        v = tg.viseme
        centre, half = 0.5 * (tg.start + tg.end), 0.5 * (tg.end - tg.start)
        d = np.maximum(np.abs(times - centre) - half, 0.0) / v.tau
        shape = np.exp(-(d**2))
        alpha = np.where(lip_params, v.lip_dominance, v.dominance)
        w = shape[:, None] * alpha[None, :]
        num += w * np.asarray(v.target)[None, :]
        den += w
    rest = np.asarray(VISEMES["rest"].target)
    eps = 1e-4
    return ((num + eps * rest) / (den + eps)).astype(np.float32)


def frame_track(phonemes, duration: float, n_frames: int, fps: float = 25.0, exposure: float = 0.02) -> np.ndarray:
    """Mouth parameters for video frames 0..n_frames-1 (frame k shows time k/fps).

    Each frame averages three instants across its exposure, a little motion blur of the parameters.
    """
    targets = place_targets(phonemes, duration)
    base = np.arange(n_frames) / fps
    offsets = np.array([-0.5, 0.0, 0.5]) * exposure
    track = mouth_track(targets, (base[:, None] + offsets[None, :]).ravel())
    return track.reshape(n_frames, len(offsets), len(PARAMS)).mean(axis=1)


# Blended tracks seldom reach the vowel targets (a typical syllable peaks at 0.3-0.5), and in a
# 96-pixel face crop a 0.3 opening was 2-4 px: too little for the expert to learn sync from (it sat
# at chance). Displaying openness**0.6 keeps closures closed and the order of shapes, and opens
# mid-speech mouths about as far as clearly articulating speakers do.
ARTICULATION_GAMMA = 0.6


def mouth_openness(track: np.ndarray) -> np.ndarray:
    """How far apart the lips are, 0..1, from a parameter track (what the renderer draws)."""
    jaw, close, tl = track[..., P["jaw"]], track[..., P["close"]], track[..., P["teeth_lip"]]
    return np.clip(jaw * (1.0 - close) * (1.0 - 0.8 * tl), 0.0, 1.0) ** ARTICULATION_GAMMA
