"""Draws a talking head with OpenCV and numpy: a shaded face whose mouth follows a viseme track.

A person is drawn once per clip, frontal, on a canonical RGBA canvas (`CANVAS_W` x `CANVAS_H`):
skin shaded from a height map (dome, nose, brow ridge, eye sockets, cheeks, chin) under the clip's
light, eyes, brows, nose, ears, hair, facial hair, glasses, neck and shoulders. Each frame then drops
the jaw, draws the mouth (lips, dark interior, teeth, tongue) from the mouth parameters, and maps the
canvas into the frame with the head pose (yaw and pitch on a cylinder with nose parallax, roll, scale,
translation) over the background, followed by the camera: light tint, blur, noise and JPEG.

Two looks (`Scene.style`): "photo", the default, aims at what a face tracker crops from real video
(skin with pores and mottling, lips close to the skin's colour with soft borders and fine lines, a
dark mouth in which teeth are partly hidden and shadowed, stubble over the lip line, muted
backgrounds, motion blur, luminance-dependent sensor noise and JPEG); "cartoon" is the first
corpus's flat look, kept to reproduce it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from .identity import Identity
from .visemes import P, mouth_openness

CANVAS_W, CANVAS_H = 320, 400
_SUB = 4  # fixed-point bits for sub-pixel drawing
_SUBF = float(1 << _SUB)


# --------------------------------------------------------------------------------------------
# Per-clip look: light, background, camera, head motion


@dataclass(frozen=True)
class Scene:
    """Everything about one clip's look that is not the person."""

    frame_w: int
    frame_h: int
    light: tuple[float, float, float]  # unit vector towards the light (x right, y down, z to camera)
    ambient: float
    diffuse: float
    specular: float
    tint: tuple[float, float, float]  # colour of the light (BGR multipliers)
    exposure: float
    frame_gradient: tuple[float, float]  # brightness ramp across the frame (x, y)
    background_seed: int
    background_kind: str
    shirt: tuple[float, float, float]
    head_width: float  # head width in frame pixels
    centre: tuple[float, float]  # where the head centre sits, in frame pixels
    yaw: float  # degrees, mean
    pitch: float
    roll: float
    motion: float  # 0 (still) .. 1 (lively) head motion
    motion_seed: int
    blink_rate: float  # blinks per second
    gaze: tuple[float, float]
    noise: float  # Gaussian sensor noise sigma (0..255 scale)
    blur: float  # Gaussian blur sigma in pixels (0 = none)
    jpeg_quality: int  # quality of the compressed frame (100 = no compression step)
    gamma: float
    style: str = "photo"  # renderer.STYLES
    motion_blur: float = 0.0  # length in pixels of a linear smear (a slow shutter on a moving head)
    motion_angle: float = 0.0  # its direction, radians


STYLES = ("photo", "cartoon")


def sample_scene(
    rng: np.random.Generator,
    frame_size: tuple[int, int] = (256, 256),
    *,
    still: bool = False,
    style: str = "photo",
) -> Scene:
    """A random scene for a frame of (width, height); `still` gives a fixed frontal pose without blinks."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    fw, fh = frame_size
    az = rng.uniform(-1.1, 1.1)
    el = rng.uniform(-0.15, 0.75)
    light = np.array([math.sin(az) * math.cos(el), -math.sin(el), math.cos(az) * math.cos(el)])
    light /= np.linalg.norm(light)
    warm = rng.uniform(-1, 1)
    tint = (1.0 - 0.08 * warm + rng.uniform(-0.03, 0.03), 1.0 + rng.uniform(-0.03, 0.03), 1.0 + 0.08 * warm)
    head_frac = rng.uniform(0.36, 0.55)
    hw = head_frac * min(fw, fh * 1.05)
    scene = Scene(
        frame_w=fw,
        frame_h=fh,
        light=tuple(float(v) for v in light),
        ambient=(ambient := float(rng.uniform(0.38, 0.6))),
        diffuse=min(float(rng.uniform(0.45, 0.7)), 1.12 - ambient),  # fully lit skin stays under clipping
        specular=float(rng.uniform(0.0, 0.25)),
        tint=tuple(float(t) for t in tint),
        exposure=float(rng.uniform(0.8, 1.1)),
        frame_gradient=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.12, 0.12))),
        background_seed=int(rng.integers(2**31)),
        background_kind=str(rng.choice(["room", "blobs", "gradient", "texture"], p=[0.4, 0.3, 0.15, 0.15])),
        shirt=tuple(float(c) for c in rng.uniform(20, 230, 3)),
        head_width=float(hw),
        centre=(float(fw * 0.5 + rng.uniform(-0.08, 0.08) * fw), float(fh * 0.47 + rng.uniform(-0.06, 0.06) * fh)),
        yaw=0.0 if still else float(rng.uniform(-22, 22)),
        pitch=0.0 if still else float(rng.uniform(-10, 10)),
        roll=0.0 if still else float(rng.uniform(-10, 10)),
        motion=0.0 if still else float(rng.uniform(0.2, 1.0)),
        motion_seed=int(rng.integers(2**31)),
        blink_rate=0.0 if still else float(rng.uniform(0.15, 0.45)),
        gaze=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.15, 0.15))),
        noise=float(rng.choice([0.0, rng.uniform(0.5, 5.0)], p=[0.2, 0.8])),
        blur=float(rng.choice([0.0, rng.uniform(0.3, 1.1)], p=[0.5, 0.5])),
        jpeg_quality=int(rng.choice([100, int(rng.integers(35, 92))], p=[0.2, 0.8])),
        gamma=float(rng.uniform(0.85, 1.15)),
        style=style,
    )
    if style == "cartoon":
        return scene
    # Drawn after the rest, so a photo scene is the cartoon scene shot by a real camera: webcams and
    # phones always add noise and compression, often a little softness, and a moving head smears.
    return replace(
        scene,
        noise=float(rng.uniform(1.5, 6.0)),
        blur=float(rng.choice([0.0, rng.uniform(0.3, 0.9)], p=[0.4, 0.6])),
        jpeg_quality=int(rng.integers(30, 88)),
        specular=float(rng.uniform(0.05, 0.3)),
        motion_blur=0.0 if still else float(rng.choice([0.0, rng.uniform(1.0, 3.5)], p=[0.6, 0.4])),
        motion_angle=float(rng.uniform(0, math.pi)),
    )


@dataclass(frozen=True)
class Pose:
    yaw: float  # radians, + turns the face towards the frame's right
    pitch: float  # radians, + tilts the face down
    roll: float  # radians, + rotates clockwise in the image
    scale: float  # frame pixels per canvas unit
    x: float  # head centre in the frame
    y: float


def pose_track(
    scene: Scene, n_frames: int, fps: float, canvas_head_width: float, speech_energy: np.ndarray | None = None
) -> list[Pose]:
    """Smooth head motion: sums of slow sinusoids around the scene's mean pose, plus nods with speech."""
    rng = np.random.default_rng(scene.motion_seed)
    t = np.arange(n_frames) / fps

    def wander(amp: float) -> np.ndarray:
        out = np.zeros(n_frames)
        for _ in range(3):
            f = rng.uniform(0.08, 0.7)
            out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        return amp * scene.motion * out / 2.0

    yaw = scene.yaw + wander(7.0)
    pitch = scene.pitch + wander(4.0)
    roll = scene.roll + wander(3.0)
    if speech_energy is not None and len(speech_energy) == n_frames and scene.motion > 0:
        e = np.convolve(speech_energy, np.ones(5) / 5, mode="same")
        pitch = pitch + 4.0 * scene.motion * (e - e.mean())
    base_scale = scene.head_width / canvas_head_width
    scale = base_scale * (1.0 + wander(0.04))
    x = scene.centre[0] + wander(0.03 * scene.frame_w)
    y = scene.centre[1] + wander(0.025 * scene.frame_h)
    d = math.pi / 180
    return [
        Pose(yaw[i] * d, pitch[i] * d, roll[i] * d, float(scale[i]), float(x[i]), float(y[i])) for i in range(n_frames)
    ]


def blink_track(scene: Scene, n_frames: int, fps: float) -> np.ndarray:
    """Eyelid state per frame: 0 open, 1 half closed, 2 closed."""
    state = np.zeros(n_frames, dtype=np.int8)
    if scene.blink_rate <= 0:
        return state
    rng = np.random.default_rng(scene.motion_seed + 1)
    t = rng.uniform(0.2, 1.5 / scene.blink_rate)
    while t * fps < n_frames:
        k = int(t * fps)
        for j, s in enumerate((1, 2, 2, 1)):
            if k + j < n_frames:
                state[k + j] = s
        t += rng.exponential(1.0 / scene.blink_rate) + 0.4
    return state


