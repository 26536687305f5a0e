"""`lipsync`: dub a face video or still image with a new audio track (the paper's offline use case).

Frames stream through decode -> track -> crop -> model -> blend -> encode in batches, so memory
stays flat for long videos. The original Wav2Lip inference flags are accepted unchanged. With
`--avatar DIR` (an enrolled person, client/avatar.py) the weights are the avatar's own and the face
defaults to its reference loop.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from lipsync.client import contract
from lipsync.client.audio import AudioError, decode_audio, mel_windows, melspectrogram
from lipsync.client.avatar import Avatar, load_avatar
from lipsync.client.backends import (
    BACKEND_NAMES,
    DEFAULT_ONNX_MODEL,
    DEFAULT_TRITON_URL,
    BackendError,
    LipSyncBackend,
    create_backend,
)
from lipsync.client.blend import BLEND_MODES, DEFAULT_BLEND
from lipsync.client.cli_config import add_dataclass_arguments, config_from_args, write_resolved_config
from lipsync.client.compositing import Compositor
from lipsync.client.face_crop import CropRegion, crop_face, model_face_input, pad_box
from lipsync.client.face_tracking import FaceTracker, FixedBoxDetector, MediaPipeFaceDetector, TrackerConfig
from lipsync.client.stage_timer import StageTimer
from lipsync.client.stream_publish import FilePublisher, PublishError, PublishUrl, StreamSpec, redact_url
from lipsync.client.video_io import (
    FaceSourceInfo,
    MediaError,
    Mp4Writer,
    VideoDecodeCounts,
    iter_face_frames,
    probe_face_source,
    trim_audio_to_video,
)

log = logging.getLogger(__name__)

MAX_STILL_FPS = 120.0  # a still is looped at this rate at most: beyond it the job is only memory and disk
# H.264's largest level (6.2) holds 139,264 macroblocks: 8192x4320. Larger output cannot be encoded.
MAX_OUTPUT_PIXELS = 8192 * 4320
MAX_INPUT_PIXELS = 100_000_000  # one decoded frame of this is 300 MB of BGR before anything else
# Frames held at once (input, output) are bounded by pixels, not count: 128 frames of 1080p.
BATCH_PIXELS = 128 * 1920 * 1080


def frames_per_batch(width: int, height: int, requested: int) -> int:
    """--wav2lip_batch_size, lowered so that one batch of frames this size stays within BATCH_PIXELS."""
    return max(1, min(requested, BATCH_PIXELS // max(width * height, 1)))


def check_frame_size(info: FaceSourceInfo, width: int, height: int) -> None:
    """Refuse sizes that would exhaust memory or that H.264 cannot encode, saying what to pass instead."""
    if info.width * info.height > MAX_INPUT_PIXELS:
        raise LipSyncError(
            f"{info.path} is {info.width}x{info.height} ({info.width * info.height / 1e6:.0f} MP): over the "
            f"{MAX_INPUT_PIXELS / 1e6:.0f} MP this command decodes; scale it down first"
        )
    if width * height > MAX_OUTPUT_PIXELS:
        factor = math.ceil(math.sqrt(width * height / MAX_OUTPUT_PIXELS))
        raise LipSyncError(
            f"output of {width}x{height} is larger than H.264 can encode (8192x4320 at most); "
            f"pass --resize_factor {factor} (or --crop around the face)"
        )


@dataclass(frozen=True)
class LipSyncConfig:
    audio: Path = field(metadata={"help": "speech audio: any file PyAV reads (wav, mp3, m4a, a video's soundtrack)"})
    face: Path | None = field(
        default=None,
        metadata={"help": "face video or still image (optional with --avatar: the avatar's loop.mp4 is used)"},
    )
    avatar: Path | None = field(
        default=None,
        metadata={
            "help": "an enrolled avatar folder (lipsync-train enroll): its own weights, and its loop as the face "
            "when --face is not given; with --backend triton, its own served model"
        },
    )
    checkpoint_path: Path | None = field(
        default=None,
        metadata={"help": "generator weights: .onnx, our .pt, or a released wav2lip(.pth|_gan.pth|-SD-*.pt)"},
    )
    outfile: Path = field(default=Path("results/result_voice.mp4"), metadata={"help": "output MP4"})
    publish: str | None = field(
        default=None,
        metadata={
            "help": "also publish the result live, paced at 1x, to rtmp://HOST[:PORT]/APP/KEY (or rtmps://); the "
            "MP4 is still written. 5 tries to connect at start, then reconnects with back-off (docs/rtmp.md)"
        },
    )
    static: bool = field(default=False, metadata={"help": "use only the first video frame"})
    fps: float = field(default=25.0, metadata={"help": "frame rate for a still-image input"})
    pads: tuple[int, ...] = field(
        default=(0, 10, 0, 0), metadata={"nargs": 4, "help": "padding top bottom left right, in pixels"}
    )
    face_det_batch_size: int = field(
        default=16, metadata={"help": "accepted for compatibility; the tracker works frame by frame"}
    )
    wav2lip_batch_size: int = field(default=128, metadata={"help": "frames per model call"})
    resize_factor: int = field(default=1, metadata={"help": "divide the frame size by this integer first"})
    crop: tuple[int, ...] = field(
        default=(0, -1, 0, -1), metadata={"nargs": 4, "help": "crop top bottom left right after resizing; -1 = edge"}
    )
    box: tuple[int, ...] = field(
        default=(-1, -1, -1, -1), metadata={"nargs": 4, "help": "fixed face box y1 y2 x1 x2; skips detection"}
    )
    rotate: bool = field(default=False, metadata={"help": "rotate frames 90 degrees clockwise first"})
    nosmooth: bool = field(default=False, metadata={"help": "no temporal smoothing of face boxes"})
    backend: str = field(
        default="auto",
        metadata={
            "choices": ("auto", *BACKEND_NAMES),
            "help": "auto: onnxruntime for .onnx weights, pytorch for .pth/.pt; with --avatar, onnxruntime "
            "if the avatar was exported (model.onnx), else pytorch",
        },
    )
    triton_url: str = field(default=DEFAULT_TRITON_URL, metadata={"help": "Triton gRPC address for --backend triton"})
    detect_every: int = field(default=5, metadata={"help": "run the detector every N frames, track in between"})
    blend: str = field(
        default=DEFAULT_BLEND,
        metadata={
            "choices": BLEND_MODES,
            "help": "mouth: only lips, mouth and chin change, colours matched to the face; "
            "lower_face: the whole lower half is pasted (the earlier behaviour)",
        },
    )

    def __post_init__(self) -> None:
        if self.avatar is not None and self.checkpoint_path is not None:
            raise ValueError(
                f"give --avatar or --checkpoint_path, not both: the avatar {self.avatar} brings its own weights"
            )
        if self.publish is not None:
            PublishUrl(self.publish)  # the scheme, host and key checked before any work
        if self.face is None and self.avatar is None:
            raise ValueError("--face is required (a video or photo of the person), unless --avatar is given")
        if not math.isfinite(self.fps) or not 0 < self.fps <= MAX_STILL_FPS:
            raise ValueError(f"--fps must be a frame rate in (0, {MAX_STILL_FPS:g}], got {self.fps}")
        if self.resize_factor < 1:
            raise ValueError(f"--resize_factor must be an integer >= 1, got {self.resize_factor}")
        if self.wav2lip_batch_size < 1:
            raise ValueError(f"--wav2lip_batch_size must be >= 1, got {self.wav2lip_batch_size}")
        for name in ("pads", "crop", "box"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"--{name} takes 4 integers, got {getattr(self, name)}")
        if any(p < 0 for p in self.pads):
            raise ValueError(f"--pads must be non-negative, got {self.pads}")
        if self.uses_fixed_box:
            y1, y2, x1, x2 = self.box
            if y2 <= y1 or x2 <= x1:
                raise ValueError(f"--box must be y1 y2 x1 x2 with y2 > y1 and x2 > x1, got {self.box}")

    @property
    def uses_fixed_box(self) -> bool:
        return self.box[0] != -1


@dataclass
class LipSyncReport:
    outfile: Path
    frames: int = 0
    frames_with_face: int = 0
    frames_without_face: int = 0
    frames_passed_through: int = 0  # the backend failed for these; written unchanged
    frames_default_mouth: int = 0  # blend "mouth" without landmarks: the mask drawn where a mouth usually is
    audio_corrupt_packets: int = 0  # replaced by silence of their length, so sync holds after them
    audio_concealed_seconds: float = 0.0
    mel_offset: int = 0  # the model's audio alignment (contract.lookahead_ms)
    lookahead_ms: float = 200.0
    video_corrupt_packets: int = 0  # each replaced by the frame before it, so the frames after keep their time
    audio_seconds: float = 0.0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    backend: str = ""
    weights: str = ""
    avatar: str = ""  # the enrolled avatar's name, when --avatar was given
    wall_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    summary: str = ""
    publish: dict = field(default_factory=dict)  # --publish: what went out live (client/stream_publish.py)


class LipSyncError(RuntimeError):
    """A user-facing failure of the offline job; printed without a traceback."""


def output_size(info: FaceSourceInfo, config: LipSyncConfig) -> tuple[int, int]:
    """Frame size after --resize_factor, --rotate and --crop, computed before any frame is decoded."""
    width, height = info.width // config.resize_factor, info.height // config.resize_factor
    if config.rotate:
        width, height = height, width
    top, bottom, left, right = config.crop
    bottom = height if bottom == -1 else min(bottom, height)
    right = width if right == -1 else min(right, width)
    if bottom <= top or right <= left:
        raise ValueError(f"--crop {config.crop} leaves no pixels of a {width}x{height} frame")
    return right - left, bottom - top


def transform_frame(frame: np.ndarray, config: LipSyncConfig) -> np.ndarray:
    if config.resize_factor > 1:
        frame = cv2.resize(
            frame, (frame.shape[1] // config.resize_factor, frame.shape[0] // config.resize_factor), cv2.INTER_AREA
        )
    if config.rotate:
        frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    top, bottom, left, right = config.crop
    bottom = frame.shape[0] if bottom == -1 else bottom
    right = frame.shape[1] if right == -1 else right
    return np.ascontiguousarray(frame[top:bottom, left:right])


def choose_backend(config: LipSyncConfig, avatar: Avatar | None = None) -> LipSyncBackend:
    """Resolve --backend auto from the weights file, as a Wav2Lip user passing a .pth would expect.

    An avatar's weights are its own: its exported model.onnx when it has one (auto) or onnxruntime is
    asked for, its checkpoint for pytorch, its own served model (avatar_<name>) for triton.
    """
    if avatar is not None:
        name = config.backend
        if name == "auto":
            name = "onnxruntime" if avatar.onnx.is_file() else "pytorch"
        if name == "triton":
            return create_backend(name, triton_url=config.triton_url, triton_model=avatar.triton_model)
        return create_backend(name, weights=avatar.weights_for(name))
    name, weights = config.backend, config.checkpoint_path
    if name == "auto":
        if weights is None:
            name = "onnxruntime" if DEFAULT_ONNX_MODEL.is_file() else "pytorch"
        else:
            name = "onnxruntime" if weights.suffix == ".onnx" else "pytorch"
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"--checkpoint_path not found: {weights}")
    return create_backend(name, weights=weights, triton_url=config.triton_url)


def describe_weights(backend: LipSyncBackend) -> str:
    """What weights the backend runs, and a plain warning when they were never trained."""
    metadata = getattr(backend, "metadata", None) or {}
    kind = metadata.get("weights", "unknown")
    if kind == "random":
        return "UNTRAINED random weights: the mouth will not follow the speech"
    source = metadata.get("checkpoint") or str(getattr(backend, "model_path", "") or getattr(backend, "checkpoint", ""))
    steps = metadata.get("training_steps")
    if steps not in (None, "unknown"):
        kind = f"{kind} for {steps} steps"
    return f"{kind} ({source})" if source else kind


def numbered_frames(
    info: FaceSourceInfo, config: LipSyncConfig, counts: VideoDecodeCounts | None = None
) -> Iterator[tuple[bool, np.ndarray]]:
    """(starts_a_new_loop, frame) pairs; the tracker is reset when a short clip loops back to its start."""
    index = 0
    for frame in iter_face_frames(info, counts):
        yield (index % info.frame_count == 0 and not info.is_still), transform_frame(frame, config)
        index += 1


def check_outfile(path: Path) -> None:
    """Refuse an output path that cannot be written, before any work is done (no traceback later)."""
    if path.is_dir():
        raise LipSyncError(f"--outfile {path} is a directory; give a file name such as {path / 'result.mp4'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LipSyncError(f"--outfile {path}: {parent} is a file, not a directory")
            break


def run(config: LipSyncConfig, *, progress: bool = True) -> LipSyncReport:
    started = time.perf_counter()
    check_outfile(config.outfile)
    # Read before any work: a bad avatar folder is a one-line AvatarError (a ValueError), not a traceback.
    avatar = load_avatar(config.avatar) if config.avatar is not None else None
    # The avatar's loop is a short clip of the person: it loops for the audio's length like any short clip.
    face = config.face if config.face is not None else avatar.loop
    timer = StageTimer()
    with timer.stage("audio+mel"):
        info = probe_face_source(face, static=config.static, fps=config.fps)
        fps = config.fps if info.is_still else info.fps
        decoded = decode_audio(config.audio)
        wav = decoded.samples
        if not np.isfinite(wav).all():
            raise AudioError(f"{config.audio} decodes to NaN/inf samples")
        # One frame per 1/fps of audio, so the video lasts as long as the soundtrack. (The original stopped
        # when the last full 200-ms window ran out, leaving the final ~200 ms of audio without video.)
        n_frames = max(1, round(len(wav) / contract.SAMPLE_RATE * fps))
        mel = melspectrogram(wav)
    width, height = output_size(info, config)
    check_frame_size(info, width, height)
    batch_size = frames_per_batch(width, height, config.wav2lip_batch_size)
    if batch_size < config.wav2lip_batch_size:
        log.info("frames of %dx%d: %d per batch to bound memory", width, height, batch_size)
    if config.publish:  # a second per batch: the first frame goes out soon, the next batch is made while it plays
        batch_size = min(batch_size, max(1, round(fps)))
    live = None
    if config.publish:
        with timer.stage("publish"):
            live = FilePublisher(config.publish, config.audio, StreamSpec(width, height, fps), n_frames)
            live.connect()  # a server that is not there ends the job here, before the model is even loaded
    report = LipSyncReport(outfile=config.outfile, fps=fps, width=width, height=height)
    report.avatar = avatar.name if avatar is not None else ""
    report.audio_seconds = len(wav) / contract.SAMPLE_RATE
    report.audio_corrupt_packets, report.audio_concealed_seconds = decoded.corrupt_packets, decoded.concealed_s

    with timer.stage("load model"):
        backend = choose_backend(config, avatar)
    report.backend, report.weights = backend.name, describe_weights(backend)
    if avatar is not None and backend.name == "pytorch":  # the PyTorch backend reports no provenance: name the file
        report.weights = f"avatar {avatar.name!r} ({avatar.weights})"
    log.info("backend %s, weights: %s", backend.name, report.weights)
    if "UNTRAINED" in report.weights:
        log.warning("%s", report.weights)
    # The windows are cut as the served weights were trained to hear them (a low-look-ahead model's
    # reach back in time): the offset comes with the model, there is no flag to keep in step.
    report.mel_offset, report.lookahead_ms = backend.mel_offset, backend.lookahead_ms
    with timer.stage("audio+mel"):
        windows = mel_windows(mel, fps, n_frames, mel_offset=backend.mel_offset)

    detector = FixedBoxDetector(config.box) if config.uses_fixed_box else MediaPipeFaceDetector()
    tracker_config = TrackerConfig(detect_every=1 if info.is_still else config.detect_every)
    if config.nosmooth:
        tracker_config = TrackerConfig(detect_every=tracker_config.detect_every, smoothing=0.0)
    tracker = FaceTracker(detector, tracker_config)
    compositor = Compositor(config.blend, still=info.is_still)
    still_box = None  # a still image is detected once and the box reused, as the original did

    writer = Mp4Writer(config.outfile, width=width, height=height, fps=fps)
    completed = False
    video_counts = VideoDecodeCounts()
    frames = numbered_frames(info, config, video_counts)
    bar = tqdm(total=n_frames, unit="frame", desc="lipsync", disable=not progress)
    try:
        with timer.stage("audio encode"):
            writer.write_audio_from(config.audio, n_frames / fps)
        for start in range(0, n_frames, batch_size):
            count = min(batch_size, n_frames - start)
            batch_frames: list[np.ndarray] = []
            regions: list[CropRegion | None] = []
            with timer.stage("decode"):
                for _ in range(count):
                    new_loop, frame = next(frames)
                    if new_loop:
                        tracker.reset()
                        compositor.reset()
                    batch_frames.append(frame)
            with timer.stage("track"):
                for frame in batch_frames:
                    if info.is_still and still_box is not None:
                        box = still_box
                    else:
                        box = tracker.update(frame)
                        still_box = box if info.is_still else None
                    regions.append(pad_box(box, frame.shape, config.pads) if box is not None else None)
            with timer.stage("crop"):
                with_face = [i for i, r in enumerate(regions) if r is not None]
                faces = (
                    np.stack([model_face_input(crop_face(batch_frames[i], regions[i])) for i in with_face])
                    if with_face
                    else None
                )
                mels = windows[start : start + count][with_face][:, None] if with_face else None
            generated = None
            if with_face:
                with timer.stage("infer"):
                    try:
                        generated = backend.infer(mels.astype(np.float32), faces)
                    except BackendError as exc:
                        # Keep going: the frames are written unchanged, counted, and the job still finishes.
                        log.warning(
                            "backend failed on frames %d-%d, passing them through: %s", start, start + count - 1, exc
                        )
                        report.frames_passed_through += len(with_face)
            with timer.stage("blend"):
                out_frames = list(batch_frames)
                if generated is not None:
                    for j, i in enumerate(with_face):
                        out_frames[i] = compositor.compose(batch_frames[i], generated[j], regions[i])
            with timer.stage("encode"):
                for frame in out_frames:
                    writer.write_video(frame)
            if live is not None:
                with timer.stage("publish"):  # paced: waits while two seconds are queued
                    for frame in out_frames:
                        live.send_frame(frame)
            report.frames += count
            report.frames_with_face += len(with_face)
            report.frames_without_face += count - len(with_face)
            bar.update(count)
        completed = True
    except KeyboardInterrupt:
        report.interrupted = True
        log.warning("interrupted: keeping the %d frames written so far", report.frames)
    finally:
        bar.close()
        with timer.stage("encode"):
            writer.close()
            if report.interrupted:  # the soundtrack was written whole: cut it where the video stops
                trim_audio_to_video(config.outfile, report.frames / fps)
        if live is not None:
            with timer.stage("publish"):  # a finished job sends what is queued; a stopped one drops it
                report.publish = live.close(drain=completed)
        backend.close()
        compositor.close()
        report.frames_default_mouth = compositor.stats.default_shape_frames
        report.video_corrupt_packets = video_counts.corrupt_packets
    report.wall_seconds = time.perf_counter() - started
    report.stage_seconds = timer.as_dict()
    report.summary = timer.summary(report.frames, report.wall_seconds)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lipsync",
        description="Lip-sync a face video or image to an audio track. Output is an MP4 marked as synthetic.",
    )
    add_dataclass_arguments(parser, LipSyncConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (a service manager, a container stop) ends the job as Ctrl-C does: the file is finished."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(LipSyncConfig, args)
        report = run(config, progress=not args.quiet)
    except (MediaError, AudioError, BackendError, FileNotFoundError, ValueError, LipSyncError, PublishError) as exc:
        print(f"lipsync: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the first frame: there is no file worth keeping
        print("lipsync: interrupted before any frame was written", file=sys.stderr)
        return 130
    written = replace(config, publish=redact_url(config.publish)) if config.publish else config  # no stream key
    write_resolved_config(written, config.outfile.with_suffix(".json"), {"report": report.__dict__})
    if not args.quiet:
        print(
            f"\nwrote {report.outfile}: {report.frames} frames {report.width}x{report.height} @ {report.fps:g} fps, "
            f"{report.audio_seconds:.2f} s audio"
        )
        if report.avatar:
            print(f"avatar: {report.avatar} ({config.avatar}); face: {config.face or 'its loop'}")
        print(f"backend: {report.backend}; weights: {report.weights}; audio look-ahead {report.lookahead_ms:g} ms")
        print(
            f"faces: {report.frames_with_face} frames lip-synced, {report.frames_without_face} without a face "
            f"(passed through), {report.frames_passed_through} passed through after backend errors"
        )
        if report.video_corrupt_packets:
            print(f"video: {report.video_corrupt_packets} corrupt packets, each replaced by the frame before it")
        if report.audio_corrupt_packets:
            print(
                f"audio: {report.audio_corrupt_packets} corrupt packets replaced by "
                f"{report.audio_concealed_seconds:.2f} s of silence"
            )
        if report.frames_default_mouth:
            print(
                f"blend: no face landmarks on {report.frames_default_mouth} frames; "
                "the mouth mask was drawn where a mouth usually sits in the face box"
            )
        if report.publish:
            live = report.publish
            print(
                f"published to {live['url']}: {live['frames_sent']} frames, {live['audio_sent_s']:.2f} s audio; "
                f"{live['drops']} drops, {live['reconnects']} reconnects, "
                f"{sum(live['frames_dropped'].values())} frames dropped, {live['stalls']} stalls"
            )
        print(report.summary)
    return 130 if report.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
