"""A video packet that does not decode is replaced by the frame before it, counted, and never ends
the stream: for the offline command's face input, the gateway's presenter clips and preprocessing.

The damaged files are real: a clip is encoded with PyAV, then the bytes of one packet are
scrambled in the file where the demuxer says that packet lies, as a bad sector would.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from lipsync.client.video_io import (
    FaceSourceInfo,
    MediaError,
    VideoDecodeCounts,
    iter_face_frames,
    iter_video_frames,
)

FRAMES = 30
SIZE = (64, 48)


def numbered_frame(i: int) -> np.ndarray:
    """A frame whose brightness and bar position say its index."""
    image = np.full((SIZE[1], SIZE[0], 3), 4 * i, np.uint8)
    image[10:30, 2 * i : 2 * i + 4] = 255
    return image


def write_clip(path: Path, codec: str, fmt: str, pix_fmt: str) -> None:
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], pix_fmt
        for i in range(FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(numbered_frame(i), format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def scramble_packets(path: Path, indices: list[int]) -> None:
    """XOR the last three quarters of each chosen packet's bytes in the file (the header stays)."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    for index in indices:
        pos, size = packets[index]
        for k in range(pos + size // 4, pos + size):
            data[k] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.fixture
def mjpeg_clip(tmp_path: Path) -> Path:
    """Intra-only frames: a scrambled packet damages exactly its own frame."""
    path = tmp_path / "clip.avi"
    write_clip(path, "mjpeg", "avi", "yuvj420p")
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def test_a_corrupt_packet_is_replaced_by_the_frame_before_it(mjpeg_clip: Path) -> None:
    clean = decode_all(mjpeg_clip)
    scramble_packets(mjpeg_clip, [12])
    with av.open(str(mjpeg_clip)) as container, pytest.raises(av.error.InvalidDataError):
        for _ in container.decode(video=0):  # the plain decode loop gives up at packet 12
            pass
    counts = VideoDecodeCounts()
    frames = list(iter_video_frames(mjpeg_clip, counts))
    assert counts.corrupt_packets == 1
    assert len(frames) == FRAMES  # every frame after the bad one keeps its place in time
    for i, frame in enumerate(frames):
        want = clean[11] if i == 12 else clean[i]
        assert np.array_equal(frame, want), i


def test_a_corrupt_first_packet_is_paid_with_the_first_good_frame(mjpeg_clip: Path) -> None:
    clean = decode_all(mjpeg_clip)
    scramble_packets(mjpeg_clip, [0])
    counts = VideoDecodeCounts()
    frames = list(iter_video_frames(mjpeg_clip, counts))
    assert counts.corrupt_packets == 1 and len(frames) == FRAMES
    assert np.array_equal(frames[0], clean[1]) and np.array_equal(frames[1], clean[1])
    assert np.array_equal(frames[5], clean[5])


def test_a_video_where_nothing_decodes_is_refused(mjpeg_clip: Path) -> None:
    scramble_packets(mjpeg_clip, list(range(FRAMES)))
    info = FaceSourceInfo(mjpeg_clip, 25.0, SIZE[0], SIZE[1], FRAMES, is_still=False)
    with pytest.raises(MediaError, match="no decodable frames"):
        next(iter_face_frames(info))


def test_h264_with_a_damaged_packet_keeps_its_frame_count(tmp_path: Path) -> None:
    """The common case (inter frames): the count and the clean part before the damage are kept."""
    path = tmp_path / "clip.mp4"
    write_clip(path, "libx264", "mp4", "yuv420p")
    clean = decode_all(path)
    scramble_packets(path, [15])
    counts = VideoDecodeCounts()
    frames = list(iter_video_frames(path, counts))
    assert counts.corrupt_packets == 1 and len(frames) == len(clean) == FRAMES
    assert all(np.array_equal(frames[i], clean[i]) for i in range(5))


def test_face_frames_count_the_damage_once_however_often_the_clip_loops(mjpeg_clip: Path) -> None:
    scramble_packets(mjpeg_clip, [3, 20])
    info = FaceSourceInfo(mjpeg_clip, 25.0, SIZE[0], SIZE[1], FRAMES, is_still=False)
    counts = VideoDecodeCounts()
    frames = iter_face_frames(info, counts)
    for _ in range(3 * FRAMES):
        next(frames)
    assert counts.corrupt_packets == 2


def test_presenter_clips_and_preprocessing_conceal_too(mjpeg_clip: Path) -> None:
    from lipsync.streaming.presenter import PresenterSource
    from lipsync.training.data.preprocess import frames_at_fps

    clean = decode_all(mjpeg_clip)
    scramble_packets(mjpeg_clip, [7])
    presenter = PresenterSource.from_clip(mjpeg_clip)
    assert [presenter.frame(i).shape for i in range(FRAMES)] == [clean[0].shape] * FRAMES
    assert np.array_equal(presenter.frame(7), clean[6]) and np.array_equal(presenter.frame(8), clean[8])
    resampled = list(frames_at_fps(mjpeg_clip))
    assert [k for k, _ in resampled] == list(range(FRAMES))  # the 25 fps timeline has no hole
    assert np.array_equal(resampled[7][1], clean[6]) and np.array_equal(resampled[8][1], clean[8])
