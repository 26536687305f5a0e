"""A person's recording -> checked speech and a face track on every 25 fps frame, cached, plus the training
crops: the first part of the recording for fine-tuning, its end held out for validation.

Everything that can make a recording unusable is found here, before any training: unreadable, too
short, no audio, no speech, no face, several faces. The cache (track.npz and the crops) is keyed
by the file's size, modification time and a hash of its first megabyte, so a rerun or a resumed
enrolment of the same file skips this pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm.auto import tqdm

from lipsync.client.audio import AudioError, decode_audio
from lipsync.client.contract import SAMPLE_RATE
from lipsync.client.face_crop import crop_face, pad_box
from lipsync.client.face_tracking import FaceBox, FaceTracker, MediaPipeFaceDetector, TrackerConfig
from lipsync.training.data.preprocess import frames_at_fps, write_wav
from lipsync.training.enroll.config import MAX_SECONDS, MIN_SECONDS

logger = logging.getLogger(__name__)

FPS = 25
PADS = (0, 10, 0, 0)  # the offline command's default, so the crops are the ones inference sees
MIN_FACE_SHARE = 0.6  # of frames with a face, below which the recording is refused
MAX_MULTI_FACE_SHARE = 0.5  # of sampled frames showing a second face of comparable size
SECOND_FACE_AREA = 0.3  # a second face counts when its box has this share of the main face's area
MULTI_FACE_SAMPLE_EVERY = 10  # frames between second-face checks (a full-frame detection each)
SPEECH_DBFS = -40.0  # a 40 ms frame louder than this counts as speech
MIN_SPEECH_SHARE = 0.15
PERSON = "person"  # the corpus group of the clips
SPLITS = ("train", "val")


class EnrollError(ValueError):
    """The recording (or the avatar folder) cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Track:
    """What the tracking pass found, saved as track.npz (+ the JSON fields in it)."""

    fingerprint: str
    frames: int  # 25 fps frames of the recording (after the 10-minute cap)
    width: int
    height: int
    source_fps: float
    faces: int
    multi_face_share: float
    speech_share: float
    val_start: int  # first held-out frame
    seconds: float

    @property
    def face_share(self) -> float:
        return self.faces / max(self.frames, 1)


