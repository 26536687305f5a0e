"""The mouth-only paste: face-mesh landmarks on a real face, the mask they give, and what changes in the frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from lipsync.client import face_landmarks as fl
from lipsync.client.blend import blend_face, blend_mouth, match_colour
from lipsync.client.compositing import Compositor
from lipsync.client.face_crop import CropRegion, crop_face, pad_box
from lipsync.client.face_tracking import MediaPipeFaceDetector
from lipsync.client.mouth_mask import DEFAULT_SHAPE, GENERATED_TOP, MouthShape, mouth_alpha, skin_ring

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, CropRegion, np.ndarray]:
    """A real face (public-domain portrait from scikit-image), its crop region and its landmarks."""
    frame = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    with MediaPipeFaceDetector() as detector:
        box = detector.detect(frame)
    assert box is not None
    region = pad_box(box, frame.shape)
    with fl.FaceLandmarker(video=False) as landmarker:
        landmarks = landmarker.locate(frame, region)
    assert landmarks is not None, "the bundled face mesh finds the astronaut's face"
    return frame, region, landmarks


def frame_alpha(frame: np.ndarray, region: CropRegion, shape: MouthShape) -> np.ndarray:
    alpha = np.zeros(frame.shape[:2], np.float32)
    alpha[region.y1 : region.y2, region.x1 : region.x2] = mouth_alpha(shape, region.height, region.width)
    return alpha


def random_generated(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((3, 96, 96), dtype=np.float32)


def test_landmarks_sit_on_the_astronauts_mouth(astronaut) -> None:
    frame, region, landmarks = astronaut
    assert landmarks.shape == (fl.NUM_LANDMARKS, 2)
    left, right = landmarks[fl.MOUTH_LEFT], landmarks[fl.MOUTH_RIGHT]
    # Where the smiling mouth of the 512x512 portrait is (checked on a drawing of the mesh): x 201-246, y 139-142.
    assert 195 < left[0] < 210 and 238 < right[0] < 252
    assert 132 < left[1] < 148 and 132 < right[1] < 148
    assert landmarks[fl.SUBNASALE, 1] < landmarks[fl.UPPER_LIP_TOP, 1] < landmarks[fl.CHIN, 1]
    assert 0.0 <= fl.lip_opening(landmarks) < 0.5


def test_mask_covers_lips_and_chin_and_never_the_eyes_nose_or_cheeks(astronaut) -> None:
    frame, region, landmarks = astronaut
    shape = MouthShape.from_face_landmarks(landmarks, region)
    alpha = frame_alpha(frame, region, shape)

    def at(index: int) -> float:
        x, y = landmarks[index]
        return float(alpha[int(round(y)), int(round(x))])

    # A smile leaves 8 px between nose and lip here; the fade is almost over by the upper lip.
    assert at(fl.UPPER_LIP_INNER) > 0.9 and at(fl.LOWER_LIP_INNER) == 1.0, "the mouth itself is generated"
    assert at(fl.CHIN) > 0.0, "the moving chin is inside the support"
    for eye_or_nose in (33, 263, 1, 4):  # eye corners, nose tip
        assert at(eye_or_nose) == 0.0
    for cheek in (50, 280, 234, 454):  # cheekbones and the face's outer edge
        assert at(cheek) == 0.0
    ys, xs = np.nonzero(alpha)
    assert ys.min() >= region.y1 + GENERATED_TOP * region.height - 1, "never above the generator's half"
    # Smaller than the lower-face paste even with room for a dropping jaw (measured: 0.81 of it here).
    lower_face = blend_face(frame, random_generated(), region) != frame
    assert (alpha > 0).sum() < 0.9 * lower_face.any(axis=2).sum()


def test_blend_mouth_changes_nothing_outside_its_support_and_the_mouth_inside(astronaut) -> None:
    frame, region, landmarks = astronaut
    shape = MouthShape.from_face_landmarks(landmarks, region)
    alpha = frame_alpha(frame, region, shape)
    before = frame.copy()
    for colour_match in (True, False):
        out = blend_mouth(frame, random_generated(1), region, shape, colour_match=colour_match)
        np.testing.assert_array_equal(frame, before)  # the input is not modified
        changed = (out != frame).any(axis=2)
        assert not changed[alpha == 0].any(), "a pixel outside the mouth mask changed"
        assert changed[alpha == 1].mean() > 0.9, "random noise pasted where alpha is 1 shows up"


def test_colour_match_brings_a_tinted_face_back_to_the_skin_around_it(astronaut) -> None:
    frame, region, landmarks = astronaut
    shape = MouthShape.from_face_landmarks(landmarks, region)
    # The generated face is the real crop with the purple cast the shipped model gives real faces.
    crop = cv2.resize(crop_face(frame, region), (96, 96), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    tinted = np.clip(crop * np.array([1.15, 0.8, 1.05], np.float32) + 0.05, 0, 1).transpose(2, 0, 1)
    ring = skin_ring(shape, region.height, region.width)
    inside = mouth_alpha(shape, region.height, region.width) > 0
    assert ring.any() and (ring & ~inside).any() and (ring & inside).any(), "the ring straddles the support's edge"

    def skin_delta_e(out: np.ndarray) -> float:
        def sub(image: np.ndarray) -> np.ndarray:
            crop = image[region.y1 : region.y2, region.x1 : region.x2].astype(np.float32) / 255.0
            return cv2.cvtColor(crop, cv2.COLOR_BGR2Lab)

        band = mouth_alpha(shape, region.height, region.width) > 0.5  # where the pasted face dominates
        return float(np.linalg.norm(sub(out)[band] - sub(frame)[band], axis=1).mean())

    raw = skin_delta_e(blend_mouth(frame, tinted, region, shape, colour_match=False))
    matched = skin_delta_e(blend_mouth(frame, tinted, region, shape, colour_match=True))
    assert raw > 8.0, f"the tint is visible without matching (dE {raw:.1f})"
    # What is left is the 96x96 round trip's blur of lips and teeth (about 4 here), not colour.
    assert matched < 6.0 and matched < raw / 5, f"matched dE {matched:.1f} vs raw {raw:.1f}"


def test_colour_match_leaves_colours_alone_when_there_is_no_ring() -> None:
    generated = np.full((10, 10, 3), 80.0, np.float32)
    np.testing.assert_array_equal(
        match_colour(generated, np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), bool)), generated
    )


def test_shape_is_relative_to_the_region_so_it_follows_the_face(astronaut) -> None:
    frame, region, landmarks = astronaut
    shape = MouthShape.from_face_landmarks(landmarks, region)
    moved = CropRegion(region.x1 + 7, region.y1 + 5, region.x2 + 7, region.y2 + 5)
    again = MouthShape.from_face_landmarks(landmarks + np.array([7, 5], np.float32), moved)
    np.testing.assert_allclose(np.array(again.polygon), np.array(shape.polygon), atol=1e-5)


def test_compositor_measures_every_n_frames_and_falls_back_without_a_face(astronaut) -> None:
    frame, region, _ = astronaut
    with Compositor("mouth", landmark_every=3) as compositor:
        for _ in range(7):
            compositor.compose(frame, random_generated(), region)
        assert compositor.stats.frames == 7 and compositor.stats.landmark_runs == 3  # frames 0, 3 and 6
        assert compositor.stats.default_shape_frames == 0
    grey = np.full((480, 640, 3), 120, np.uint8)
    grey_region = CropRegion(200, 100, 400, 320)
    with Compositor("mouth") as compositor:
        out = compositor.compose(grey, random_generated(), grey_region)
        assert compositor.stats.landmark_misses == 1 and compositor.stats.default_shape_frames == 1
        alpha = frame_alpha(grey, grey_region, DEFAULT_SHAPE)
        assert not (out != grey).any(axis=2)[alpha == 0].any()
        assert (out != grey).any(axis=2)[alpha == 1].mean() > 0.9


def test_lower_face_mode_is_the_earlier_paste(astronaut) -> None:
    frame, region, _ = astronaut
    generated = random_generated(2)
    with Compositor("lower_face") as compositor:
        np.testing.assert_array_equal(
            compositor.compose(frame, generated, region), blend_face(frame, generated, region)
        )
    with pytest.raises(ValueError, match="blend mode"):
        Compositor("whole_face")


def test_bad_landmarks_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="landmarks"):
        MouthShape.from_face_landmarks(np.zeros((10, 2), np.float32), CropRegion(0, 0, 10, 10))
    with pytest.raises(ValueError, match="corners"):
        MouthShape.from_face_landmarks(np.zeros((fl.NUM_LANDMARKS, 2), np.float32), CropRegion(0, 0, 10, 10))