# --------------------------------------------------------------------------------------------
# Small drawing helpers


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of the given (h, w) shape."""
    h, w = shape
    grid = rng.uniform(-1, 1, (max(2, h * cells // max(h, w)), max(2, w * cells // max(h, w)))).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _poly_mask(shape: tuple[int, int], pts: np.ndarray, blur: float = 0.0) -> np.ndarray:
    """A float mask in [0, 1] of a filled polygon, anti-aliased, optionally softened by a Gaussian."""
    return _shape_mask(shape, pts, blur, lambda m, p: cv2.fillPoly(m, [p], 255, cv2.LINE_AA, _SUB))


def _stroke_mask(
    shape: tuple[int, int], pts: np.ndarray, thickness: int, blur: float, closed: bool = False
) -> np.ndarray:
    """A float mask of a polyline of the given thickness."""
    return _shape_mask(
        shape, pts, blur, lambda m, p: cv2.polylines(m, [p], closed, 255, thickness, cv2.LINE_AA, _SUB), pad=thickness
    )


def _shape_mask(shape: tuple[int, int], pts: np.ndarray, blur: float, draw, pad: int = 0) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    pts = np.asarray(pts, np.float64)
    margin = int(3 * blur + pad + 3)
    x0, y0 = max(int(pts[:, 0].min()) - margin, 0), max(int(pts[:, 1].min()) - margin, 0)
    x1, y1 = min(int(pts[:, 0].max()) + margin + 1, shape[1]), min(int(pts[:, 1].max()) + margin + 1, shape[0])
    if x1 <= x0 or y1 <= y0:
        return out
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    draw(m, np.round((pts - (x0, y0)) * _SUBF).astype(np.int32))
    sub = m.astype(np.float32) * (1.0 / 255.0)
    if blur > 0:
        sub = cv2.GaussianBlur(sub, (0, 0), blur)
    out[y0:y1, x0:x1] = sub
    return out


def _ellipse_pts(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, n: int = 48) -> np.ndarray:
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = ax * np.cos(th), ay * np.sin(th)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _blend(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """img = img * (1 - alpha) + colour * alpha, in place, only where alpha > 0.

    colour is a BGR triple or an image of img's size.
    """
    x, y, w, h = cv2.boundingRect((alpha > 1e-3).astype(np.uint8))
    if w == 0 or h == 0:
        return
    a = alpha[y : y + h, x : x + w, None]
    region = img[y : y + h, x : x + w]
    if isinstance(colour, np.ndarray) and colour.ndim == 3:
        colour = colour[y : y + h, x : x + w]
    else:
        colour = np.asarray(colour, np.float32)
    region += a * (colour - region)


def _gauss2(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2) * 0.5)


def _curve(x0: float, x1: float, y_of, n: int = 24) -> np.ndarray:
    xs = np.linspace(x0, x1, n)
    return np.stack([xs, y_of(xs)], axis=1)


# --------------------------------------------------------------------------------------------
# The face


@dataclass
class Layout:
    """Where the features of one identity sit on the canvas."""

    cx: float
    cy: float
    a: float  # head half width
    b_top: float
    b_bot: float
    n_top: float  # superellipse exponents
    n_bot: float
    eye_y: float
    eye_dx: float
    eye_w: float  # half width of an eye
    eye_h: float  # half height of the opening
    brow_y: float
    nose_tip_y: float
    nose_base_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float  # half width at rest
    upper_lip: float  # thickness
    lower_lip: float
    chin_y: float
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)


def make_layout(idt: Identity) -> Layout:
    cx, cy = CANVAS_W / 2, 168.0
    a = 70.0 * idt.head_width
    b_top = 96.0 * idt.head_length
    b_bot = 98.0 * idt.head_length * idt.chin_length
    eye_y = cy + idt.eye_height
    chin_y = cy + b_bot
    nose_base_y = eye_y + 0.5 * (chin_y - eye_y) * idt.nose_length
    mouth_y = nose_base_y + 0.34 * (chin_y - nose_base_y) + idt.mouth_height * 0.5
    eye_dx = 0.43 * a * idt.eye_spacing
    lay = Layout(
        cx=cx,
        cy=cy,
        a=a,
        b_top=b_top,
        b_bot=b_bot,
        n_top=2.15,
        n_bot=1.9 + 1.1 * (idt.jaw_width - 0.6),
        eye_y=eye_y,
        eye_dx=eye_dx,
        eye_w=0.205 * a * idt.eye_size,
        eye_h=0.072 * a * idt.eye_size,
        brow_y=eye_y - 0.25 * a + idt.brow_height,
        nose_tip_y=nose_base_y - 6.0,
        nose_base_y=nose_base_y,
        nose_w=0.135 * a * idt.nose_width,
        mouth_y=mouth_y,
        mouth_w=0.36 * a * idt.mouth_width,
        upper_lip=5.0 * idt.upper_lip,
        lower_lip=7.0 * idt.lower_lip,
        chin_y=chin_y,
    )
    lay.landmarks = {
        "right_eye": (cx - eye_dx, eye_y),  # the person's right eye is on the image's left
        "left_eye": (cx + eye_dx, eye_y),
        "nose": (cx, lay.nose_tip_y),
        "mouth": (cx, mouth_y),
        "chin": (cx, chin_y),
        "right_cheek": (cx - a, eye_y + 20),
        "left_cheek": (cx + a, eye_y + 20),
        "brow": (cx, lay.brow_y),
    }
    return lay


def head_contour(lay: Layout, grow: float = 0.0, n: int = 120) -> np.ndarray:
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(th), np.sin(th)
    nexp = np.where(s < 0, lay.n_top, lay.n_bot)
    b = np.where(s < 0, lay.b_top, lay.b_bot)
    r = 1.0 / (np.abs(c) ** nexp + np.abs(s) ** nexp) ** (1.0 / nexp)
    x = lay.cx + (lay.a + grow) * r * c
    y = lay.cy + (b + grow) * r * s
    return np.stack([x, y], axis=1)


class Face:
    """The static drawing of one identity under one scene, ready to animate."""

    def __init__(self, idt: Identity, scene: Scene) -> None:
        self.idt = idt
        self.scene = scene
        self.photo = scene.style == "photo"
        self.lay = make_layout(idt)
        self.rng = np.random.default_rng(idt.texture_seed)
        yy, xx = np.mgrid[0:CANVAS_H, 0:CANVAS_W].astype(np.float32)
        self._yy, self._xx = yy, xx
        self.height = self._height_map()
        self.shade = self._shading(self.height)
        self._build()

    # ---- geometry and light

    def _rho(self, grow: float = 0.0) -> np.ndarray:
        if grow == 0.0 and getattr(self, "_rho0", None) is not None:
            return self._rho0
        lay = self.lay
        dx = np.abs(self._xx - lay.cx) / (lay.a + grow)
        up = self._yy < lay.cy
        dy = np.abs(self._yy - lay.cy) / np.where(up, lay.b_top + grow, lay.b_bot + grow)
        n = np.where(up, lay.n_top, lay.n_bot)
        rho = (dx**n + dy**n) ** (2.0 / n)
        if grow == 0.0:
            self._rho0 = rho
        return rho

    def _height_map(self) -> np.ndarray:
        lay, x, y = self.lay, self._xx, self._yy
        rho = self._rho()
        dome = 0.85 * lay.a * np.sqrt(np.clip(1.0 - rho, 0.0, 1.0))
        h = dome.copy()
        feat = np.zeros_like(h)
        cx = lay.cx
        # nose: ridge from between the brows to the tip, the tip, the wings
        t = np.clip((y - lay.brow_y) / max(lay.nose_tip_y - lay.brow_y, 1.0), 0.0, 1.0)
        inside = (y > lay.brow_y - 6) & (y < lay.nose_base_y + 2)
        ridge = (2 + 6 * t**1.5) * np.exp(-0.5 * ((x - cx) / (0.5 * lay.nose_w + 2.5 * t)) ** 2) * inside
        feat += ridge
        feat += 8.0 * _gauss2(x, y, cx, lay.nose_tip_y, 0.6 * lay.nose_w, 6.0)
        for sgn in (-1, 1):
            feat += 5.0 * _gauss2(x, y, cx + sgn * 0.75 * lay.nose_w, lay.nose_base_y - 4, 4.5, 4.0)
            feat -= 7.5 * _gauss2(x, y, cx + sgn * lay.eye_dx, lay.eye_y - 1, 1.15 * lay.eye_w, 0.9 * lay.eye_w)
            feat += 5.0 * _gauss2(x, y, cx + sgn * 0.58 * lay.a, lay.eye_y + 0.33 * lay.a, 0.22 * lay.a, 0.16 * lay.a)
            feat += (
                2.5
                * self.idt.cheek_fullness
                * _gauss2(x, y, cx + sgn * 0.5 * lay.a, lay.mouth_y - 4, 0.2 * lay.a, 0.2 * lay.a)
            )
            # nasolabial groove: from the nose wing down to outside the mouth corner
            p0 = np.array([cx + sgn * 1.1 * lay.nose_w, lay.nose_base_y - 3])
            p1 = np.array([cx + sgn * (lay.mouth_w + 6), lay.mouth_y + 6])
            feat -= 2.2 * self._segment_gauss(p0, p1, 3.0)
        feat += 3.5 * np.exp(-0.5 * ((y - lay.brow_y - 2) / 5.0) ** 2) * np.exp(-0.5 * ((x - cx) / (0.6 * lay.a)) ** 4)
        feat += 4.0 * _gauss2(x, y, cx, lay.mouth_y, lay.mouth_w * 1.05, 11)
        feat += 5.0 * _gauss2(x, y, cx, lay.chin_y - 13, 0.22 * lay.a, 9)
        feat -= 2.0 * _gauss2(x, y, cx, lay.mouth_y + lay.lower_lip + 6, lay.mouth_w * 0.6, 3.0)
        feat -= 1.0 * _gauss2(x, y, cx, 0.5 * (lay.nose_base_y + lay.mouth_y) - 2, 2.5, 4.0)
        mask = np.clip((1.0 - rho) * 8, 0, 1)
        self.feature_height = (feat * mask).astype(np.float32)
        return (h + self.feature_height).astype(np.float32)

    def _segment_gauss(self, p0: np.ndarray, p1: np.ndarray, sigma: float) -> np.ndarray:
        d = p1 - p0
        L2 = float(d @ d)
        t = np.clip(((self._xx - p0[0]) * d[0] + (self._yy - p0[1]) * d[1]) / L2, 0, 1)
        px, py = p0[0] + t * d[0], p0[1] + t * d[1]
        dist2 = (self._xx - px) ** 2 + (self._yy - py) ** 2
        return np.exp(-0.5 * dist2 / sigma**2) * np.sqrt(np.clip(np.sin(np.pi * t), 0, 1))

    def _shading(self, h: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(cv2.GaussianBlur(h, (0, 0), 0.8))
        gx, gy = np.clip(gx, -6, 6), np.clip(gy, -6, 6)
        n = np.stack([-gx, -gy, np.ones_like(h)], axis=-1)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        self.normals = n
        L = np.asarray(self.scene.light, np.float32)
        lam = np.clip(n @ L, 0.0, 1.0)
        half = L + np.array([0, 0, 1], np.float32)
        half /= np.linalg.norm(half)
        spec = np.clip(n @ half, 0.0, 1.0) ** 24
        self.spec = (self.scene.specular * spec).astype(np.float32)
        return (self.scene.ambient + self.scene.diffuse * lam).astype(np.float32)

    # ---- the static drawing

    def _build(self) -> None:
        idt, lay, rng = self.idt, self.lay, self.rng
        H, W = CANVAS_H, CANVAS_W
        img = np.zeros((H, W, 3), np.float32)
        alpha = np.zeros((H, W), np.float32)
        skin = np.asarray(idt.skin, np.float32)
        hair = np.asarray(idt.hair_colour, np.float32)
        hair_tex = self._hair_texture()

        # back hair (behind everything)
        back = self._back_hair_mask()
        if back is not None:
            _blend(img, back, hair[None, None, :] * (0.45 + 0.45 * hair_tex)[..., None] * self.scene.ambient * 1.3)
            alpha = np.maximum(alpha, back)

        # shoulders and neck
        neck_top = lay.cy + 0.35 * lay.b_bot
        shoulder_y = lay.chin_y + 30
        shirt = np.asarray(self.scene.shirt, np.float32)
        body = np.array([
            [lay.cx - 0.55 * lay.a, shoulder_y - 6], [lay.cx - 1.55 * lay.a, shoulder_y + 22], [lay.cx - 2.3 * lay.a, H + 5],
            [lay.cx + 2.3 * lay.a, H + 5], [lay.cx + 1.55 * lay.a, shoulder_y + 22], [lay.cx + 0.55 * lay.a, shoulder_y - 6],
        ])  # fmt: skip
        body_m = _poly_mask((H, W), body, 1.0)
        body_shade = 0.75 + 0.25 * np.clip(1 - np.abs(self._xx - lay.cx) / (2.3 * lay.a), 0, 1)
        _blend(img, body_m, shirt[None, None, :] * body_shade[..., None] * self.scene.ambient * 1.6)
        alpha = np.maximum(alpha, body_m)
        neck_w = 0.5 * lay.a
        neck = np.array(
            [
                [lay.cx - neck_w, neck_top],
                [lay.cx + neck_w, neck_top],
                [lay.cx + neck_w * 1.1, shoulder_y + 8],
                [lay.cx - neck_w * 1.1, shoulder_y + 8],
            ]
        )
        neck_m = _poly_mask((H, W), neck, 1.2)
        nx = np.clip((self._xx - lay.cx) / (neck_w * 1.1), -1, 1)
        neck_n = np.stack([nx, np.zeros_like(nx), np.sqrt(1 - nx**2)], -1)
        neck_shade = self.scene.ambient + self.scene.diffuse * np.clip(
            neck_n @ np.asarray(self.scene.light, np.float32), 0, 1
        )
        under_chin = np.clip((self._yy - lay.chin_y) / 28.0, 0, 1)
        neck_shade = neck_shade * (0.55 + 0.4 * under_chin)
        _blend(img, neck_m, skin[None, None, :] * neck_shade[..., None] * 0.92)
        alpha = np.maximum(alpha, neck_m)
        # collar
        collar = np.array(
            [
                [lay.cx - neck_w * 1.15, shoulder_y + 2],
                [lay.cx, shoulder_y + 22],
                [lay.cx + neck_w * 1.15, shoulder_y + 2],
                [lay.cx + neck_w * 1.3, shoulder_y + 10],
                [lay.cx, shoulder_y + 30],
                [lay.cx - neck_w * 1.3, shoulder_y + 10],
            ]
        )
        _blend(img, _poly_mask((H, W), collar, 0.8) * 0.6, shirt * 0.5)

        # ears
        for sgn in (-1, 1):
            ex = lay.cx + sgn * (lay.a * 0.96)
            ey = 0.5 * (lay.eye_y + lay.nose_base_y) - 2
            ear = _ellipse_pts(ex + sgn * 4, ey, 9 * idt.ear_size, 20 * idt.ear_size, sgn * 0.12)
            m = _poly_mask((H, W), ear, 0.8)
            side_n = np.array([sgn * 0.6, 0.0, 0.8], np.float32)
            s = (
                skin
                * (
                    self.scene.ambient
                    + self.scene.diffuse * max(0.0, float(side_n @ np.asarray(self.scene.light, np.float32)))
                )
                * 0.9
            )
            _blend(img, m, s)
            inner = _ellipse_pts(ex + sgn * 5, ey + 1, 4.5 * idt.ear_size, 13 * idt.ear_size, sgn * 0.12)
            _blend(img, _poly_mask((H, W), inner, 1.5) * 0.5, s * 0.55)
            alpha = np.maximum(alpha, m)

        # head skin: albedo with colour variation, blush, darker around the eyes, shaded
        head_m = _poly_mask((H, W), head_contour(lay), 0.9)
        albedo = np.broadcast_to(skin, (H, W, 3)).copy()
        blotch = _smooth_noise(rng, (H, W), 9)
        albedo *= (1.0 + idt.skin_blotch * blotch)[..., None]
        for sgn in (-1, 1):
            g = _gauss2(
                self._xx, self._yy, lay.cx + sgn * 0.55 * lay.a, lay.eye_y + 0.38 * lay.a, 0.2 * lay.a, 0.15 * lay.a
            )
            albedo += (idt.blush * 18.0 * g)[..., None] * np.array([-0.6, -0.5, 0.5], np.float32)
            g = _gauss2(self._xx, self._yy, lay.cx + sgn * lay.eye_dx, lay.eye_y + 2, 1.3 * lay.eye_w, 0.8 * lay.eye_w)
            albedo *= (1.0 - 0.12 * g)[..., None]
        fine = rng.normal(0, 1, (H, W)).astype(np.float32)
        fine = cv2.GaussianBlur(fine, (0, 0), 0.7)
        albedo *= (1.0 + 0.018 * fine)[..., None]
        sheen = self.spec
        if self.photo:
            # Pores (a fine grain that also breaks up the highlights), mottling a few mm across, and
            # sparse small spots: what makes skin read as skin rather than plastic.
            pores = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 0.55)
            pores /= pores.std() + 1e-6
            mottle = _smooth_noise(rng, (H, W), 48)
            spots = cv2.GaussianBlur((rng.random((H, W)) < 0.0015).astype(np.float32), (0, 0), 0.9) * 6.0
            albedo *= (1.0 + 0.025 * pores + 0.03 * mottle - 0.12 * np.clip(spots, 0, 1))[..., None]
            sheen = self.spec * np.clip(1.0 + 0.6 * pores, 0.2, 2.0)
        shaded = albedo * self.shade[..., None] + (sheen * 120.0)[..., None]
        # soft darkening at the silhouette (skin curving away)
        rim = np.clip(1.0 - self._rho(), 0, 1) ** 0.12
        shaded *= (0.7 + 0.3 * rim)[..., None]
        _blend(img, head_m, shaded)
        alpha = np.maximum(alpha, head_m)
        self.skin_lit = shaded  # the lit skin, reused to re-cover the mouth area per frame

        self._draw_nose(img)
        self._draw_brows(img)
        self._facial_hair(img, hair, hair_tex)
        front = self._front_hair_mask()
        if front is not None:
            lit = self.scene.ambient + self.scene.diffuse * np.clip(
                self.normals @ np.asarray(self.scene.light, np.float32), 0, 1
            )
            lit = np.maximum(lit, self.scene.ambient + 0.3 * self.scene.diffuse)
            _blend(img, front, hair[None, None, :] * (0.6 + 0.5 * hair_tex)[..., None] * lit[..., None])
            alpha = np.maximum(alpha, front)

        # three eye states (open, half, closed), drawn on copies of the static face
        self.canvases: list[np.ndarray] = []
        glasses = self._glasses()
        for lid in (0.0, 0.55, 1.0):
            im = img.copy()
            self._draw_eyes(im, lid)
            self._draw_glasses(im, glasses)
            bgra = np.dstack([np.clip(im, 0, 255), np.clip(alpha, 0, 1) * 255.0]).astype(np.uint8)
            self.canvases.append(bgra)
        self.mustache = self._mustache_patch(hair, hair_tex)
        # fine vertical creases of the lips (photo style), one texture per person
        creases = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), sigmaX=0.45, sigmaY=2.2)
        self.lip_creases = creases / (creases.std() + 1e-6)

    def _hair_texture(self) -> np.ndarray:
        n = self.rng.normal(0, 1, (CANVAS_H, CANVAS_W)).astype(np.float32)
        streaks = cv2.GaussianBlur(n, (0, 0), sigmaX=0.8, sigmaY=5.0)
        streaks /= streaks.std() + 1e-6
        if self.idt.hair_style == "curly":
            streaks = cv2.GaussianBlur(n, (0, 0), 1.8)
            streaks /= streaks.std() + 1e-6
        return np.clip(0.5 + 0.18 * streaks, 0, 1)

    def _back_hair_mask(self) -> np.ndarray | None:
        lay, style = self.lay, self.idt.hair_style
        if style not in ("long", "bob", "curly"):
            return None
        top = head_contour(lay, grow=7)
        top = top[top[:, 1] < lay.eye_y]
        if style == "long":
            bottom_y = lay.chin_y + 75
            w = lay.a + 16
        elif style == "bob":
            bottom_y = lay.chin_y - 2
            w = lay.a + 12
        else:
            bottom_y = lay.nose_base_y + 20
            w = lay.a + 18
        pts = np.concatenate(
            [
                top,
                [
                    [lay.cx + w, lay.eye_y],
                    [lay.cx + w * 0.95, bottom_y],
                    [lay.cx - w * 0.95, bottom_y],
                    [lay.cx - w, lay.eye_y],
                ],
            ]
        )
        m = _poly_mask((CANVAS_H, CANVAS_W), pts, 1.5)
        if style == "curly":
            m = np.maximum(m, self._bumpy(lay.a + 18, lay.b_top + 14, 0.55))
        return m

    def _bumpy(self, ax: float, ay: float, ymax_frac: float) -> np.ndarray:
        lay = self.lay
        m = np.zeros((CANVAS_H, CANVAS_W), np.uint8)
        for th in np.linspace(np.pi * 0.95, np.pi * 2.05, 30):
            x = lay.cx + ax * math.cos(th)
            y = lay.cy + ay * math.sin(th)
            if y < lay.cy + ymax_frac * lay.b_top * 0.4:
                cv2.circle(m, (int(x * _SUBF), int(y * _SUBF)), int(14 * _SUBF), 255, -1, cv2.LINE_AA, _SUB)
        return cv2.GaussianBlur(m.astype(np.float32) / 255.0, (0, 0), 1.2)

    def _front_hair_mask(self) -> np.ndarray | None:
        lay, idt, style = self.lay, self.idt, self.idt.hair_style
        if style == "bald":
            band = head_contour(lay, grow=1)
            band_m = _poly_mask((CANVAS_H, CANVAS_W), band, 1.0)
            # a fringe of hair above the ears, thinning towards the crown and the face
            rel = np.abs(self._xx - lay.cx) / lay.a
            sides = np.clip((rel - 0.8) / 0.12, 0, 1) * np.clip(1 - np.abs(self._yy - (lay.eye_y - 14)) / 22.0, 0, 1)
            return band_m * sides * 0.6
        volume = {"buzz": 1.5, "short": 5.0, "side_part": 6.0, "long": 6.0, "bun": 4.0, "curly": 10.0, "bob": 7.0}[
            style
        ]
        cap_m = _poly_mask((CANVAS_H, CANVAS_W), head_contour(lay, grow=volume), 1.2)
        rel = (self._xx - lay.cx) / lay.a
        if style == "bob":  # straight bangs
            hl = lay.brow_y - 0.2 * lay.a + idt.hairline * 0.5
            line = hl + 4 * rel**2
        elif style == "side_part":  # a fringe sweeping down to one side
            hl = lay.brow_y - 0.5 * lay.a + idt.hairline
            line = hl + 22 * np.clip(0.5 + 0.6 * rel, 0, 1) ** 1.5 + 6 * rel**2
        else:  # a rounded forehead hairline, receding at the temples
            hl = lay.brow_y - 0.58 * lay.a + idt.hairline
            line = hl - 4 * rel**2 + 8 * np.exp(-(((np.abs(rel) - 0.55) / 0.15) ** 2)) * (idt.hairline > 3)
        # temples and sideburns: hair reaches down to the ears at the sides
        side = np.clip((np.abs(rel) - 0.74) / 0.14, 0, 1) ** 1.5
        line = line * (1 - side) + (lay.eye_y + 4) * side
        ragged = 2.0 * _smooth_noise(self.rng, (CANVAS_H, CANVAS_W), 60)
        m = cap_m * np.clip((line + ragged - self._yy) / 3.0 + 0.5, 0, 1)
        if style == "curly":
            m = np.maximum(m, self._bumpy(lay.a + 8, lay.b_top + 8, 0.1) * (self._yy < line + 4))
        if style == "bun":
            bun = _ellipse_pts(lay.cx, lay.cy - lay.b_top - 10, 24, 20)
            m = np.maximum(m, _poly_mask((CANVAS_H, CANVAS_W), bun, 1.0))
        if style == "buzz":
            m = m * 0.7
        return m.astype(np.float32)

    def _draw_nose(self, img: np.ndarray) -> None:
        lay, skin = self.lay, np.asarray(self.idt.skin, np.float32)
        for sgn in (-1, 1):
            c = (lay.cx + sgn * 0.5 * lay.nose_w, lay.nose_base_y - 1.5)
            nostril = _ellipse_pts(c[0], c[1], 0.32 * lay.nose_w + 1.0, 2.0, sgn * 0.35)
            _blend(img, _poly_mask(img.shape[:2], nostril, 0.9) * 0.85, skin * 0.28 * self.shade[int(c[1]), int(c[0])])
            # the crease around the nose wing
            th = np.linspace(-0.3, 2.0, 12)
            wing = np.stack(
                [lay.cx + sgn * (0.72 * lay.nose_w + 4.5 * np.cos(th)), lay.nose_base_y - 5 + 5.5 * np.sin(th)], 1
            )
            _blend(
                img,
                _stroke_mask(img.shape[:2], wing, 1, 0.8) * 0.45,
                skin * 0.45 * self.shade[int(lay.nose_base_y), int(lay.cx)],
            )

    def _draw_brows(self, img: np.ndarray) -> None:
        lay, idt = self.lay, self.idt
        col = np.asarray(idt.brow_colour, np.float32)
        for sgn in (-1, 1):
            x_in = lay.cx + sgn * (lay.eye_dx - 1.05 * lay.eye_w)
            x_out = lay.cx + sgn * (lay.eye_dx + 1.35 * lay.eye_w)
            t = np.linspace(0, 1, 20)
            xs = x_in + (x_out - x_in) * t
            arch = (3.5 + 4.5 * idt.brow_arch) * np.sin(np.pi * np.clip(t * 1.1, 0, 1)) - 2.0 * t
            yc = lay.brow_y - arch
            th = idt.brow_thickness * (4.2 - 2.6 * t**1.5)
            top = np.stack([xs, yc - th * 0.55], 1)
            bot = np.stack([xs, yc + th * 0.45], 1)[::-1]
            m = _poly_mask(img.shape[:2], np.concatenate([top, bot]), 0.9)
            hairs = np.clip(
                0.75
                + 0.5
                * cv2.GaussianBlur(
                    self.rng.normal(0, 1, img.shape[:2]).astype(np.float32), (0, 0), sigmaX=1.5, sigmaY=0.5
                ),
                0.3,
                1,
            )
            _blend(img, m * 0.88 * hairs, col * self.shade[int(lay.brow_y), int(x_in)] * 1.1)

    def _eye_outline(self, sgn: int, lid: float) -> tuple[np.ndarray, np.ndarray]:
        """Upper and lower lid curves (inner corner -> outer corner) with the upper lid closed by `lid`."""
        lay, idt = self.lay, self.idt
        ex = lay.cx + sgn * lay.eye_dx
        x_in, x_out = ex - sgn * lay.eye_w, ex + sgn * lay.eye_w
        t = np.linspace(0, 1, 24)
        xs = x_in + (x_out - x_in) * t
        tilt = -idt.eye_tilt * lay.eye_w * (t - 0.5) * 2
        base = lay.eye_y + tilt + 1.0
        up = base - lay.eye_h * 1.25 * np.sin(np.pi * t) ** 0.9 * (1 - 0.25 * (t - 0.4)) * (1 - lid)
        low = base + lay.eye_h * 0.8 * np.sin(np.pi * t) ** 1.1 * (1 + 0.15 * (t - 0.5))
        if lid >= 0.99:
            up = base + 0.5 * (low - base) * 0.3
        return np.stack([xs, up], 1), np.stack([xs, low], 1)

    def _draw_eyes(self, img: np.ndarray, lid: float) -> None:
        lay, idt = self.lay, self.idt
        skin = np.asarray(idt.skin, np.float32)
        for sgn in (-1, 1):
            ex = lay.cx + sgn * lay.eye_dx
            # work in a window around the eye, in local coordinates
            x0, x1 = int(ex - 1.6 * lay.eye_w), int(ex + 1.6 * lay.eye_w) + 1
            y0, y1 = int(lay.eye_y - 3.2 * lay.eye_h - 6), int(lay.eye_y + 2.5 * lay.eye_h + 6)
            sub = img[y0:y1, x0:x1]
            shape = sub.shape[:2]
            xx, yy = self._xx[y0:y1, x0:x1] - x0, self._yy[y0:y1, x0:x1] - y0
            off = np.array([x0, y0], np.float64)
            up, low = (c - off for c in self._eye_outline(sgn, lid))
            lex, ley = ex - x0, lay.eye_y - y0
            s_eye = float(self.shade[int(lay.eye_y), int(ex)])
            crease = self._eye_outline(sgn, 0.0)[0] - off
            crease[:, 1] -= 0.9 * lay.eye_h + 1.5
            _blend(sub, _stroke_mask(shape, crease[3:-2], 1, 0.9) * 0.35, skin * 0.45 * s_eye)
            if lid >= 0.99:  # closed: just the lash line
                _blend(sub, _stroke_mask(shape, low, 2, 0.6) * 0.8, np.array([30, 28, 32], np.float32))
                continue
            eye_m = _poly_mask(shape, np.concatenate([up, low[::-1]]), 0.5)
            sclera = np.array([205, 212, 220], np.float32) * min(1.0, 0.55 + 0.5 * s_eye)
            # the white is darker towards the corners and under the upper lid
            corner = np.clip(np.abs(xx - lex) / lay.eye_w, 0, 1) ** 2
            top_shadow = np.clip(1 - (yy - (ley - lay.eye_h)) / (1.6 * lay.eye_h), 0, 1)
            _blend(sub, eye_m, sclera[None, None, :] * (1 - 0.3 * corner - 0.35 * top_shadow)[..., None])
            # iris and pupil, clipped to the opening
            gx, gy = self.scene.gaze
            ix, iy = lex + gx * lay.eye_w * 0.45, ley + 0.5 + gy * lay.eye_h
            ir = 0.44 * lay.eye_w
            d = np.sqrt((xx - ix) ** 2 + (yy - iy) ** 2)
            iris_col = np.asarray(idt.iris, np.float32) * min(1.0, 0.6 + 0.4 * s_eye)
            ring = np.clip((d - 0.65 * ir) / (0.35 * ir), 0, 1)
            _blend(sub, np.clip(ir + 0.5 - d, 0, 1) * eye_m, iris_col[None, None, :] * (1.0 - 0.55 * ring)[..., None])
            _blend(sub, np.clip(0.42 * ir + 0.5 - d, 0, 1) * eye_m, np.array([12, 10, 10], np.float32))
            lx, ly = self.scene.light[0], self.scene.light[1]
            glint = np.clip(
                1.2 - np.sqrt((xx - ix - 0.35 * ir * (lx - 0.3)) ** 2 + (yy - iy + 0.35 * ir * (0.6 - ly)) ** 2), 0, 1
            )
            _blend(sub, glint * eye_m * 0.85, np.array([245, 245, 245], np.float32))
            # lashes on the upper lid, a fine lower lid line
            _blend(sub, _stroke_mask(shape, up, 2, 0.6) * 0.92, np.array([22, 20, 24], np.float32))
            _blend(sub, _stroke_mask(shape, low, 1, 0.7) * 0.45, skin * 0.4 * s_eye)

    def _glasses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Masks of the frames, the lenses and their glare, computed once and laid over each eye state."""
        lay, kind = self.lay, self.idt.glasses
        if kind == "none":
            return None
        y0, y1 = int(lay.eye_y - 2.5 * lay.eye_w), int(lay.eye_y + 2.5 * lay.eye_w)
        shape = (y1 - y0, CANVAS_W)
        m = np.zeros(shape, np.uint8)
        lens = np.zeros(shape, np.uint8)
        thick = 2 if kind != "browline" else 3
        rw, rh = 1.45 * lay.eye_w, 1.25 * lay.eye_w if kind in ("round", "aviator") else 0.95 * lay.eye_w

        def fx(pt: tuple[float, float]) -> tuple[int, int]:
            return int(pt[0] * _SUBF), int((pt[1] - y0) * _SUBF)

        for sgn in (-1, 1):
            ex, ey = lay.cx + sgn * lay.eye_dx, lay.eye_y + 2
            if kind in ("rect", "browline"):
                pts = np.array(
                    [[ex - rw, ey - rh], [ex + rw, ey - rh], [ex + rw * 0.95, ey + rh], [ex - rw * 0.95, ey + rh]]
                )
            elif kind == "aviator":
                pts = _ellipse_pts(ex + sgn * 1.5, ey + 2, rw, rh * 0.95, sgn * 0.15)
            else:
                pts = _ellipse_pts(ex, ey, rw * 0.9, rh * 0.9)
            p = np.round((pts - (0, y0)) * _SUBF).astype(np.int32)
            cv2.polylines(m, [p], True, 255, thick, cv2.LINE_AA, _SUB)
            cv2.fillPoly(lens, [p], 255, cv2.LINE_AA, _SUB)
            # an arm towards the ear
            cv2.line(
                m,
                fx((ex + sgn * rw, ey - rh * 0.6)),
                fx((lay.cx + sgn * lay.a, ey - rh * 0.4)),
                255,
                thick,
                cv2.LINE_AA,
                _SUB,
            )
        bridge_y = lay.eye_y - 2
        cv2.line(
            m,
            fx((lay.cx - lay.eye_dx + rw * 0.9, bridge_y)),
            fx((lay.cx + lay.eye_dx - rw * 0.9, bridge_y)),
            255,
            thick,
            cv2.LINE_AA,
            _SUB,
        )
        full = np.zeros((3, CANVAS_H, CANVAS_W), np.float32)
        full[0, y0:y1] = cv2.GaussianBlur(m.astype(np.float32) / 255, (0, 0), 0.5)
        full[1, y0:y1] = lens.astype(np.float32) / 255
        full[2] = np.clip((self._xx - self._yy - (lay.cx - lay.eye_y) + 10) / 30.0, 0, 1) * full[1]
        return full[0], full[1], full[2]

    def _draw_glasses(self, img: np.ndarray, glasses: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        if glasses is None:
            return
        frame_m, lens_m, glare = glasses
        _blend(img, lens_m * 0.08, np.zeros(3, np.float32))  # a slight tint
        _blend(img, glare * 0.12, np.array([250, 250, 250], np.float32))
        _blend(img, frame_m * 0.95, np.asarray(self.idt.glasses_colour, np.float32))

    def _beard_region(self, full: bool) -> np.ndarray:
        lay = self.lay
        face = _poly_mask((CANVAS_H, CANVAS_W), head_contour(lay, grow=2 if full else 0), 1.0)
        top = lay.nose_base_y + 4 if not full else lay.eye_y + 0.3 * lay.a
        side_top = lay.eye_y + (0.2 if full else 0.35) * lay.a
        rel = np.abs(self._xx - lay.cx) / lay.a
        line = top + (side_top - top) * np.clip(rel / 0.8, 0, 1) ** 0.5
        line = np.where(rel > 0.85, lay.eye_y + 8, line)
        region = face * np.clip((self._yy - line) / 10.0, 0, 1)
        mouth_hole = _gauss2(self._xx, self._yy, lay.cx, lay.mouth_y + 1, lay.mouth_w + 3, lay.lower_lip + 2)
        # photo: stubble and beards grow up to the lip line (and a moustache over it, see below)
        return np.clip(region * (1 - (0.9 if self.photo else 1.6) * mouth_hole), 0, 1)

    def _facial_hair(self, img: np.ndarray, hair: np.ndarray, tex: np.ndarray) -> None:
        kind, lay = self.idt.facial_hair, self.lay
        if kind in ("none", "mustache"):
            return
        if kind == "stubble":
            dots = np.clip(self.rng.normal(0, 1, img.shape[:2]).astype(np.float32), 0, None)
            region = self._beard_region(False)
            _blend(img, region * np.clip(0.2 + 0.15 * dots, 0, 0.55), hair * 0.8)
            return
        if kind == "goatee":
            region = _gauss2(self._xx, self._yy, lay.cx, lay.chin_y - 14, 0.28 * lay.a, 16) ** 0.6
            region *= self._beard_region(False)
        else:
            region = self._beard_region(kind == "full_beard")
        # hairs: denser in the middle of the beard, skin showing through at its edges
        density = (
            region * np.clip(0.45 + 0.55 * tex + 0.25 * (region - 0.5), 0, 1) * (0.9 if kind == "full_beard" else 0.8)
        )
        _blend(img, density, hair[None, None, :] * (0.55 + 0.6 * tex)[..., None] * self.shade[..., None])

    def _mustache_patch(
        self, hair: np.ndarray, tex: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
        if self.idt.facial_hair not in ("mustache", "goatee", "beard", "full_beard"):
            return None
        lay = self.lay
        y0, y1 = int(lay.nose_base_y + 1), int(lay.mouth_y + 4)
        x0, x1 = int(lay.cx - lay.mouth_w - 10), int(lay.cx + lay.mouth_w + 11)
        top = _curve(
            lay.cx - lay.mouth_w - 6,
            lay.cx + lay.mouth_w + 6,
            lambda x: lay.nose_base_y + 3 + 4 * ((x - lay.cx) / lay.mouth_w) ** 2,
        )
        bot = _curve(
            lay.cx + lay.mouth_w + 6,
            lay.cx - lay.mouth_w - 6,
            lambda x: (
                lay.mouth_y - lay.upper_lip * (0.45 if self.photo else 1.0) + 2 + 4 * ((x - lay.cx) / lay.mouth_w) ** 2
            ),
        )
        m = _poly_mask((CANVAS_H, CANVAS_W), np.concatenate([top, bot]), 1.0)[y0:y1, x0:x1]
        col = hair[None, None, :] * (0.5 + 0.6 * tex[y0:y1, x0:x1])[..., None] * self.shade[y0:y1, x0:x1, None] * 0.9
        return m * 0.95, col, (y0, x0)

    # ---- per frame

    def canvas(self, mouth: np.ndarray, blink: int = 0) -> np.ndarray:
        """The canvas (BGRA uint8) with the jaw dropped and the mouth drawn for one parameter vector."""
        out = self.canvases[int(blink)].copy()
        geo = self.mouth_geometry(mouth)
        self._drop_jaw(out, geo["jaw_px"])
        self._draw_mouth(out, mouth, geo)
        return out

    def mouth_geometry(self, m: np.ndarray) -> dict:
        lay = self.lay
        jaw, spread, rnd, close = float(m[P["jaw"]]), float(m[P["spread"]]), float(m[P["round"]]), float(m[P["close"]])
        tl = float(m[P["teeth_lip"]])
        open_ = float(mouth_openness(m))
        sep = 0.95 * lay.mouth_w * open_
        w = lay.mouth_w * (1 + 0.2 * spread - 0.3 * rnd) * (1 - 0.06 * open_)
        return {
            "sep": sep,
            "jaw_px": 0.45 * sep + 1.5 * jaw,
            "w": w,
            "wi": w * (0.9 - 0.35 * rnd),
            "upper_y": lay.mouth_y - 0.2 * sep,
            "lower_y": lay.mouth_y + 0.8 * sep,
            "tu": lay.upper_lip * (1 + 0.35 * rnd) * (1 - 0.25 * close),
            "tl": lay.lower_lip * (1 + 0.3 * rnd) * (1 - 0.2 * close) * (1 - 0.3 * tl),
        }

    def _drop_jaw(self, canvas: np.ndarray, d: float) -> None:
        if d < 0.25:
            return
        lay = self.lay
        y0 = int(lay.mouth_y - 2)
        y1 = min(CANVAS_H, int(lay.chin_y + 30))
        x0, x1 = int(lay.cx - lay.a - 6), int(lay.cx + lay.a + 7)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        ramp = np.clip((ys - y0) / (lay.lower_lip + 6.0), 0, 1)
        fade = np.clip((lay.chin_y + 28 - ys) / 26.0, 0, 1)
        horiz = np.clip((lay.a + 4 - np.abs(xs - lay.cx)) / (0.45 * lay.a), 0, 1)
        dy = d * ramp * np.minimum(fade, 1.0) * horiz
        roi = cv2.remap(canvas, xs, ys - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        canvas[y0:y1, x0:x1] = roi

    def _draw_mouth(self, canvas: np.ndarray, m: np.ndarray, g: dict) -> None:
        lay, idt = self.lay, self.idt
        cx = lay.cx
        pad = 8
        x0, x1 = int(cx - lay.mouth_w * 1.3 - pad), int(cx + lay.mouth_w * 1.3 + pad)
        y0, y1 = int(lay.mouth_y - lay.upper_lip * 1.6 - 8), int(g["lower_y"] + g["tl"] * 1.5 + 8)
        y1 = min(y1, CANVAS_H)
        roi = canvas[y0:y1, x0:x1, :3].astype(np.float32)
        shape = roi.shape[:2]
        ox, oy = x0, y0
        w, wi, sep = g["w"], g["wi"], g["sep"]
        uy, ly_ = g["upper_y"], g["lower_y"]
        corner_y = lay.mouth_y + 0.15 * sep
        tl_amt = float(m[P["teeth_lip"]])

        def pts(xs, ys):
            return np.stack([xs - ox, ys - oy], 1)

        xs = np.linspace(cx - w, cx + w, 33)
        rel = np.clip((xs - cx) / w, -1.0, 1.0)
        # inner lip lines: curve from the centre to the corners; a rounder opening when rounded
        shape_exp = 2.0 + 1.5 * float(m[P["round"]])
        upper_inner = uy + (corner_y - uy) * np.abs(rel) ** shape_exp
        lower_inner = ly_ + (corner_y - ly_) * np.abs(rel) ** (shape_exp * 0.8)
        # outer contours: cupid's bow above, a full curve below
        bow = 1.6 * np.exp(-(((np.abs(rel) - 0.28) / 0.16) ** 2)) - 0.8 * np.exp(-(((rel) / 0.1) ** 2))
        upper_outer = uy - g["tu"] * (1 - np.abs(rel) ** 2.2) ** 0.6 - bow * (1 - np.abs(rel)) - 0.5
        lower_outer = ly_ + g["tl"] * (1 - np.abs(rel) ** 2.0) ** 0.55 + 0.5
        base_lip = np.asarray(idt.lip_colour, np.float32)
        s_m = float(self.shade[int(lay.mouth_y), int(cx)])
        s_lo = float(self.shade[int(min(lay.mouth_y + 6, CANVAS_H - 1)), int(cx)])

        if sep > 0.6:
            interior = np.concatenate([pts(xs, upper_inner), pts(xs[::-1], lower_inner[::-1])])
            in_m = _poly_mask(shape, interior, 0.4)
            dark = np.array([28, 22, 40], np.float32) * (0.7 + 0.5 * s_m)
            if self.photo:  # the inside of a real mouth is near black, with a warm tinge
                dark = np.array([16, 14, 30], np.float32) * (0.6 + 0.4 * s_m)
            yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
            depth = np.clip(1 - np.abs(xx + ox - cx) / max(wi, 1), 0, 1)
            layer = np.empty_like(roi)
            layer[:] = dark * 0.9
            layer *= (0.75 + 0.5 * depth)[..., None]
            teeth_col = np.asarray(idt.teeth_colour, np.float32) * min(1.0, 0.45 + 0.55 * s_m)
            vis = float(m[P["teeth"]])
            # upper teeth hang from the upper inner lip line
            th_u = min(sep * 0.9, 0.3 * lay.mouth_w * (0.45 + 0.55 * vis))
            if self.photo:  # the upper lip hides the teeth's upper part
                th_u *= 0.7
            if th_u > 0.4:
                tx = np.linspace(cx - wi * 0.82, cx + wi * 0.82, 25)
                trel = (tx - cx) / (wi * 0.82)
                top = uy - 2 + (corner_y - uy) * np.abs(trel) ** shape_exp * 0.6
                edge = uy + th_u * (1 - 0.35 * trel**2)
                teeth = _poly_mask(shape, np.concatenate([pts(tx, top), pts(tx[::-1], edge[::-1])]), 0.5)
                side = np.clip(np.abs(xx + ox - cx) / max(wi, 1), 0, 1)
                t_img = teeth_col[None, None, :] * (1 - 0.55 * side**1.5)[..., None]
                gaps = (np.abs(np.sin((xx + ox - cx) / max(lay.mouth_w * 0.18, 1) * np.pi)) < 0.12) * 0.18
                t_img *= (1 - gaps)[..., None]
                if self.photo:  # the lip's shadow falls on the teeth: darker towards the gum
                    t_img *= np.clip(0.55 + 0.45 * (yy + oy - uy + 2) / max(th_u, 1.0), 0.55, 1.0)[..., None]
                _blend(layer, teeth, t_img)
            # lower teeth, seen when the mouth is open and lips retracted
            th_l = min(sep * 0.35, 0.2 * lay.mouth_w * vis) if sep > 4 else 0.0
            if th_l > 0.5:
                tx = np.linspace(cx - wi * 0.7, cx + wi * 0.7, 25)
                trel = (tx - cx) / (wi * 0.7)
                bot = ly_ + 2
                edge = ly_ - th_l * (1 - 0.3 * trel**2)
                teeth = _poly_mask(shape, np.concatenate([pts(tx, edge), pts(tx[::-1], np.full(25, bot))]), 0.5)
                _blend(layer, teeth * 0.9, teeth_col * 0.8)
            # tongue: low in the mouth, its tip raised for t, d, n, l, th
            tongue = float(m[P["tongue"]])
            tongue_col = base_lip * np.array([0.85, 0.8, 1.12], np.float32) * (0.55 + 0.4 * s_m)
            ty = ly_ - sep * (0.18 + 0.35 * tongue)
            t_m = _poly_mask(shape, _ellipse_pts(cx - ox, ty - oy + sep * 0.25, wi * 0.62, sep * 0.3 + 1), 1.0)
            _blend(layer, t_m * 0.92, tongue_col)
            if tongue > 0.6:
                tip = _poly_mask(shape, _ellipse_pts(cx - ox, uy + th_u * 0.9 - oy, wi * 0.35, 2.5 + 0.1 * sep), 0.8)
                _blend(layer, tip * (tongue - 0.6) * 2.0, tongue_col * 1.1)
            _blend(roi, in_m, layer)

        # lips
        up_poly = np.concatenate([pts(xs, upper_outer), pts(xs[::-1], upper_inner[::-1])])
        lo_poly = np.concatenate([pts(xs, lower_inner), pts(xs[::-1], lower_outer[::-1])])
        edge = 1.3 if self.photo else 0.6  # the border of real lips is soft
        up_m = _poly_mask(shape, up_poly, edge)
        lo_m = _poly_mask(shape, lo_poly, edge)
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        up_col = np.broadcast_to(base_lip * 0.8 * s_m, roi.shape)
        lo_col = np.broadcast_to(base_lip * 1.0 * s_lo, roi.shape)
        if self.photo:  # lit like the skin around them, pixel by pixel, with fine vertical creases
            sub = (slice(y0, y1), slice(x0, x1))
            grain = (1.0 + 0.07 * self.lip_creases[sub])[..., None]
            up_col = base_lip * 0.88 * self.shade[sub][..., None] * grain
            lo_col = base_lip * self.shade[sub][..., None] * grain
        # the lower lip catches the light near its middle
        hl = np.exp(
            -(((xx + ox - cx) / (0.5 * w)) ** 2 + ((yy + oy - (ly_ + 0.45 * g["tl"])) / (0.3 * g["tl"] + 0.5)) ** 2)
        )
        _blend(roi, up_m, np.ascontiguousarray(up_col, np.float32))
        lo_img = lo_col * (1 + 0.18 * hl * (0.5 + self.scene.specular * 2))[..., None]
        _blend(roi, lo_m, lo_img.astype(np.float32))
        # where the lips meet, and the corners
        meet = np.zeros(shape, np.uint8)
        if sep <= 0.6:
            cv2.polylines(
                meet,
                [np.round(pts(xs, 0.5 * (upper_inner + lower_inner)) * _SUBF).astype(np.int32)],
                False,
                255,
                1,
                cv2.LINE_AA,
                _SUB,
            )
        for sgn in (-1, 1):
            c = (int((cx + sgn * w - ox) * _SUBF), int((corner_y - oy) * _SUBF))
            cv2.circle(meet, c, int(1.6 * _SUBF), 200, -1, cv2.LINE_AA, _SUB)
        _blend(roi, cv2.GaussianBlur(meet.astype(np.float32) / 255, (0, 0), 0.7) * 0.75, base_lip * 0.35 * s_m)
        # f/v: the upper teeth rest on the lower lip
        if tl_amt > 0.2:
            tx = np.linspace(cx - wi * 0.6, cx + wi * 0.6, 21)
            trel = (tx - cx) / (wi * 0.6)
            edge = uy + 2.5 + 1.5 * (1 - trel**2)
            teeth = _poly_mask(shape, np.concatenate([pts(tx, np.full(21, uy - 0.5)), pts(tx[::-1], edge[::-1])]), 0.5)
            _blend(
                roi,
                teeth * min(1.0, (tl_amt - 0.2) * 1.6),
                np.asarray(idt.teeth_colour, np.float32) * (0.5 + 0.5 * s_m),
            )
        if self.mustache is not None:
            mm, col, (my0, mx0) = self.mustache
            h_, w_ = mm.shape
            sy0, sx0 = my0 - y0, mx0 - x0
            ry0, rx0 = max(sy0, 0), max(sx0, 0)
            ry1, rx1 = min(sy0 + h_, shape[0]), min(sx0 + w_, shape[1])
            if ry1 > ry0 and rx1 > rx0:
                sub = roi[ry0:ry1, rx0:rx1]
                _blend(
                    sub,
                    mm[ry0 - sy0 : ry1 - sy0, rx0 - sx0 : rx1 - sx0],
                    col[ry0 - sy0 : ry1 - sy0, rx0 - sx0 : rx1 - sx0],
                )
        canvas[y0:y1, x0:x1, :3] = np.clip(roi, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The frame: background, pose warp, camera


def make_background(scene: Scene) -> np.ndarray:
    rng = np.random.default_rng(scene.background_seed)
    w, h = scene.frame_w, scene.frame_h
    base = rng.uniform(30, 220, 3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-0.5, 0.5, 2)
    bg = base[None, None, :] * (1 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5))[..., None]
    kind = scene.background_kind
    if kind == "room":
        for _ in range(int(rng.integers(3, 8))):
            x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
            rw, rh = rng.uniform(0.1, 0.6) * w, rng.uniform(0.1, 0.8) * h
            col = tuple(float(c) for c in rng.uniform(20, 240, 3))
            cv2.rectangle(bg, (int(x0), int(y0)), (int(x0 + rw), int(y0 + rh)), col, -1)
            if rng.random() < 0.5:
                cv2.rectangle(
                    bg,
                    (int(x0), int(y0)),
                    (int(x0 + rw), int(y0 + rh)),
                    tuple(c * 0.6 for c in col),
                    int(rng.integers(2, 6)),
                )
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(1.0, 4.0))
    elif kind == "blobs":
        for _ in range(int(rng.integers(4, 12))):
            c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            ax = (int(rng.uniform(0.05, 0.35) * w), int(rng.uniform(0.05, 0.35) * h))
            cv2.ellipse(bg, c, ax, rng.uniform(0, 180), 0, 360, tuple(float(v) for v in rng.uniform(20, 240, 3)), -1)
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(3.0, 10.0))
    elif kind == "texture":
        n = _smooth_noise(rng, (h, w), int(rng.integers(8, 40)))
        n2 = rng.normal(0, 1, (h, w)).astype(np.float32)
        col2 = rng.uniform(30, 220, 3).astype(np.float32)
        t = np.clip(0.5 + 0.5 * n + 0.05 * n2, 0, 1)[..., None]
        bg = bg * (1 - t) + col2 * t
    if scene.style == "photo":
        # Rooms behind a speaker are mostly muted and out of focus, with some fine texture.
        grey = bg.mean(axis=2, keepdims=True)
        bg = grey + rng.uniform(0.25, 0.7) * (bg - grey)
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(1.0, 3.0))
        bg += rng.uniform(0, 6) * cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.0)[..., None]
    return np.clip(bg, 0, 255).astype(np.float32)


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised linear motion-blur kernel of `length` pixels at `angle` radians."""
    size = int(math.ceil(length)) | 1
    k = np.zeros((size * 4, size * 4), np.uint8)
    c = size * 2
    dx, dy = 0.5 * length * 4 * math.cos(angle), 0.5 * length * 4 * math.sin(angle)
    cv2.line(k, (int(c - dx), int(c - dy)), (int(c + dx), int(c + dy)), 255, 3, cv2.LINE_AA)
    k = cv2.resize(k.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return k / k.sum()


def _unturn(p: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Where on the frontal canvas a point seen at offset p of a cylinder turned by `angle` comes from.

    Points turned past the silhouette (the back of the head) continue outwards, so the map never folds.
    """
    ang = np.arcsin(np.clip(p / radius, -1, 1)) - angle
    over = np.abs(ang) - np.pi / 2
    u = np.where(over <= 0, radius * np.sin(ang), np.sign(ang) * radius * (1 + over))
    return u + (p - np.clip(p, -radius, radius))


