"""Offline face detection and tracking for live video: BlazeFace every N frames, optical flow in between.

Nothing is downloaded: mediapipe 0.10.21 ships the BlazeFace graphs and .tflite files inside the
wheel. A frame without a face gives None (the caller passes it through); it never raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in frame pixels (x2, y2 exclusive) with the detector's confidence."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def as_int(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) rounded to the nearest pixel, halves up (the original truncated, biasing boxes up-left)."""
        return tuple(math.floor(v + 0.5) for v in (self.x1, self.y1, self.x2, self.y2))  # type: ignore[return-value]

    def clipped(self, w: int, h: int) -> FaceBox:
        """This box limited to a w x h frame; may be empty (zero width or height) if it lies outside."""
        x1 = min(max(self.x1, 0.0), float(w))
        y1 = min(max(self.y1, 0.0), float(h))
        x2 = min(max(self.x2, x1), float(w))
        y2 = min(max(self.y2, y1), float(h))
        return FaceBox(x1, y1, x2, y2, self.score)

    def iou(self, other: FaceBox) -> float:
        """Intersection over union with another box (0 when either is empty)."""
        iw = min(self.x2, other.x2) - max(self.x1, other.x1)
        ih = min(self.y2, other.y2) - max(self.y1, other.y1)
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        return inter / (self.area + other.area - inter)

    @classmethod
    def from_center(cls, cx: float, cy: float, w: float, h: float, score: float = 1.0) -> FaceBox:
        return cls(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0, score)


class FaceDetector:
    """Finds the face to lip-sync in one BGR frame; subclasses implement `detect`."""

    #: False for detectors whose answer costs nothing and never moves (a fixed box): the tracker
    #: then asks them on every frame instead of following the face with optical flow.
    follow_between_detections: bool = True

    def detect(self, frame_bgr: np.ndarray) -> FaceBox | None:
        """The largest face in the frame (the speaker), or None."""
        raise NotImplementedError

    def detect_near(self, frame_bgr: np.ndarray, prior: FaceBox) -> FaceBox | None:
        """The face near prior (where the tracker expects it), falling back to the whole frame."""
        return self.detect(frame_bgr)

    def close(self) -> None:
        """Release the detector's graphs or sessions."""

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FixedBoxDetector(FaceDetector):
    """Always answers the same box: the `--box y1 y2 x1 x2` option (the original's order)."""

    follow_between_detections = False

    def __init__(self, box: tuple[int, int, int, int] | FaceBox):
        if isinstance(box, FaceBox):
            face = box
        else:
            if len(box) != 4:
                raise ValueError(f"box must be (y1, y2, x1, x2), got {box!r}")
            y1, y2, x1, x2 = (float(v) for v in box)
            face = FaceBox(x1, y1, x2, y2)
        if face.x1 < 0 or face.y1 < 0 or face.width <= 0 or face.height <= 0:
            raise ValueError(f"box must have 0 <= y1 < y2 and 0 <= x1 < x2, got {face}")
        self.box = face

    def detect(self, frame_bgr: np.ndarray) -> FaceBox | None:
        height, width = frame_bgr.shape[:2]
        if self.box.x1 >= width or self.box.y1 >= height:
            return None
        return self.box.clipped(width, height)


# Short range (model 0) misses faces under about 20 % of a 640x480 frame's height and, on a
# busy background, finds faces that are not there; full range (model 1) finds faces from 12 %
# to 70 % but costs 2.8x as much and its boxes sit higher (the chin falls outside them).
# The default therefore uses both: full range finds the face in the whole frame, short range
# then places the box on a crop around it, where the face fills 40 % of the input and short
# range is at its best. While tracking, only short range runs, on a crop around the track.
# Measured on this project's synthetic clips; see benchmarks/face_tracker.py.
SHORT_RANGE = 0
FULL_RANGE = 1
_ROI_SCALE = 2.5  # crop side for the short-range pass, in face sizes


