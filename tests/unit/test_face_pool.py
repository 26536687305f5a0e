"""The gateway's face-processor pool: built once per slot, handed on clean, never more kept than the cap."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.client.compositing import Compositor
from lipsync.streaming.face_pool import FaceProcessorPool
from lipsync.streaming.session import FaceProcessor
from tests.media import astronaut_bgr

pytestmark = pytest.mark.unit


class CountingProcessor(FaceProcessor):
    """A real face processor that records whether it was closed."""

    def __init__(self, still: bool) -> None:
        super().__init__(compositor=Compositor("mouth", still=still, landmark_every=1))
        self.closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def test_a_released_processor_comes_back_clean_for_the_next_session() -> None:
    made: list[CountingProcessor] = []
    pool = FaceProcessorPool(lambda still: made.append(CountingProcessor(still)) or made[-1], keep=2)
    image = astronaut_bgr()
    first = pool.acquire(still=False)
    region, face_input = first.locate(image)
    assert region is not None and face_input is not None, "no face found on the astronaut"
    generated = np.full((3, 96, 96), 0.5, np.float32)
    first.blend(image, generated, region)
    assert first.compositor.stats.frames == 1 and first.tracker.stats.frames == 1
    pool.release(first)

    second = pool.acquire(still=False)
    assert second is first and (pool.built, pool.reused) == (1, 1)
    # Nothing of the last face is left: no box to follow, no shape, zero counts.
    assert second.tracker.stats.frames == 0 and second.compositor.stats.frames == 0
    # And it works on the next video: the face found afresh, a mouth pasted.
    again, _ = second.locate(image)
    assert again is not None and abs(again.x1 - region.x1) <= 2
    out = second.blend(image, generated, again)
    assert out.shape == image.shape and not np.array_equal(out, image)
    pool.release(second)
    pool.close()
    assert first.closed


def test_still_and_moving_processors_are_kept_apart_and_extras_are_closed() -> None:
    made: list[CountingProcessor] = []
    pool = FaceProcessorPool(lambda still: made.append(CountingProcessor(still)) or made[-1], keep=1)
    moving = [pool.acquire(still=False) for _ in range(2)]
    still = pool.acquire(still=True)
    assert still.compositor.still and not moving[0].compositor.still
    for faces in (*moving, still):
        pool.release(faces)
    # One moving kept (the cap), the other closed; the still one kept in its own list.
    assert sum(f.closed for f in moving) == 1 and not still.closed and pool.idle() == 2
    assert pool.acquire(still=True) is still
    pool.close()
    assert all(f.closed for f in moving)
    pool.release(still)  # a processor coming back after close is closed, not kept
    assert still.closed and pool.idle() == 0


def test_keep_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="keep must be >= 0, got -1"):
        FaceProcessorPool(lambda still: CountingProcessor(still), keep=-1)
