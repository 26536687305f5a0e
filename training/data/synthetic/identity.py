"""Sampled identities: the face shape, colouring and accessories of one synthetic person.

`sample_identity(seed, index, style)` always gives the same person for the same arguments; all
geometry is in canonical canvas units (see renderer.CANVAS), colours are BGR 0..255. The "photo"
style colours lips and teeth as photographs show them (lips a few shades off the skin, teeth
ivory and shadowed); "cartoon" is the first corpus's look (saturated lips, white teeth).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Skin tones from very light to very dark (BGR), roughly spanning the Fitzpatrick scale.
SKIN_TONES = np.array(
    [
        (196, 214, 245), (176, 199, 238), (160, 187, 232), (140, 170, 222), (122, 160, 214),
        (110, 146, 198), (94, 128, 180), (78, 110, 160), (62, 88, 132), (50, 70, 108), (40, 54, 84),
    ],
    dtype=np.float32,
)  # fmt: skip
HAIR_COLOURS = np.array(
    [
        (20, 20, 22), (30, 34, 40), (25, 40, 60), (35, 60, 95), (50, 85, 130), (80, 130, 185),
        (120, 170, 215), (40, 55, 120), (150, 150, 155), (210, 210, 210), (70, 70, 75),
    ],
    dtype=np.float32,
)  # fmt: skip
IRIS_COLOURS = np.array(
    [(30, 50, 80), (20, 35, 60), (40, 70, 110), (120, 100, 60), (150, 120, 80), (70, 110, 80), (60, 90, 120)],
    dtype=np.float32,
)
HAIR_STYLES = ("bald", "buzz", "short", "side_part", "long", "bun", "curly", "bob")
FACIAL_HAIR = ("none", "stubble", "mustache", "goatee", "beard", "full_beard")
GLASSES = ("none", "round", "rect", "browline", "aviator")
STYLES = ("photo", "cartoon")


@dataclass(frozen=True)
class Identity:
    index: int
    # head shape (multipliers of the canonical head)
    head_width: float
    head_length: float
    jaw_width: float  # 0.6 (pointed) .. 1.0 (square)
    chin_length: float
    cheek_fullness: float
    # colouring
    skin: tuple[float, float, float]
    skin_blotch: float  # low-frequency colour variation amplitude
    blush: float
    lip_colour: tuple[float, float, float]
    iris: tuple[float, float, float]
    brow_colour: tuple[float, float, float]
    hair_colour: tuple[float, float, float]
    teeth_colour: tuple[float, float, float]
    # features
    eye_spacing: float
    eye_size: float
    eye_height: float  # vertical offset of the eye line
    eye_tilt: float
    brow_thickness: float
    brow_arch: float
    brow_height: float
    nose_length: float
    nose_width: float
    mouth_width: float
    upper_lip: float
    lower_lip: float
    mouth_height: float  # vertical offset of the mouth line
    ear_size: float
    # accessories
    hair_style: str
    hairline: float
    facial_hair: str
    glasses: str
    glasses_colour: tuple[float, float, float]
    texture_seed: int

    @property
    def key(self) -> str:
        return f"id{self.index:05d}"


def _pick(rng: np.random.Generator, table: np.ndarray, jitter: float) -> tuple[float, float, float]:
    i = rng.integers(len(table))
    j = rng.uniform(0, 1)
    base = table[i] * (1 - j) + table[min(i + 1, len(table) - 1)] * j
    return tuple(float(c) for c in np.clip(base * rng.uniform(1 - jitter, 1 + jitter, 3), 0, 255))


def sample_identity(seed: int, index: int, style: str = "photo") -> Identity:
    """The identity number `index` of the population drawn from `seed`, coloured in `style`."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1D, index]))
    skin = _pick(rng, SKIN_TONES, 0.04)
    lum = sum(skin) / 3
    # Lips: redder and darker than the skin, more so on light skin.
    lip = np.array(skin) * np.array([0.62, 0.58, 0.86]) * rng.uniform(0.85, 1.05)
    if lum < 110:
        lip = np.array(skin) * np.array([0.75, 0.72, 0.85]) * rng.uniform(0.8, 1.0)
    hair = _pick(rng, HAIR_COLOURS, 0.08)
    if lum < 120 and rng.random() < 0.8:  # darker skin: mostly dark hair
        hair = _pick(rng, HAIR_COLOURS[:3], 0.08)
    brow = tuple(float(c) for c in np.clip(np.array(hair) * rng.uniform(0.6, 0.9) + 5, 0, 255))
    masculine = rng.random() < 0.5
    facial_hair = "none"
    if masculine and rng.random() < 0.55:
        facial_hair = str(rng.choice(FACIAL_HAIR[1:]))
    style_p = (
        np.array([0.08, 0.12, 0.25, 0.2, 0.1, 0.05, 0.1, 0.1])
        if masculine
        else np.array([0.01, 0.02, 0.06, 0.1, 0.4, 0.15, 0.1, 0.16])
    )
    hair_style = str(rng.choice(HAIR_STYLES, p=style_p / style_p.sum()))
    glasses = str(rng.choice(GLASSES, p=[0.7, 0.08, 0.1, 0.06, 0.06]))
    tooth = rng.uniform(200, 245)
    person = Identity(
        index=index,
        head_width=float(rng.uniform(0.88, 1.1) * (1.03 if masculine else 0.97)),
        head_length=float(rng.uniform(0.92, 1.08)),
        jaw_width=float(rng.uniform(0.62, 0.95) + (0.05 if masculine else -0.03)),
        chin_length=float(rng.uniform(0.9, 1.1)),
        cheek_fullness=float(rng.uniform(0.0, 1.0)),
        skin=skin,
        skin_blotch=float(rng.uniform(0.01, 0.05)),
        blush=float(rng.uniform(0.0, 0.5 if masculine else 1.0)),
        lip_colour=tuple(float(c) for c in np.clip(lip, 0, 255)),
        iris=_pick(rng, IRIS_COLOURS, 0.15) if lum > 150 else _pick(rng, IRIS_COLOURS[:3], 0.1),
        brow_colour=brow,
        hair_colour=hair,
        teeth_colour=(tooth * rng.uniform(0.85, 0.95), tooth * rng.uniform(0.95, 1.0), tooth),
        eye_spacing=float(rng.uniform(0.92, 1.08)),
        eye_size=float(rng.uniform(0.85, 1.15)),
        eye_height=float(rng.uniform(-4, 4)),
        eye_tilt=float(rng.uniform(-0.08, 0.1)),
        brow_thickness=float(rng.uniform(0.7, 1.4) * (1.15 if masculine else 0.9)),
        brow_arch=float(rng.uniform(0.0, 1.0)),
        brow_height=float(rng.uniform(-3, 3)),
        nose_length=float(rng.uniform(0.88, 1.12)),
        nose_width=float(rng.uniform(0.85, 1.25)),
        mouth_width=float(rng.uniform(0.88, 1.12)),
        upper_lip=float(rng.uniform(0.7, 1.3)),
        lower_lip=float(rng.uniform(0.8, 1.35)),
        mouth_height=float(rng.uniform(-3, 3)),
        ear_size=float(rng.uniform(0.85, 1.15)),
        hair_style=hair_style,
        hairline=float(rng.uniform(-6, 8)),
        facial_hair=facial_hair,
        glasses=glasses,
        glasses_colour=_pick(
            rng, np.array([(20, 20, 20), (40, 60, 90), (160, 160, 170), (30, 30, 120), (80, 50, 30)], np.float32), 0.1
        ),
        texture_seed=int(rng.integers(2**31)),
    )
    if style == "cartoon":
        return person
    # Drawn after everything else, so a photo person is the cartoon person recoloured. Real lips are
    # the skin with more red and a little less light; on dark skin they barely differ from it.
    redden = np.array([0.78, 0.70, 0.93]) if lum >= 110 else np.array([0.82, 0.79, 0.88])
    lip = np.clip(np.array(skin) * redden * rng.uniform(0.88, 1.0, 3) ** 0.5, 0, 255)
    ivory = rng.uniform(150, 205)  # teeth inside a mouth are in shade: ivory-grey, never white
    teeth = (ivory * rng.uniform(0.72, 0.85), ivory * rng.uniform(0.88, 0.96), ivory)
    return replace(
        person,
        lip_colour=tuple(float(c) for c in lip),
        teeth_colour=tuple(float(c) for c in teeth),
        blush=person.blush * 0.5,
    )
