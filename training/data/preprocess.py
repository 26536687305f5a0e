"""Real video (LRS2/LRS3 or one's own recordings) -> the training layout: 25 fps 96x96 face crops + 16 kHz audio.wav."""

from __future__ import annotations

import argparse
import hashlib
import logging
import wave
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from lipsync.client.contract import SAMPLE_RATE
from lipsync.client.video_io import decode_bgr_frames

logger = logging.getLogger(__name__)

FPS = 25
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class ClipReport:
    """What preprocessing one video produced."""

    name: str
    frames: int  # output frames at 25 fps
    faces: int  # of which had a face (written as jpgs)
    seconds: float  # audio duration
    skipped: bool = False
    error: str | None = None


def find_videos(inputs: list[Path]) -> list[tuple[Path, str]]:
    """(video, clip name) pairs: a file gives `<parent>/<stem>`, a folder `<sub>/<stem>` as LRS2's `main/<id>/<n>.mp4`."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        if item.is_file():
            found.append((item, f"{item.parent.name or 'videos'}/{item.stem}"))
        elif item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()):
                rel = path.relative_to(item)
                group = rel.parent.as_posix().replace("/", "_") if rel.parent != Path(".") else item.name
                found.append((path, f"{group}/{path.stem}"))
        else:
            raise FileNotFoundError(f"input {item} is neither a video file nor a folder")
    names = [n for _, n in found]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"two inputs map to the same clip name: {dupes[:5]}")
    return found


def frames_at_fps(path: Path, fps: int = FPS) -> Iterator[tuple[int, np.ndarray]]:
    """(output index, BGR frame) at a constant `fps`: each output time k/fps takes the source frame nearest to it.

    A source frame covers the times up to halfway to the next one (and its own duration at the
    end), so a 30 fps video drops frames and a 24 fps one repeats some, as ffmpeg's -r does.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or fps)
        k = 0
        prev: tuple[np.ndarray, float] | None = None
        for i, (image, time) in enumerate(decode_bgr_frames(container, stream, path)):
            t = float(time) if time is not None else i / rate
            if prev is not None:
                boundary = (prev[1] + t) / 2.0
                while k / fps < boundary:
                    yield k, prev[0]
                    k += 1
            prev = (image, t)
        if prev is not None:
            end = prev[1] + 0.5 / rate
            while k / fps < end:
                yield k, prev[0]
                k += 1


