"""The offline `lipsync` command end to end: real files through PyAV, a real (tiny, random) network."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from lipsync.benchmarks.synthetic_media import make_moving_face_clip
from lipsync.client.video_io import Mp4Writer

pytestmark = pytest.mark.integration

FPS = 25
SIZE = (320, 240)
SECONDS = 2.0


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def speech_like(seconds: float, rate: int = 44_100) -> np.ndarray:
    """Voiced bursts (harmonics of 140 Hz, syllable-rate envelope) and pauses: speech-shaped, stereo."""
    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    mono = 0.3 * voice * envelope / 3
    return np.stack([mono, mono]).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, rate: int = 44_100, codec: str = "aac") -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def luma(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(np.int16)


def decode_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from lipsync.client.networks.checkpoints import save_checkpoint
    from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig

    torch.manual_seed(0)
    config = Wav2LipConfig(width=0.25)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(path, model=Wav2Lip(config), config=config, step=0)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("media")
    clip = make_moving_face_clip(int(SECONDS * FPS), size=SIZE, fps=FPS, seed=3)
    write_video(root / "face.mp4", clip.frames)
    write_audio(root / "speech.m4a", speech_like(SECONDS))
    return {"video": root / "face.mp4", "audio": root / "speech.m4a", "clip": clip}


def run_lipsync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lipsync.client.lipsync", "--quiet", *args], capture_output=True, text=True, timeout=300
    )


def test_video_dubbing_changes_the_mouth_and_nothing_else(inputs: dict, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    result = run_lipsync(
        "--face", str(inputs["video"]), "--audio", str(inputs["audio"]), "--outfile", str(out),
        "--checkpoint_path", str(tiny_checkpoint), "--backend", "pytorch",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.width, video.height) == SIZE
        assert video.average_rate == Fraction(FPS)
        assert audio.codec_context.name == "aac"
        assert video.codec_context.name == "h264"
        assert "SYNTHETIC" in container.metadata.get("comment", "")
        audio_seconds = float(audio.duration * audio.time_base)
    out_frames = decode_frames(out)
    # One frame per mel window, as the original: 2 s of audio at 25 fps (AAC priming may add a frame).
    assert abs(len(out_frames) - SECONDS * FPS) <= 2
    assert abs(audio_seconds - len(out_frames) / FPS) < 0.06

    # The reference is the input pushed through the same encoder untouched, so codec noise cancels out.
    reference = tmp_path / "passthrough.mp4"
    with Mp4Writer(reference, width=SIZE[0], height=SIZE[1], fps=FPS, with_audio=False) as writer:
        for frame in decode_frames(inputs["video"]):
            writer.write_video(frame)
    in_frames = decode_frames(reference)
    mouth_changes, outside_changes = [], []
    for i, (got, box) in enumerate(zip(out_frames, inputs["clip"].boxes, strict=False)):
        # Luma only: chroma is subsampled 4:2:0, so a changed mouth bleeds into neighbouring chroma samples.
        diff = np.abs(luma(got) - luma(in_frames[i % len(in_frames)]))
        x1, y1, x2, y2 = box.as_int()
        mouth = diff[y1 + (y2 - y1) * 6 // 10 : y2, x1 + (x2 - x1) // 4 : x2 - (x2 - x1) // 4]
        outside = np.ones_like(diff, dtype=bool)
        # The blend can reach into the padding below the chin; everything beyond a generous margin must stay.
        pad_x, pad_y = (x2 - x1) // 2, (y2 - y1) // 2
        outside[max(0, y1 - pad_y) : y2 + pad_y, max(0, x1 - pad_x) : x2 + pad_x] = False
        mouth_changes.append(float(mouth.mean()))
        outside_changes.append(float(diff[outside].mean()))
    # A random network draws something far from the real mouth: a large change inside the mouth box.
    assert np.median(mouth_changes) > 12, mouth_changes
    # Outside the face, only what the encoder decides differently near the changed blocks: well under a level.
    assert max(outside_changes) < 0.5, outside_changes
    assert np.median(mouth_changes) > 8 * max(outside_changes)


def test_still_image_loops_for_the_audio_duration(tiny_checkpoint: Path, inputs: dict, tmp_path: Path) -> None:
    image = tmp_path / "face.v1.png"  # two dots: the original misread such names
    cv2.imwrite(str(image), inputs["clip"].frames[0])
    out = tmp_path / "still.mp4"
    result = run_lipsync(
        "--face", str(image), "--audio", str(inputs["audio"]), "--outfile", str(out),
        "--checkpoint_path", str(tiny_checkpoint), "--fps", "30",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == Fraction(30)
    frames = decode_frames(out)
    assert abs(len(frames) - SECONDS * 30) <= 2


def test_frames_without_a_face_pass_through(tiny_checkpoint: Path, inputs: dict, tmp_path: Path) -> None:
    from lipsync.benchmarks.synthetic_media import frame_without_face

    empty = [frame_without_face(SIZE)] * 10
    video = tmp_path / "noface.mp4"
    write_video(video, empty)
    out = tmp_path / "noface_out.mp4"
    result = run_lipsync(
        "--face", str(video), "--audio", str(inputs["audio"]), "--outfile", str(out),
        "--checkpoint_path", str(tiny_checkpoint),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = decode_frames(out)
    decoded = decode_frames(video)
    assert len(got) >= 45  # the 10-frame clip loops for the whole audio
    reference = tmp_path / "passthrough.mp4"
    with Mp4Writer(reference, width=SIZE[0], height=SIZE[1], fps=FPS, with_audio=False) as writer:
        for i in range(len(got)):
            writer.write_video(decoded[i % len(decoded)])
    for frame, want in zip(got, decode_frames(reference), strict=True):
        assert np.array_equal(frame, want)
    report = json.loads(out.with_suffix(".json").read_text())["report"]
    assert report["frames_without_face"] == len(got) and report["frames_with_face"] == 0


@pytest.mark.parametrize(
    ("face", "audio", "message"),
    [
        ("missing.mp4", "speech.m4a", "not found"),
        ("face.mp4", "corrupt.wav", "corrupt.wav"),
        ("face.mp4", "face.mp4", "audio"),
        ("corrupt.mp4", "speech.m4a", "corrupt.mp4"),
    ],
)
def test_bad_input_gives_a_clear_error_not_a_traceback(
    inputs: dict, tiny_checkpoint: Path, tmp_path: Path, face: str, audio: str, message: str
) -> None:
    media = inputs["video"].parent
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))

    def where(name: str) -> str:
        return str(tmp_path / name) if name.startswith(("corrupt", "missing")) else str(media / name)

    result = run_lipsync(
        "--face", where(face), "--audio", where(audio), "--outfile", str(tmp_path / "x.mp4"),
        "--checkpoint_path", str(tiny_checkpoint),
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fps", "inf"], "--fps must be a frame rate"),
        (["--fps", "nan"], "--fps must be a frame rate"),
        (["--fps", "1e9"], "--fps must be a frame rate"),
        (["--outfile", "{tmp}"], "is a directory"),
        (["--outfile", "{tmp}/plain.txt/out.mp4"], "is a file, not a directory"),
    ],
)
def test_bad_flags_give_a_clear_error_not_a_traceback(
    inputs: dict, tiny_checkpoint: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    (tmp_path / "plain.txt").write_text("not a folder")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    if "--outfile" not in flags:
        flags += ["--outfile", str(tmp_path / "x.mp4")]
    result = run_lipsync(
        "--face", str(inputs["video"].parent / "face.mp4"), "--audio", str(inputs["video"].parent / "speech.m4a"),
        "--checkpoint_path", str(tiny_checkpoint), *flags,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr


def test_sigterm_mid_job_leaves_a_playable_file_with_audio_cut_to_the_video(
    inputs: dict, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A stopped job keeps what it made: the MP4 is finished and its audio ends where its frames do."""
    import re
    import signal
    import threading
    import time

    import av

    long_speech = tmp_path / "long.m4a"
    write_audio(long_speech, speech_like(60.0))  # a minute of audio: the job is far from done when stopped
    out = tmp_path / "stopped.mp4"
    job = subprocess.Popen(
        [sys.executable, "-m", "lipsync.client.lipsync", "--face", str(inputs["video"]),
         "--audio", str(long_speech), "--outfile", str(out), "--checkpoint_path", str(tiny_checkpoint),
         "--wav2lip_batch_size", "8"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    # Stopped once frames are being written (its progress bar counts them), not after a fixed time: on a
    # loaded machine 12 s once passed before the first frame, and the file then rightly had no video.
    errors: list[str] = []

    def pump() -> None:
        for char in iter(lambda: job.stderr.read(1), ""):
            errors.append(char)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job.poll() is None:
        done = [int(n) for n in re.findall(r"\| *(\d+)/\d+ ", "".join(errors[-400:]))]
        if done and done[-1] >= 24:
            break
        time.sleep(0.2)
    assert job.poll() is None, "the job ended before it could be stopped"
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=60)
    reader.join(timeout=10)
    stderr = "".join(errors)
    assert job.returncode == 130, stderr
    assert "Traceback" not in stderr
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        rate = audio.rate
    video_s, audio_s = frames / FPS, samples / rate
    assert 0 < frames < 60 * FPS, frames
    assert abs(audio_s - video_s) < 0.1, (audio_s, video_s)  # AAC frames are 21 ms; the cut is packet-exact


def test_frame_size_bounds_memory_and_refuses_what_h264_cannot_encode(
    inputs: dict, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from lipsync.client.lipsync import BATCH_PIXELS, frames_per_batch

    assert frames_per_batch(1920, 1080, 128) == 128
    assert frames_per_batch(8000, 6000, 128) == BATCH_PIXELS // (8000 * 6000) == 5  # not 128 x 144 MB
    assert frames_per_batch(20000, 20000, 128) == 1
    huge = tmp_path / "huge.png"
    cv2.imwrite(str(huge), np.zeros((5000, 9000, 3), np.uint8))  # 45 MP: over H.264's 8192x4320
    result = run_lipsync(
        "--face", str(huge), "--audio", str(inputs["audio"]), "--outfile", str(tmp_path / "x.mp4"),
        "--checkpoint_path", str(tiny_checkpoint),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pass --resize_factor 2" in result.stderr, result.stderr


def test_a_truncated_video_is_reported_not_looped_silently(inputs: dict, tiny_checkpoint: Path, tmp_path: Path) -> None:
    import av

    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:  # index first, as phones write
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for frame in inputs["clip"].frames * 3:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    result = subprocess.run(
        [sys.executable, "-m", "lipsync.client.lipsync", "--face", str(cut), "--audio", str(inputs["audio"]),
         "--outfile", str(tmp_path / "x.mp4"), "--checkpoint_path", str(tiny_checkpoint)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "declares" in result.stderr and "truncated?" in result.stderr, result.stderr[-2000:]


def test_one_corrupt_audio_packet_is_concealed_not_fatal(inputs: dict, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A bad packet in the middle of an AAC stream: silence of its length, the rest keeps its time."""
    import av

    from lipsync.client.audio import decode_audio, load_audio

    rate, seconds = 16_000, 3.0
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    good = tmp_path / "speech.aac"
    with av.open(str(good), "w", format="adts") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
        frame.sample_rate = rate
        for out in av.AudioResampler(format="fltp", layout="mono", rate=rate).resample(frame):
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 40] = bytes(b ^ 0xFF for b in data[middle : middle + 40])
    bad = tmp_path / "corrupt_packet.aac"
    bad.write_bytes(bytes(data))
    with av.open(str(bad)) as container, pytest.raises(av.error.InvalidDataError):
        for _ in container.decode(audio=0):  # the plain decode loop gives up on the whole file
            pass
    decoded = decode_audio(bad)
    assert decoded.corrupt_packets >= 1 and 0 < decoded.concealed_s < 0.5, decoded
    assert abs(len(decoded.samples) - len(load_audio(good))) <= 1024  # same length: time kept after the gap
    out = tmp_path / "out.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "lipsync.client.lipsync", "--face", str(inputs["video"]), "--audio", str(bad),
         "--outfile", str(out), "--checkpoint_path", str(tiny_checkpoint)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "corrupt packets replaced by" in result.stdout, result.stdout
    with av.open(str(out)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert abs(samples / 48_000 - seconds) < 0.1


def test_one_corrupt_video_packet_is_concealed_not_fatal(inputs: dict, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A face video with one scrambled H.264 packet: the job finishes, says so, and keeps its length."""
    face = tmp_path / "damaged.mp4"
    face.write_bytes(inputs["video"].read_bytes())
    with av.open(str(face)) as container:
        pos, size = [(p.pos, p.size) for p in container.demux(video=0) if p.size][20]
    data = bytearray(face.read_bytes())
    data[pos + size // 4 : pos + size] = bytes(b ^ 0x5A for b in data[pos + size // 4 : pos + size])
    face.write_bytes(bytes(data))
    with av.open(str(face)) as container, pytest.raises(av.error.InvalidDataError):
        for _ in container.decode(video=0):  # what the job did before: the whole input refused or cut short
            pass
    out = tmp_path / "out.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "lipsync.client.lipsync", "--face", str(face), "--audio", str(inputs["audio"]),
         "--outfile", str(out), "--checkpoint_path", str(tiny_checkpoint)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "video: 1 corrupt packets, each replaced by the frame before it" in result.stdout, result.stdout
    report = json.loads(out.with_suffix(".json").read_text())["report"]
    assert report["video_corrupt_packets"] == 1
    assert len(decode_frames(out)) == report["frames"] >= int(SECONDS * FPS)  # as long as the speech
