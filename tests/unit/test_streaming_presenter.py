"""Presenter faces: a still picture or a clip looped back and forth, read from files on the server."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from lipsync.streaming.presenter import PresenterError, PresenterSource

pytestmark = pytest.mark.unit


def test_still_image_is_every_frame(tmp_path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (101, 75, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "face.png"), image)
    source = PresenterSource.from_image(tmp_path / "face.png")
    assert source.size == (74, 100)  # cropped to even sides for 4:2:0 video
    assert np.array_equal(source.frame(0), image[:100, :74]) and source.frame(999) is source.frame(0)


def test_clip_loops_back_and_forth_without_a_jump(tmp_path) -> None:
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 + 50 * i, np.uint8), format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    source = PresenterSource.from_clip(path)
    levels = [int(round(source.frame(i).mean() / 10)) for i in range(8)]
    assert levels == [4, 9, 14, 19, 14, 9, 4, 9]


def test_unusable_files_are_named(tmp_path) -> None:
    (tmp_path / "not.png").write_bytes(b"nope")
    with pytest.raises(PresenterError, match="not.png: not a readable image"):
        PresenterSource.from_image(tmp_path / "not.png")
    with pytest.raises(PresenterError, match="not.png: cannot decode"):
        PresenterSource.from_clip(tmp_path / "not.png")
