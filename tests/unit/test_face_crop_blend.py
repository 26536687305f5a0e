"""Crop, lower-half mask, model input and the feathered paste-back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.client import contract
from lipsync.client.blend import DEFAULT_FEATHER, MASK_TOP, blend_face, blend_mask, generated_to_region
from lipsync.client.face_crop import (
    CropRegion,
    batch_face_inputs,
    crop_face,
    mask_lower_half,
    model_face_input,
    pad_box,
)
from lipsync.client.face_tracking import FaceBox

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(7)


def noise_frame(h=480, w=640):
    return np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def random_generated(seed=0):
    return np.random.default_rng(seed).random((3, 96, 96), dtype=np.float32)


def support_in_frame(frame_shape, region, feather=DEFAULT_FEATHER):
    """Boolean (H, W): where blend_face may change the frame."""
    support = np.zeros(frame_shape[:2], bool)
    support[region.y1 : region.y2, region.x1 : region.x2] = blend_mask(region.height, region.width, feather) > 0
    return support


# --- pad_box and crop ------------------------------------------------------------------------


def test_pad_box_default_pads_extend_the_bottom_by_10():
    region = pad_box(FaceBox(100, 50, 200, 150), (480, 640, 3))
    assert region == CropRegion(100, 50, 200, 160)
    assert (region.width, region.height) == (100, 110)


def test_pad_box_applies_top_bottom_left_right_and_clips_at_the_borders():
    assert pad_box(FaceBox(100, 50, 200, 150), (480, 640), pads=(5, 20, 7, 9)) == CropRegion(93, 45, 209, 170)
    # Off the top-left and bottom-right corners: clipped, never negative or past the frame.
    assert pad_box(FaceBox(-5.0, -8.0, 50.0, 470.0), (480, 640), pads=(10, 20, 5, 5)) == CropRegion(0, 0, 55, 480)
    assert pad_box(FaceBox(600, 400, 700, 500), (480, 640)) == CropRegion(600, 400, 640, 480)
    with pytest.raises(ValueError, match="outside"):
        pad_box(FaceBox(700, 10, 800, 100), (480, 640))
    with pytest.raises(ValueError, match="pads"):
        pad_box(FaceBox(0, 0, 10, 10), (480, 640), pads=(1, 2, 3))


def test_crop_region_rejects_empty_boxes():
    with pytest.raises(ValueError, match="x1 < x2"):
        CropRegion(10, 10, 10, 20)


@pytest.mark.parametrize("size", [(40, 30), (96, 96), (200, 260), (400, 300)])
def test_crop_face_is_96x96_uint8(size):
    w, h = size
    frame = noise_frame()
    region = CropRegion(20, 30, 20 + w, 30 + h)
    face = crop_face(frame, region)
    assert face.shape == (96, 96, 3) and face.dtype == np.uint8
    interpolation = cv2.INTER_AREA if w >= 96 and h >= 96 else cv2.INTER_LINEAR
    expected = cv2.resize(frame[30 : 30 + h, 20 : 20 + w], (96, 96), interpolation=interpolation)
    assert np.array_equal(face, expected)


def test_crop_face_takes_the_region_and_nothing_else():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[100:292, 200:392] = (10, 200, 30)
    face = crop_face(frame, CropRegion(200, 100, 392, 292))
    assert np.all(face == np.array([10, 200, 30], np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        crop_face(frame, CropRegion(600, 100, 700, 200))


# --- mask and model input --------------------------------------------------------------------


def test_mask_zeroes_exactly_rows_48_to_95():
    face = RNG.integers(1, 256, (96, 96, 3), dtype=np.uint8)  # no zeros, so every zero is the mask's
    before = face.copy()
    masked = mask_lower_half(face)
    assert contract.MASK_START_ROW == 48
    assert np.all(masked[48:] == 0)
    assert np.array_equal(masked[:48], face[:48])
    assert np.array_equal(face, before)  # input untouched


def test_model_face_input_channel_order_and_scale():
    target = np.empty((96, 96, 3), np.uint8)
    target[...] = (10, 20, 30)  # B, G, R
    reference = np.empty((96, 96, 3), np.uint8)
    reference[...] = (40, 50, 60)
    pair = model_face_input(target, reference)
    assert pair.shape == contract.FACE_INPUT.shape and pair.dtype == np.float32
    for c, value in enumerate([10, 20, 30]):  # masked target, BGR, /255
        assert np.all(pair[c, :48] == np.float32(value) / np.float32(255))
        assert np.all(pair[c, 48:] == 0.0)
    for c, value in enumerate([40, 50, 60]):  # reference, BGR, unmasked
        assert np.all(pair[3 + c] == np.float32(value) / np.float32(255))


def test_model_face_input_matches_the_original_and_defaults_to_the_unmasked_target():
    target = RNG.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    # The original: masked copy, concat on channels, / 255, then HWC -> CHW.
    masked = target.copy()
    masked[48:] = 0
    original = (np.concatenate([masked, target], axis=2) / 255.0).transpose(2, 0, 1)
    np.testing.assert_allclose(model_face_input(target), original, rtol=0, atol=1e-7)


def test_batch_face_inputs():
    targets = [RNG.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(3)]
    refs = [RNG.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(3)]
    batch = batch_face_inputs(targets, refs)
    assert batch.shape == contract.FACE_INPUT.batched_shape(3) and batch.dtype == np.float32
    for i in range(3):
        assert np.array_equal(batch[i], model_face_input(targets[i], refs[i]))
    assert np.array_equal(batch_face_inputs(targets)[1], model_face_input(targets[1]))
    with pytest.raises(ValueError, match="references"):
        batch_face_inputs(targets, refs[:2])
    with pytest.raises(ValueError, match="96"):
        model_face_input(np.zeros((64, 64, 3), np.uint8))


# --- blend -----------------------------------------------------------------------------------


def test_blend_mask_covers_the_lower_face_and_is_smooth():
    h, w = 200, 200
    alpha = blend_mask(h, w)
    assert alpha.shape == (h, w) and alpha.dtype == np.float32
    assert alpha.min() == 0.0 and alpha.max() == 1.0
    assert not alpha[: int(MASK_TOP * h)].any(), "eyes and nose are never touched"
    assert not alpha[:, :10].any() and not alpha[:, -10:].any(), "inset from the sides"
    assert alpha[int(0.72 * h), w // 2] == 1.0, "the mouth is fully generated"
    # No step between neighbouring pixels larger than X = 0.1 (the bound is 1.5 / (feather * h)
    # = 0.094 for this size); the original's hard paste steps by 1.0 at the box edge.
    steps = max(np.abs(np.diff(alpha, axis=0)).max(), np.abs(np.diff(alpha, axis=1)).max())
    assert steps <= 0.1, steps
    assert blend_mask(h, w) is alpha, "cached per size"
    with pytest.raises(ValueError):
        alpha[0, 0] = 1.0  # read-only, so a caller cannot corrupt the cache


def test_blend_changes_nothing_outside_the_mask_support():
    frame = noise_frame()
    before = frame.copy()
    region = CropRegion(201, 103, 401, 323)
    out = blend_face(frame, random_generated(1), region)
    support = support_in_frame(frame.shape, region)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.array_equal(out[~support], frame[~support])
    assert not np.shares_memory(out, frame)
    assert np.array_equal(frame, before), "the input frame is not mutated"
    assert (out[support] != frame[support]).mean() > 0.9, "the generated face does land inside"


def test_blend_equals_the_generated_face_where_alpha_is_one():
    frame = noise_frame()
    region = CropRegion(150, 90, 350, 290)
    alpha = blend_mask(region.height, region.width)
    full = np.zeros(frame.shape[:2], bool)
    full[region.y1 : region.y2, region.x1 : region.x2] = alpha == 1.0

    flat = np.empty((3, 96, 96), np.float32)
    flat[:] = np.float32([0.2, 0.5, 0.8])[:, None, None]
    out = blend_face(frame, flat, region)
    expected = np.array([51, 128, 204])  # 0.5 * 255 = 127.5 rounds up: rounding, not truncation
    assert np.abs(out[full].astype(int) - expected).max() <= 1

    generated = random_generated(2)
    out = blend_face(frame, generated, region)
    face = np.clip(generated_to_region(generated, region.width, region.height), 0, 255)
    inner = out[region.y1 : region.y2, region.x1 : region.x2][alpha == 1.0].astype(np.float32)
    assert np.abs(inner - face[alpha == 1.0]).max() <= 1.0


def test_blend_mixes_smoothly_across_the_edge():
    # A black frame and a white face: along a column through the mouth, the output rises in
    # small steps, with no jump anywhere near the size of a hard paste.
    frame = np.zeros((480, 640, 3), np.uint8)
    region = CropRegion(200, 100, 400, 300)
    out = blend_face(frame, np.ones((3, 96, 96), np.float32), region)
    column = out[:, 300, 0].astype(int)
    row = out[int(100 + 0.75 * 200), :, 0].astype(int)
    assert column.max() == 255 and row.max() == 255
    assert np.abs(np.diff(column)).max() <= 26 and np.abs(np.diff(row)).max() <= 26


@pytest.mark.parametrize(
    "region",
    [CropRegion(0, 0, 180, 200), CropRegion(460, 280, 640, 480), CropRegion(0, 300, 640, 480), CropRegion(5, 5, 9, 9)],
    ids=["top-left", "bottom-right", "full-width", "tiny"],
)
def test_blend_at_frame_borders(region):
    frame = noise_frame()
    out = blend_face(frame, random_generated(3), region)
    support = support_in_frame(frame.shape, region)
    assert np.array_equal(out[~support], frame[~support])
    assert out.shape == frame.shape


def test_blend_rejects_bad_inputs():
    frame = noise_frame()
    with pytest.raises(ValueError, match="does not fit"):
        blend_face(frame, random_generated(), CropRegion(600, 400, 700, 500))
    with pytest.raises(ValueError, match=r"\(3, 96, 96\)"):
        blend_face(frame, np.zeros((96, 96, 3), np.float32), CropRegion(0, 0, 100, 100))
    with pytest.raises(ValueError, match="uint8"):
        blend_face(frame.astype(np.float32), random_generated(), CropRegion(0, 0, 100, 100))