def fingerprint(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
    return f"{stat.st_size}-{int(stat.st_mtime)}-{digest.hexdigest()[:16]}"


def probe(path: Path) -> tuple[int, int, float, float]:
    """(width, height, fps, seconds) of the video stream, or EnrollError naming the problem."""
    if not path.is_file():
        raise EnrollError(f"recording not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise EnrollError(f"{path} has no video stream: enrolment needs a recording of the person's face")
            if not container.streams.audio:
                raise EnrollError(f"{path} has no audio track: enrolment needs the person's speech with the video")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or FPS)
            seconds = float(container.duration / av.time_base) if container.duration else 0.0
            if not seconds and stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.FFmpegError as exc:
        raise EnrollError(f"cannot read {path} as a video: {exc}") from exc
    if not width or not height:
        raise EnrollError(f"{path}: the video stream has no frame size")
    return width, height, rate, seconds


def speech_share(wav: np.ndarray) -> float:
    """Share of 40 ms frames louder than SPEECH_DBFS."""
    n = len(wav) // (SAMPLE_RATE // FPS)
    if n == 0:
        return 0.0
    frames = wav[: n * (SAMPLE_RATE // FPS)].reshape(n, -1).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return float(np.mean(20 * np.log10(np.maximum(rms, 1e-6)) > SPEECH_DBFS))


def load_speech(path: Path) -> np.ndarray:
    try:
        decoded = decode_audio(path)
    except AudioError as exc:
        raise EnrollError(str(exc)) from exc
    if decoded.corrupt_packets:
        logger.warning("%s: %d corrupt audio packets concealed with silence", path, decoded.corrupt_packets)
    return decoded.samples


def count_comparable_faces(detector: MediaPipeFaceDetector, frame: np.ndarray) -> int:
    boxes = detector.detect_all(frame)
    if not boxes:
        return 0
    main = max(b.area for b in boxes)
    return sum(1 for b in boxes if b.area >= SECOND_FACE_AREA * main)


def val_start_frame(frames: int, share: float, max_seconds: float) -> int:
    """First held-out frame: the last `share` of the recording, at least 1.2 s and at most `max_seconds`."""
    held = int(round(min(max(share * frames, 1.2 * FPS), max_seconds * FPS)))
    return max(frames - held, 1)


def track_recording(
    video: Path, work: Path, *, val_share: float, max_val_seconds: float, progress: bool = True
) -> Track:
    """Check the recording, track the face on every frame and write the crops; reuse a matching cache."""
    cached = load_track(work)
    key = fingerprint(video) if video.is_file() else ""
    done = all((work / "corpus" / PERSON / s / "audio.wav").is_file() for s in SPLITS)
    if cached is not None and cached.fingerprint == key and done:
        logger.info("face track of %s found in the cache (%d frames)", video, cached.frames)
        return cached

    width, height, source_fps, declared = probe(video)
    wav = load_speech(video)
    seconds = len(wav) / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise EnrollError(f"{video} has {seconds:.1f} s of audio: enrolment needs at least {MIN_SECONDS:g} s of speech")
    if seconds > MAX_SECONDS:
        logger.warning("%s is %.0f s long: only its first %.0f s are used", video, seconds, MAX_SECONDS)
        wav = wav[: int(MAX_SECONDS * SAMPLE_RATE)]
        seconds = MAX_SECONDS
    share = speech_share(wav)
    if share < MIN_SPEECH_SHARE:
        raise EnrollError(
            f"{video}: no speech found (only {100 * share:.0f} % of the recording is louder than {SPEECH_DBFS:g} dBFS; "
            f"at least {100 * MIN_SPEECH_SHARE:.0f} % is needed): record the person speaking"
        )

    corpus = work / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    n_frames = int(round(seconds * FPS))
    boxes = np.full((n_frames, 4), np.nan, np.float32)
    every = corpus / PERSON / "all"  # crops by frame number; split once the decoded length is known
    every.mkdir(parents=True, exist_ok=True)
    multi = sampled = faces = 0
    detector = MediaPipeFaceDetector()
    tracker = FaceTracker(detector, TrackerConfig(detect_every=1, max_missed=0, smoothing=0.8, fps=FPS))
    bar = tqdm(total=n_frames, unit="frame", desc="track face", disable=not progress, dynamic_ncols=True)
    last = -1
    try:
        for k, image in frames_at_fps(video):
            if k >= n_frames:
                break
            last = k
            bar.update(1)
            if k % MULTI_FACE_SAMPLE_EVERY == 0:
                sampled += 1
                multi += count_comparable_faces(detector, image) >= 2
            box = tracker.update(image, timestamp_s=k / FPS)
            if box is None:
                continue
            try:
                crop = crop_face(image, pad_box(box, image.shape, PADS))
            except ValueError:
                continue
            cv2.imwrite(str(every / f"{k}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
            boxes[k] = (box.x1, box.y1, box.x2, box.y2)
            faces += 1
    except av.FFmpegError as exc:
        logger.warning("decoding %s stopped at frame %d: %s", video, last + 1, exc)
    finally:
        bar.close()
        tracker.close()
        detector.close()
    decoded = last + 1
    if decoded < n_frames:
        logger.warning("%s: %d of %d frames decoded; the rest of the audio is not used", video, decoded, n_frames)
        n_frames, boxes = decoded, boxes[:decoded]
        if n_frames < MIN_SECONDS * FPS:
            raise EnrollError(f"{video}: only {n_frames} video frames decode; enrolment needs {MIN_SECONDS:g} s")
    val_start = val_start_frame(n_frames, val_share, max_val_seconds)
    dirs = {s: corpus / PERSON / s for s in SPLITS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for path in every.glob("*.jpg"):
        k = int(path.stem)
        path.rename(dirs["train"] / path.name if k < val_start else dirs["val"] / f"{k - val_start}.jpg")
    every.rmdir()
    multi_share = multi / max(sampled, 1)
    track = Track(key, n_frames, width, height, source_fps, faces, multi_share, share, val_start, n_frames / FPS)
    if track.face_share < MIN_FACE_SHARE:
        raise EnrollError(
            f"{video}: a face was found on {100 * track.face_share:.0f} % of the frames; enrolment needs one face "
            f"on at least {100 * MIN_FACE_SHARE:.0f} % (frontal, lit, not cut off by the frame edge)"
        )
    if multi_share > MAX_MULTI_FACE_SHARE:
        raise EnrollError(
            f"{video}: {100 * multi_share:.0f} % of the checked frames show more than one face; enrolment needs a "
            "recording of one person: crop it to that person first"
        )
    val_faces = int(np.isfinite(boxes[val_start:, 0]).sum())
    if val_faces < 16 or faces - val_faces < 16:
        raise EnrollError(
            f"{video}: too few frames with a face to train ({faces - val_faces}) and validate ({val_faces})"
        )
    samples_per_frame = SAMPLE_RATE // FPS
    write_wav(dirs["train"] / "audio.wav", wav[: val_start * samples_per_frame])
    write_wav(dirs["val"] / "audio.wav", wav[val_start * samples_per_frame : n_frames * samples_per_frame])
    lists = corpus / "filelists"
    lists.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("val", "val"), ("test", "val")):
        (lists / f"{split}.txt").write_text(f"{PERSON}/{name}\n")
    save_track(work, track, boxes)
    if declared and abs(declared - n_frames / FPS) > 1.0:
        logger.warning("%s declares %.1f s but %.1f s decoded", video, declared, n_frames / FPS)
    return track


def save_track(work: Path, track: Track, boxes: np.ndarray) -> Path:
    path = work / "track.npz"
    tmp = work / "track.tmp.npz"
    np.savez(tmp, boxes=boxes, info=np.array(json.dumps(asdict(track))))
    tmp.replace(path)
    return path


def load_track(work: Path) -> Track | None:
    path = work / "track.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return Track(**json.loads(str(data["info"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_boxes(path: Path) -> list[FaceBox | None]:
    with np.load(path) as data:
        boxes = data["boxes"]
    return [None if not np.isfinite(b[0]) else FaceBox(*map(float, b)) for b in boxes]