class Camera:
    """Maps the face canvas into frames and applies the camera's look; one per clip."""

    def __init__(self, face: Face, scene: Scene, seed: int) -> None:
        self.face = face
        self.scene = scene
        self.background = make_background(scene)
        self.rng = np.random.default_rng(seed)
        w, h = scene.frame_w, scene.frame_h
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        gx, gy = scene.frame_gradient
        light = scene.exposure * (1 + gx * (xx / w - 0.5) * 2 + gy * (yy / h - 0.5) * 2)
        vign = 1 - 0.25 * (((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) / 0.5)
        self.light = (light * vign)[..., None] * np.asarray(scene.tint, np.float32)[None, None, :]
        self.lut = np.clip(255.0 * (np.arange(256) / 255.0) ** scene.gamma, 0, 255).astype(np.uint8)
        # sensor noise: a few fields drawn once, each frame takes one at a random horizontal offset
        self.noise = (
            scene.noise * self.rng.standard_normal((6, h, w + 48, 3), dtype=np.float32) if scene.noise > 0 else None
        )
        self.smear = _line_kernel(scene.motion_blur, scene.motion_angle) if scene.motion_blur >= 1.0 else None
        lay = face.lay
        self.pivot = (lay.cx, lay.eye_y + 0.3 * (lay.nose_base_y - lay.eye_y))
        self.radius_x = lay.a * 1.12
        self.radius_y = (lay.b_top + lay.b_bot) * 0.55

    def forward(self, pose: Pose, pts: np.ndarray, depth: np.ndarray | None = None) -> np.ndarray:
        """Canvas points (N, 2) -> frame points, with an optional extra depth (nose) for parallax."""
        px, py = self.pivot
        u = pts[:, 0] - px
        v = pts[:, 1] - py
        Rx, Ry = self.radius_x, self.radius_y
        du = 0.0 if depth is None else depth * math.sin(pose.yaw)
        dv = 0.0 if depth is None else depth * math.sin(pose.pitch)
        p = Rx * np.sin(np.arcsin(np.clip(u / Rx, -1, 1)) + pose.yaw) + du
        q = Ry * np.sin(np.arcsin(np.clip(v / Ry, -1, 1)) + pose.pitch) + dv
        c, s = math.cos(pose.roll), math.sin(pose.roll)
        x = pose.x + pose.scale * (c * p - s * q)
        y = pose.y + pose.scale * (s * p + c * q)
        return np.stack([x, y], 1)

    def face_box(self, pose: Pose) -> tuple[float, float, float, float]:
        """The face's box in the frame, drawn from the canvas landmarks (x1, y1, x2, y2)."""
        lay = self.face.lay
        pts = np.array([
            [lay.cx - lay.a * 0.92, lay.eye_y - 0.05 * lay.a], [lay.cx + lay.a * 0.92, lay.eye_y - 0.05 * lay.a],
            [lay.cx - lay.a * 0.85, lay.mouth_y], [lay.cx + lay.a * 0.85, lay.mouth_y],
            [lay.cx, lay.brow_y - 0.28 * lay.a], [lay.cx, lay.chin_y],
            [lay.cx - lay.a * 0.5, lay.chin_y - 12], [lay.cx + lay.a * 0.5, lay.chin_y - 12],
        ])  # fmt: skip
        fp = self.forward(pose, pts)
        return (float(fp[:, 0].min()), float(fp[:, 1].min()), float(fp[:, 0].max()), float(fp[:, 1].max()))

    def landmarks(self, pose: Pose) -> dict[str, tuple[float, float]]:
        names = list(self.face.lay.landmarks)
        pts = np.array([self.face.lay.landmarks[n] for n in names])
        depth = np.array([self.face.feature_height[int(y), int(x)] for x, y in pts])
        fp = self.forward(pose, pts, depth)
        return {n: (float(x), float(y)) for n, (x, y) in zip(names, fp, strict=True)}

    def _maps(self, pose: Pose, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """For each frame pixel of the region, the canvas point it shows (computed at half resolution)."""
        step = 2
        ys, xs = np.mgrid[y0 : y1 + step : step, x0 : x1 + step : step].astype(np.float32) + 0.5
        c, s = math.cos(pose.roll), math.sin(pose.roll)
        dx, dy = (xs - pose.x) / pose.scale, (ys - pose.y) / pose.scale
        p = c * dx + s * dy
        q = -s * dx + c * dy
        u = _unturn(p, self.radius_x, pose.yaw)
        v = _unturn(q, self.radius_y, pose.pitch)
        # below the head the body does not turn with it
        body = np.clip((q - (self.face.lay.chin_y + 20 - self.pivot[1])) / 40.0, 0, 1)
        u += body * (p - u)
        v += body * (q - v)
        mx = (u + self.pivot[0]).astype(np.float32)
        my = (v + self.pivot[1]).astype(np.float32)
        # nose parallax: what stands out of the face shifts further when the head turns
        hgt = cv2.remap(self.face.feature_height, mx, my, cv2.INTER_LINEAR, borderValue=0)
        mx -= hgt * math.sin(pose.yaw)
        my -= hgt * math.sin(pose.pitch)
        # the shoulders continue past the bottom and the sides of the canvas
        below = body > 0.5
        np.putmask(my, below, np.minimum(my, CANVAS_H - 1.5))
        np.putmask(mx, below & (my > CANVAS_H - 60), np.clip(mx, 0.5, CANVAS_W - 1.5))
        # back to full resolution: coarse sample i sits at x0 + 2i + 0.5, which is where cv2.resize
        # (pixel-centre aligned) puts it, so the upsampled maps land on whole pixels
        size = (x1 - x0, y1 - y0)
        full_x = cv2.resize(mx, (mx.shape[1] * step, mx.shape[0] * step), interpolation=cv2.INTER_LINEAR)
        full_y = cv2.resize(my, (my.shape[1] * step, my.shape[0] * step), interpolation=cv2.INTER_LINEAR)
        return full_x[: size[1], : size[0]], full_y[: size[1], : size[0]]

    def compose(self, canvas: np.ndarray, pose: Pose, camera_effects: bool = True) -> np.ndarray:
        """One BGR uint8 frame: the canvas posed over the background, then the camera's look."""
        sc = self.scene
        fw, fh = sc.frame_w, sc.frame_h
        # the frame region the canvas can land in (the shoulders run on to the frame's bottom)
        c, s = math.cos(pose.roll), math.sin(pose.roll)
        corners = np.array([[0, 0], [CANVAS_W, 0], [0, CANVAS_H], [CANVAS_W, CANVAS_H]], np.float64) - self.pivot
        fc = np.stack(
            [
                pose.x + pose.scale * (c * corners[:, 0] - s * corners[:, 1]),
                pose.y + pose.scale * (s * corners[:, 0] + c * corners[:, 1]),
            ],
            1,
        )
        margin = 0.6 * self.radius_x * pose.scale + 8
        x0, y0 = max(int(fc[:, 0].min() - margin), 0), max(int(fc[:, 1].min() - margin), 0)
        x1, y1 = min(int(fc[:, 0].max() + margin), fw), fh
        frame = self.background.copy()
        if x1 > x0 and y1 > y0:
            mx, my = self._maps(pose, x0, y0, x1, y1)
            warped = cv2.remap(
                canvas, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0)
            )
            a = warped[..., 3:4].astype(np.float32) * (1.0 / 255.0)
            region = frame[y0:y1, x0:x1]
            region += a * (warped[..., :3].astype(np.float32) - region)
        frame *= self.light
        if not camera_effects:
            return np.clip(frame, 0, 255).astype(np.uint8)
        if sc.blur > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), sc.blur)
        if self.smear is not None:
            frame = cv2.filter2D(frame, -1, self.smear)
        if sc.noise > 0:
            k, off = self.rng.integers(len(self.noise)), self.rng.integers(self.noise.shape[2] - fw + 1)
            grain = self.noise[k, :, off : off + fw]
            if sc.style == "photo":  # shot noise: stronger in the bright parts, as sensors have it
                grain = grain * np.sqrt(np.clip(frame, 4.0, 255.0) * (1.0 / 96.0))
            frame += grain
        out = cv2.LUT(np.clip(frame, 0, 255).astype(np.uint8), self.lut)
        if sc.jpeg_quality < 100:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, sc.jpeg_quality])
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        return out
