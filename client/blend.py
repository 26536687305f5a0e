"""Paste the generated mouth back into the frame with a feathered mask: no visible square.

The original overwrote the whole padded face box with the upscaled 96x96 output (the most
reported flaw, docs/network-facts.md 6.8 and 9.1). Two pastes, both leaving every pixel outside
their support at its exact input value:
- "mouth" (the default): only the lips, mouth opening and chin (client/mouth_mask.py), with
  the generated colours matched in CIE Lab to the frame's own skin around the mouth, so the
  cheeks, a beard's edges and the skin tone stay the person's;
- "lower_face": a rounded rectangle from just below the nose to the bottom of the region, inset
  from the sides, whose edge fades out over `feather` of the region height.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from lipsync.client import contract
from lipsync.client.face_crop import CropRegion
from lipsync.client.mouth_mask import MouthShape, mouth_alpha, skin_ring

BLEND_MODES = ("mouth", "lower_face")
DEFAULT_BLEND = "mouth"
# The colour match may brighten or flatten the generated skin's spread by at most this factor.
MAX_SPREAD_RATIO = 2.0

# The blend support as fractions of the crop region (which is the face box padded by the pads).
# In such a crop the nose tip sits at about 50-55 % of the height, the mouth at 70-75 %, the chin
# near the bottom. The generator only redraws rows 48..95 (50 %) of its input.
MASK_TOP = 0.47  # support starts here: the upper face (eyes, nose) is never touched
MASK_SIDE_INSET = 0.08  # cheeks' outer edges and the background beside the face stay untouched
MASK_CORNER = 0.3  # corner radius of the rounded rectangle, as a share of the region width
DEFAULT_FEATHER = 0.08  # width of the fade, as a share of the region height


@functools.lru_cache(maxsize=64)
def _mask(height: int, width: int, feather: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    # Exact Euclidean signed distance to a rounded rectangle, so the fade is equally wide all
    # round and the alpha changes by at most 1.5 / (feather * height) between neighbouring pixels
    # (the steepest slope of smoothstep is 1.5).
    x = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    y = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    left, right = MASK_SIDE_INSET * width, (1.0 - MASK_SIDE_INSET) * width
    top, bottom = MASK_TOP * height, float(height)
    half_w, half_h = (right - left) / 2.0, (bottom - top) / 2.0
    radius = min(MASK_CORNER * width, half_w, half_h)
    qx = np.abs(x - (left + right) / 2.0) - (half_w - radius)
    qy = np.abs(y - (top + bottom) / 2.0) - (half_h - radius)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    signed = outside + np.minimum(np.maximum(qx, qy), 0.0) - radius  # < 0 inside
    ramp = max(feather * height, 1.0)
    t = np.clip(-signed / ramp, 0.0, 1.0)
    alpha = (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: no kink where the fade starts or ends
    rows, cols = np.nonzero(alpha.any(axis=1))[0], np.nonzero(alpha.any(axis=0))[0]
    bbox = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1) if rows.size else (0, 0, 0, 0)
    alpha.setflags(write=False)
    return alpha, bbox


def blend_mask(height: int, width: int, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """The (height, width) float32 alpha used for a region of that size: 1 = generated, 0 = original.

    Cached per size and read-only; its support (alpha > 0) is the only part of a frame blend_face changes.
    """
    if height < 1 or width < 1:
        raise ValueError(f"mask size must be positive, got {height}x{width}")
    if not 0.0 < feather <= 0.5:
        raise ValueError(f"feather must be in (0, 0.5], got {feather}")
    return _mask(int(height), int(width), float(feather))[0]


def generated_to_region(generated: np.ndarray, width: int, height: int) -> np.ndarray:
    """The generator's (3, 96, 96) BGR output in [0, 1] as a (height, width, 3) float32 image in [0, 255].

    Bicubic, kept in float so the only rounding is the final one in blend_face (the original
    truncated to uint8 before resizing, darkening the face by half a grey level on average).
    """
    size = contract.FACE_SIZE
    if generated.shape != (3, size, size):
        raise ValueError(f"generated face must have shape (3, {size}, {size}), got {generated.shape}")
    face = np.ascontiguousarray(generated.transpose(1, 2, 0), dtype=np.float32) * np.float32(255.0)
    return cv2.resize(face, (width, height), interpolation=cv2.INTER_CUBIC)


def blend_face(
    frame: np.ndarray, generated: np.ndarray, region: CropRegion, *, feather: float = DEFAULT_FEATHER
) -> np.ndarray:
    """A new frame with the lower face of region replaced by the generated face, feathered.

    frame: (H, W, 3) uint8 BGR, left untouched. generated: (3, 96, 96) float in [0, 1], BGR.
    Pixels where the mask is 0 are bit-identical to the input, pixels where it is 1 equal the
    generated face (rounded); in between the two are mixed linearly.
    """
    _check_frame_and_region(frame, region)
    alpha = blend_mask(region.height, region.width, feather)
    r1, r2, c1, c2 = _mask(region.height, region.width, float(feather))[1]
    out = frame.copy()
    if r2 == r1:
        return out
    face = generated_to_region(generated, region.width, region.height)[r1:r2, c1:c2]
    _mix_into(out[region.y1 + r1 : region.y1 + r2, region.x1 + c1 : region.x1 + c2], face, alpha[r1:r2, c1:c2])
    return out


def match_colour(generated: np.ndarray, original: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """generated ((h, w, 3) float BGR in [0, 255]) shifted in CIE Lab so that, over ring, its mean and
    spread per channel equal original's (uint8 BGR of the same size). An empty ring changes nothing."""
    if ring.sum() < 8:
        return generated
    gen_lab = cv2.cvtColor(np.clip(generated, 0.0, 255.0).astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    orig_lab = cv2.cvtColor(original.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    g, o = gen_lab[ring], orig_lab[ring]
    g_mean, g_std = g.mean(axis=0), g.std(axis=0)
    o_mean, o_std = o.mean(axis=0), o.std(axis=0)
    ratio = np.clip(o_std / np.maximum(g_std, 1e-3), 1.0 / MAX_SPREAD_RATIO, MAX_SPREAD_RATIO)
    matched = (gen_lab - g_mean) * ratio + o_mean
    return cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_Lab2BGR) * np.float32(255.0)


def _support_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not rows.size:
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def blend_mouth(
    frame: np.ndarray, generated: np.ndarray, region: CropRegion, shape: MouthShape, *, colour_match: bool = True
) -> np.ndarray:
    """A new frame whose mouth (the support of shape, client/mouth_mask.py) comes from the generated face.

    frame: (H, W, 3) uint8 BGR, left untouched. generated: (3, 96, 96) float in [0, 1], BGR.
    Pixels where the mouth alpha is 0 are bit-identical to the input.
    """
    _check_frame_and_region(frame, region)
    alpha = mouth_alpha(shape, region.height, region.width)
    r1, r2, c1, c2 = _support_box(alpha > 0)
    out = frame.copy()
    if r2 == r1:
        return out
    if colour_match:
        generated = _colour_matched(generated, frame, region, shape)
    face = generated_to_region(generated, region.width, region.height)[r1:r2, c1:c2]
    _mix_into(out[region.y1 + r1 : region.y1 + r2, region.x1 + c1 : region.x1 + c2], face, alpha[r1:r2, c1:c2])
    return out


def _colour_matched(generated: np.ndarray, frame: np.ndarray, region: CropRegion, shape: MouthShape) -> np.ndarray:
    """generated ((3, 96, 96) in [0, 1]) with its colour matched to the frame's skin ring, at the model's size.

    Matching the 96x96 face before it is enlarged costs the same for every face size (0.1 ms instead
    of 3-4 ms on a 250-pixel face); the statistics are means and spreads, which the downsampling
    of the frame's region barely changes. The shape is region-relative, so its ring at 96x96 is the
    same band of skin.
    """
    size = contract.FACE_SIZE
    ring = skin_ring(shape, size, size)
    crop = frame[region.y1 : region.y2, region.x1 : region.x2]
    small = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    face = np.ascontiguousarray(generated.transpose(1, 2, 0), dtype=np.float32) * np.float32(255.0)
    matched = match_colour(face, small, ring)
    return np.ascontiguousarray((matched * np.float32(1.0 / 255.0)).transpose(2, 0, 1))


def mouth_support(frame_shape: tuple[int, ...], region: CropRegion, shape: MouthShape) -> np.ndarray:
    """(H, W) bool: the frame pixels blend_mouth may change for this region and shape (alpha > 0)."""
    support = np.zeros(frame_shape[:2], dtype=bool)
    alpha = mouth_alpha(shape, region.height, region.width)
    support[region.y1 : region.y1 + region.height, region.x1 : region.x1 + region.width] = alpha > 0
    return support


def _mix_into(view: np.ndarray, face: np.ndarray, alpha: np.ndarray) -> None:
    """view (uint8, in place) = view + alpha * (face - view), rounded."""
    original = view.astype(np.float32)
    # original + a * (face - original) is exactly original where a == 0, whatever the face holds.
    mixed = original + alpha[..., None] * (np.clip(face, 0.0, 255.0) - original)
    view[...] = (mixed + 0.5).astype(np.uint8)


def _check_frame_and_region(frame: np.ndarray, region: CropRegion) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a (H, W, 3) uint8 frame, got shape {frame.shape} dtype {frame.dtype}")
    if region.x2 > frame.shape[1] or region.y2 > frame.shape[0]:
        raise ValueError(f"{region} does not fit a {frame.shape[1]}x{frame.shape[0]} frame")