class MediaPipeFaceDetector(FaceDetector):
    """mediapipe's bundled BlazeFace (offline: the .tflite files ship inside the wheel).

    model_selection: None (default) = full range to find, short range to place the box;
    0 = short range only; 1 = full range only.
    """

    def __init__(self, model_selection: int | None = None, min_score: float = 0.5):
        if model_selection not in (None, SHORT_RANGE, FULL_RANGE):
            raise ValueError(f"model_selection must be None, 0 or 1, got {model_selection!r}")
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must be in (0, 1), got {min_score}")
        # Imported here so that a program using only FixedBoxDetector never loads mediapipe.
        from mediapipe.python.solutions import face_detection

        self.model_selection = model_selection
        self.min_score = min_score
        self._graphs = {}
        for model in (SHORT_RANGE, FULL_RANGE) if model_selection is None else (model_selection,):
            self._graphs[model] = face_detection.FaceDetection(
                min_detection_confidence=min_score, model_selection=model
            )
        self._finder = self._graphs[FULL_RANGE if model_selection is None else model_selection]
        self._placer = self._graphs[SHORT_RANGE if model_selection is None else model_selection]

    def _run(self, graph, frame_bgr: np.ndarray, x0: int = 0, y0: int = 0) -> list[FaceBox]:
        import cv2

        height, width = frame_bgr.shape[:2]
        result = graph.process(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        boxes = []
        for detection in result.detections or ():
            rel = detection.location_data.relative_bounding_box
            score = float(detection.score[0])
            if score < self.min_score:
                continue
            x1, y1 = x0 + rel.xmin * width, y0 + rel.ymin * height
            boxes.append(FaceBox(x1, y1, x1 + rel.width * width, y1 + rel.height * height, score))
        return boxes

    def _in_roi(self, graph, frame_bgr: np.ndarray, around: FaceBox) -> list[FaceBox]:
        height, width = frame_bgr.shape[:2]
        cx, cy = around.center
        half = 0.5 * _ROI_SCALE * max(around.width, around.height)
        x1, y1 = max(0, int(cx - half)), max(0, int(cy - half))
        x2, y2 = min(width, int(math.ceil(cx + half))), min(height, int(math.ceil(cy + half)))
        if x2 - x1 < 16 or y2 - y1 < 16:
            return []
        return self._run(graph, frame_bgr[y1:y2, x1:x2], x1, y1)

    def detect_all(self, frame_bgr: np.ndarray) -> list[FaceBox]:
        """Every face the full-frame detector finds (enrolment uses it to refuse recordings of several people)."""
        _check_frame(frame_bgr)
        return self._run(self._finder, frame_bgr)

    def detect(self, frame_bgr: np.ndarray) -> FaceBox | None:
        _check_frame(frame_bgr)
        found = _largest(self._run(self._finder, frame_bgr))
        if found is None or self._placer is self._finder:
            return found
        placed = _best_overlap(self._in_roi(self._placer, frame_bgr, found), found)
        return placed if placed is not None else found

    def detect_near(self, frame_bgr: np.ndarray, prior: FaceBox) -> FaceBox | None:
        _check_frame(frame_bgr)
        near = _best_overlap(self._in_roi(self._placer, frame_bgr, prior), prior)
        return near if near is not None else self.detect(frame_bgr)

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()


def _largest(boxes: list[FaceBox]) -> FaceBox | None:
    return max(boxes, key=lambda b: (b.area, b.score), default=None)


def _best_overlap(boxes: list[FaceBox], prior: FaceBox) -> FaceBox | None:
    best = max(boxes, key=prior.iou, default=None)
    return best if best is not None and prior.iou(best) > 0.05 else None


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(f"expected a (H, W, 3) uint8 BGR frame, got shape {shape} dtype {dtype}")


class _FlowFollower:
    """Moves a box from frame to frame with pyramidal Lucas-Kanade flow of corners on the face.

    About 1 ms of CPU per 640x480 frame (a short-range detection near the track: about 2.5 ms;
    benchmarks/face_tracker.py): grey conversion at a power-of-two scale where the face is about
    80 px tall, forward and backward flow of up to 24 corners, and a RANSAC similarity transform,
    so a talking mouth (points that move on their own) does not drag the box. Returns None when
    too few points survive; the tracker then detects.
    """

    FACE_PX = 80.0  # face height in the working image (within a factor of 1.4 of it)
    MAX_POINTS = 24  # LK's cost is mostly per point; 24 leave enough after the checks
    MIN_POINTS = 8
    FB_MAX_ERROR = 0.7  # forward-backward disagreement (working pixels) above which a point is dropped
    _LK = {
        "winSize": (11, 11),
        "maxLevel": 3,
        "criteria": (3, 10, 0.03),  # cv2.TERM_CRITERIA_EPS | COUNT, 10 iterations, 0.03 px
    }

    def __init__(self) -> None:
        self._gray: np.ndarray | None = None
        self._points: np.ndarray | None = None
        self._scale = 1.0
        self._box: FaceBox | None = None

    def _grey(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if self._scale < 1.0:
            size = (max(1, round(gray.shape[1] * self._scale)), max(1, round(gray.shape[0] * self._scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return gray

    def start(self, frame: np.ndarray, box: FaceBox) -> None:
        import cv2

        # A power-of-two scale: INTER_AREA by an integer factor is 50x faster than by 1.75.
        self._scale = 0.5 ** max(0, round(math.log2(max(box.height, 1.0) / self.FACE_PX)))
        self._gray = self._grey(frame)
        self._box = box
        s = self._scale
        # Corners from the inner face only: the box's sides carry background and hair.
        h, w = self._gray.shape
        x1, x2 = max(0, int((box.x1 + 0.15 * box.width) * s)), min(w, int((box.x2 - 0.15 * box.width) * s))
        y1, y2 = max(0, int((box.y1 + 0.1 * box.height) * s)), min(h, int((box.y2 - 0.1 * box.height) * s))
        self._points = None
        if x2 - x1 >= 8 and y2 - y1 >= 8:
            pts = cv2.goodFeaturesToTrack(self._gray[y1:y2, x1:x2], self.MAX_POINTS, 0.01, 3)
            if pts is not None and len(pts) >= self.MIN_POINTS:
                self._points = (pts.reshape(-1, 2) + np.float32([x1, y1])).reshape(-1, 1, 2)

    def follow(self, frame: np.ndarray) -> FaceBox | None:
        import cv2

        if self._points is None or self._gray is None or self._box is None:
            return None
        gray = self._grey(frame)
        if gray.shape != self._gray.shape:
            self._points = None
            return None
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, self._points, None, **self._LK)
        back, st_back, _ = cv2.calcOpticalFlowPyrLK(gray, self._gray, nxt, None, **self._LK)
        fb = np.linalg.norm((back - self._points).reshape(-1, 2), axis=1)
        good = (st.ravel() == 1) & (st_back.ravel() == 1) & (fb < self.FB_MAX_ERROR)
        self._gray = gray
        if int(good.sum()) < self.MIN_POINTS:
            self._points = None
            return None
        src, dst = self._points.reshape(-1, 2)[good], nxt.reshape(-1, 2)[good]
        affine, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0)
        if affine is None or int(inliers.sum()) < self.MIN_POINTS:
            self._points = None
            return None
        zoom = float(math.hypot(affine[0, 0], affine[1, 0]))
        if not 0.8 < zoom < 1.25:  # a face does not change size by 25 % in one frame
            self._points = None
            return None
        s = self._scale
        cx, cy = self._box.center
        nx, ny = affine @ np.array([cx * s, cy * s, 1.0])
        self._box = FaceBox.from_center(
            nx / s, ny / s, self._box.width * zoom, self._box.height * zoom, self._box.score
        )
        self._points = dst[inliers.ravel() == 1].reshape(-1, 1, 2)
        return self._box


class _OneEuroBox:
    """One-Euro filter (Casiez et al., CHI 2012) on a box's centre and size.

    The cutoff frequency rises with speed: a still face is smoothed hard (no jitter), a moving one
    hardly at all (no lag). Speeds are measured in face heights per second, so the same settings
    hold for every face size and resolution. Causal: unlike the original's mean of the next five
    boxes, it never needs future frames.
    """

    D_CUTOFF = 4.0  # Hz, for the speed estimate: quick enough to open the filter within 2-3 frames

    def __init__(self, min_cutoff: float, beta: float) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self._x: np.ndarray | None = None
        self._dx = np.zeros(4)
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self._x = None

    def __call__(self, box: FaceBox, t: float) -> FaceBox:
        cx, cy = box.center
        x = np.array([cx, cy, box.width, box.height])
        if self._x is None or t <= self._t:
            self._x, self._dx, self._t = x, np.zeros(4), t
            return box
        dt = t - self._t
        dx = (x - self._x) / dt
        self._dx = self._dx + self._alpha(self.D_CUTOFF, dt) * (dx - self._dx)
        speed = np.abs(self._dx) / max(self._x[3], 1.0)
        self._x = self._x + self._alpha(self.min_cutoff + self.beta * speed, dt) * (x - self._x)
        self._t = t
        return FaceBox.from_center(*self._x, score=box.score)


@dataclass(frozen=True)
class TrackerConfig:
    """How often to detect and how hard to smooth.

    detect_every: run the detector on every Nth frame and follow the face with optical flow in
        between (1 = detect on every frame). It also runs whenever the flow loses the face.
    smoothing: in [0, 1); 0 switches smoothing off. For a still face, the share of the previous
        box kept on each frame at `fps` (One-Euro filter with min cutoff = (1-s)/(s * 2 pi) * fps).
        It fades as the face moves, at a rate set by beta.
    beta: how fast the smoothing lets go with speed, per (face height per second).
    min_score: detections below this confidence are ignored (also the default detector's threshold).
    max_missed: consecutive frames the detector may miss the face before update() returns None;
        until then the last box (moved by optical flow where it can) stands in.
    fps: the frame rate assumed when update() gets no timestamp.
    """

    detect_every: int = 5
    smoothing: float = 0.8
    beta: float = 4.0
    min_score: float = 0.5
    max_missed: int = 2
    fps: float = 25.0

    def __post_init__(self) -> None:
        if not isinstance(self.detect_every, int) or self.detect_every < 1:
            raise ValueError(f"detect_every must be an integer >= 1, got {self.detect_every!r}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing!r}")
        if not self.beta >= 0.0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")
        if not 0.0 < self.min_score < 1.0:
            raise ValueError(f"min_score must be in (0, 1), got {self.min_score!r}")
        if not isinstance(self.max_missed, int) or self.max_missed < 0:
            raise ValueError(f"max_missed must be an integer >= 0, got {self.max_missed!r}")
        if not self.fps > 0.0:
            raise ValueError(f"fps must be > 0, got {self.fps!r}")

    @property
    def min_cutoff_hz(self) -> float:
        """The One-Euro filter's cutoff for a still face (infinite when smoothing is off)."""
        if self.smoothing == 0.0:
            return math.inf
        return (1.0 - self.smoothing) / (self.smoothing * 2.0 * math.pi) * self.fps


@dataclass(frozen=True)
class TrackerStats:
    """Counts since the last reset: frames seen, detector runs, frames followed by optical flow,
    frames that returned a held box after a miss, frames that returned None, and tracks lost."""

    frames: int = 0
    detections: int = 0
    tracked: int = 0
    held: int = 0
    no_face: int = 0
    lost: int = 0


class FaceTracker:
    """Detect every N frames, follow with optical flow in between, smooth with a One-Euro filter.

    update() returns the face box for a frame, or None when there is no face: the caller then
    passes the frame through unchanged. A frame never raises for want of a face.
    Not thread-safe: one tracker per video stream.
    """

    def __init__(self, detector: FaceDetector | None = None, config: TrackerConfig = TrackerConfig()):
        self.config = config
        self._owns_detector = detector is None
        self.detector = detector if detector is not None else MediaPipeFaceDetector(min_score=config.min_score)
        self._flow = _FlowFollower()
        self._filter = _OneEuroBox(config.min_cutoff_hz, config.beta) if config.smoothing > 0 else None
        self.reset()

    def reset(self) -> None:
        """Forget the face and zero the counters (a new clip or a new stream)."""
        self._raw: FaceBox | None = None  # last unsmoothed box: where detection and flow start from
        self._out: FaceBox | None = None  # last box returned
        self._since_detect = 0
        self._missed = 0
        self._shape: tuple[int, ...] | None = None
        self._counts = dict.fromkeys(("frames", "detections", "tracked", "held", "no_face", "lost"), 0)
        if self._filter is not None:
            self._filter.reset()

    @property
    def stats(self) -> TrackerStats:
        return TrackerStats(**self._counts)

    def _detect(self, frame: np.ndarray) -> FaceBox | None:
        self._counts["detections"] += 1
        if self._raw is None:
            box = self.detector.detect(frame)
        else:
            box = self.detector.detect_near(frame, self._raw)
        if box is None or box.score < self.config.min_score or box.width <= 0 or box.height <= 0:
            return None
        return box

    def update(self, frame_bgr: np.ndarray, timestamp_s: float | None = None) -> FaceBox | None:
        """The smoothed face box in this frame, or None (no face: pass the frame through)."""
        _check_frame(frame_bgr)
        counts = self._counts
        counts["frames"] += 1
        t = timestamp_s if timestamp_s is not None else counts["frames"] / self.config.fps
        if frame_bgr.shape != self._shape:
            # A new resolution: nothing learnt on the old one applies.
            self._shape = frame_bgr.shape
            self._drop_track()

        follow = self.detector.follow_between_detections
        box = None
        due = self._raw is None or not follow or self._missed > 0 or self._since_detect >= self.config.detect_every
        if not due:
            box = self._flow.follow(frame_bgr)
            self._since_detect += 1
            if box is not None:
                counts["tracked"] += 1
        if box is None:
            box = self._detect(frame_bgr)
            if box is not None:
                self._missed = 0
                self._since_detect = 1
                if follow:
                    self._flow.start(frame_bgr, box)
            elif self._raw is not None:
                self._missed += 1
                if self._missed > self.config.max_missed:
                    counts["lost"] += 1
                    self._drop_track()
                elif follow:
                    # The detector missed (blur, a turned head): let the flow carry the box if it can.
                    box = self._flow.follow(frame_bgr)
        if box is None:
            if self._raw is None:
                counts["no_face"] += 1
                return None
            counts["held"] += 1
            return self._out
        if self._missed > 0:
            counts["held"] += 1
        self._raw = box
        self._out = self._filter(box, t) if self._filter is not None else box
        return self._out

    def _drop_track(self) -> None:
        self._raw = self._out = None
        self._missed = 0
        self._flow = _FlowFollower()
        if self._filter is not None:
            self._filter.reset()

    def close(self) -> None:
        """Close the detector if this tracker created it."""
        if self._owns_detector:
            self.detector.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detect_faces_in_frames(frames: Iterable[np.ndarray], tracker: FaceTracker) -> list[FaceBox | None]:
    """Run the tracker over a clip (offline jobs); None marks frames without a face."""
    return [tracker.update(frame) for frame in frames]