def write_wav(path: Path, wav: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit mono PCM."""
    pcm = np.clip(np.round(np.asarray(wav, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    tmp = path.with_suffix(".wav.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    tmp.replace(path)  # audio.wav appears last and only whole: it marks the clip as done


def preprocess_video(
    video: Path,
    out_dir: Path,
    *,
    pads: tuple[int, int, int, int] = (0, 10, 0, 0),
    smoothing: float = 0.8,
    jpeg_quality: int = 95,
) -> ClipReport:
    """One video -> numbered face crops and audio.wav in `out_dir` (the counterpart of the original preprocess.py).

    The tracker detects on every frame; the crop is the inference crop (padded box, 96x96); a frame
    without a face leaves a gap in the numbering, which the datasets skip. audio.wav is written
    last, so a clip that has it is done and skipped on a rerun.
    """
    from lipsync.client.audio import load_audio
    from lipsync.client.face_crop import crop_face, pad_box
    from lipsync.client.face_tracking import FaceTracker, TrackerConfig

    name = f"{out_dir.parent.name}/{out_dir.name}"
    if (out_dir / "audio.wav").is_file():
        return ClipReport(name, 0, 0, 0.0, skipped=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = faces = 0
    with FaceTracker(config=TrackerConfig(detect_every=1, max_missed=0, smoothing=smoothing, fps=FPS)) as tracker:
        for k, image in frames_at_fps(video):
            frames += 1
            box = tracker.update(image, timestamp_s=k / FPS)
            if box is None:
                continue  # a gap in the numbering: windows across it are rejected in training
            try:
                crop = crop_face(image, pad_box(box, image.shape, pads))
            except ValueError:
                continue
            cv2.imwrite(str(out_dir / f"{k}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            faces += 1
    wav = load_audio(video)
    write_wav(out_dir / "audio.wav", wav)
    return ClipReport(name, frames, faces, len(wav) / SAMPLE_RATE)


def _work(job: tuple[Path, Path, tuple[int, int, int, int], float]) -> ClipReport:
    video, out_dir, pads, smoothing = job
    try:
        return preprocess_video(video, out_dir, pads=pads, smoothing=smoothing)
    except Exception as exc:
        return ClipReport(f"{out_dir.parent.name}/{out_dir.name}", 0, 0, 0.0, error=f"{type(exc).__name__}: {exc}")


def split_of(name: str, val: float, test: float) -> str:
    """A stable split from a hash of the clip name (the same clip lands in the same split on every run)."""
    u = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < test else "val" if u < test + val else "train"


def write_filelists(out: Path, names: list[str], val: float, test: float) -> dict[str, int]:
    """filelists/{train,val,test}.txt by hashed name; every split gets at least one clip when there are 3+."""
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name in sorted(names):
        splits[split_of(name, val, test)].append(name)
    for needed in ("val", "test"):
        if not splits[needed] and len(splits["train"]) > 1 and (val if needed == "val" else test) > 0:
            splits[needed].append(splits["train"].pop())
    (out / "filelists").mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        (out / "filelists" / f"{split}.txt").write_text("".join(f"{n}\n" for n in items))
    return {k: len(v) for k, v in splits.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="video files or folders (searched recursively)")
    parser.add_argument("--out", "--out-dir", dest="out", type=Path, required=True, help="corpus root to write")
    parser.add_argument(
        "--pads",
        nargs=4,
        type=int,
        default=(0, 10, 0, 0),
        metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
        help="box padding in pixels (default: 0 10 0 0)",
    )
    parser.add_argument("--smoothing", type=float, default=0.8, help="face box smoothing in [0, 1) (default: 0.8)")
    parser.add_argument("--workers", type=int, default=1, help="videos processed in parallel (default: 1)")
    parser.add_argument("--val", type=float, default=0.05, help="share of clips for filelists/val.txt (default: 0.05)")
    parser.add_argument(
        "--test", type=float, default=0.05, help="share of clips for filelists/test.txt (default: 0.05)"
    )
    parser.add_argument(
        "--filelists",
        choices=("auto", "always", "never"),
        default="auto",
        help="write filelists: auto = only if none exist",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    videos = find_videos(list(args.inputs))
    if not videos:
        logger.error("no videos found in %s", [str(p) for p in args.inputs])
        return 1
    out: Path = args.out
    jobs = [(video, out / name, tuple(args.pads), args.smoothing) for video, name in videos]
    reports: list[ClipReport] = []
    bar = tqdm(total=len(jobs), desc="preprocess", unit="video", dynamic_ncols=True)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            for report in pool.map(_work, jobs):
                reports.append(report)
                bar.update(1)
    else:
        for job in jobs:
            reports.append(_work(job))
            bar.update(1)
    bar.close()
    failed = [r for r in reports if r.error]
    for r in failed:
        logger.warning("%s failed: %s", r.name, r.error)
    done = [r.name for r in reports if not r.error]
    made = [r for r in reports if not r.error and not r.skipped]
    logger.info(
        "%d videos: %d processed, %d already done, %d failed; %d of %d frames with a face",
        len(reports),
        len(made),
        len(done) - len(made),
        len(failed),
        sum(r.faces for r in made),
        sum(r.frames for r in made),
    )
    has_lists = (out / "filelists" / "train.txt").is_file()
    if args.filelists == "always" or (args.filelists == "auto" and not has_lists):
        counts = write_filelists(out, done, args.val, args.test)
        logger.info("filelists written: %s", counts)
    return 1 if failed and not done else 0
