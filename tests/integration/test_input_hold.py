"""The input-hold benchmark measures aiortc's real receive path: two real peers over loopback."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lipsync.benchmarks.input_hold import Plan, measure

pytestmark = pytest.mark.integration


def test_audio_is_held_about_four_packets_on_the_way_in() -> None:
    holds = asyncio.run(measure(Plan(seconds=2.0, warmup_s=0.5)))
    assert len(holds) >= 80, f"only {len(holds)} frames came through in 2 s"
    # aiortc's jitter buffer releases an audio frame when 4 more 20 ms packets have arrived: about 80 ms,
    # plus encoding and decoding; never less (a frame cannot come out before 4 later ones went in).
    p50 = 1000 * float(np.median(holds))
    assert 60 <= p50 <= 250, f"hold p50 {p50:.1f} ms"
