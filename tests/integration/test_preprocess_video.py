"""`lipsync-train preprocess` on real video files (H.264 + AAC through PyAV): the LRS2 layout comes out,
frames resampled to 25 fps, audio to 16 kHz mono, faceless and broken inputs reported, not fatal."""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync.benchmarks.synthetic_media import frame_without_face, make_moving_face_clip
from lipsync.client.audio import SAMPLE_RATE
from lipsync.client.face_crop import crop_face, pad_box
from lipsync.client.video_io import Mp4Writer
from lipsync.training import cli
from lipsync.training.data.lrs2 import ExpertDataset, GeneratorDataset, load_clips

SIZE = (320, 240)
SOURCE_FPS = 30  # not the corpus rate: preprocessing must resample to 25 fps
SECONDS = 2.4


def _write_wav(path: Path, seconds: float, rate: int = 44_100) -> None:
    """Stereo 44.1 kHz syllable-like tone bursts: an input rate the models do not use."""
    t = np.arange(int(seconds * rate)) / rate
    voice = np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    pcm = (np.stack([voice, 0.5 * voice], axis=1) * 12_000).astype(np.int16)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def _write_mp4(path: Path, frames: list[np.ndarray], wav: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with Mp4Writer(path, width=SIZE[0], height=SIZE[1], fps=SOURCE_FPS) as writer:
        for frame in frames:
            writer.write_video(frame)
        writer.write_audio_from(wav, SECONDS)


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32).ravel()


@pytest.mark.slow
def test_preprocess_writes_the_lrs2_layout_from_real_video_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wav = tmp_path / "speech.wav"
    _write_wav(wav, SECONDS)
    n_source = int(SECONDS * SOURCE_FPS)
    clip = make_moving_face_clip(n_source, SIZE, SOURCE_FPS, face_height=0.5, speed=20.0)
    videos = tmp_path / "videos"
    _write_mp4(videos / "spk1" / "00001.mp4", clip.frames, wav)
    _write_mp4(videos / "spk2" / "00001.mp4", [frame_without_face(SIZE, seed=k) for k in range(n_source)], wav)
    (videos / "spk2" / "broken.mp4").write_bytes(b"\x00\x00\x00 ftypisom this is not a video")
    out = tmp_path / "corpus"

    with caplog.at_level(logging.WARNING):
        assert cli.main(["preprocess", str(videos), "--out", str(out), "--val", "0", "--test", "0"]) == 0
    assert "spk2/broken failed" in caplog.text, "a corrupt input is reported by name"

    face_dir = out / "spk1" / "00001"
    numbers = sorted(int(p.stem) for p in face_dir.glob("*.jpg"))
    expected_frames = int(SECONDS * 25)
    assert len(numbers) >= expected_frames - 2 and numbers[-1] < expected_frames + 1, numbers[-3:]
    # Each crop shows the face: it resembles the true face region at the same instant (after the
    # 30 -> 25 fps resampling) far more than the same region of the background without the face.
    background = frame_without_face(SIZE, seed=0)  # the clip's own background (same seed)
    for k in (0, len(numbers) // 2, numbers[-1]):
        crop = cv2.imread(str(face_dir / f"{k}.jpg"))
        assert crop.shape == (96, 96, 3)
        source = min(round(k * SOURCE_FPS / 25), n_source - 1)
        region = pad_box(clip.boxes[source], clip.frames[source].shape, (0, 10, 0, 0))
        with_face = np.corrcoef(_gray(crop), _gray(crop_face(clip.frames[source], region)))[0, 1]
        without = np.corrcoef(_gray(crop), _gray(crop_face(background, region)))[0, 1]
        assert with_face > 0.2 and with_face > without + 0.25, f"frame {k}: {with_face:.2f} vs {without:.2f}"
    with wave.open(str(face_dir / "audio.wav")) as f:
        assert (f.getframerate(), f.getnchannels()) == (SAMPLE_RATE, 1)
        assert abs(f.getnframes() / SAMPLE_RATE - SECONDS) < 0.1

    # the faceless video keeps its audio but has no frames, so training skips it
    assert (out / "spk2" / "00001" / "audio.wav").is_file()
    assert not list((out / "spk2" / "00001").glob("*.jpg"))
    listed = (out / "filelists" / "train.txt").read_text().split()
    assert "spk1/00001" in listed and "spk2/broken" not in listed
    assert [c.name for c in load_clips(out, "train")] == ["spk1/00001"]

    # both training datasets read what preprocessing wrote
    faces, mel, y = ExpertDataset(out, "train")[0]
    assert faces.shape == (15, 48, 96) and mel.shape == (1, 80, 16) and y.shape == (1,)
    x, _, _, gt = GeneratorDataset(out, "train")[0]
    assert x.shape == (6, 5, 96, 96) and gt.shape == (3, 5, 96, 96)

    # a rerun skips finished clips and leaves them as they were
    before = (face_dir / "0.jpg").stat().st_mtime_ns
    assert cli.main(["preprocess", str(videos), "--out", str(out)]) == 0
    assert (face_dir / "0.jpg").stat().st_mtime_ns == before
