"""The soak's A/V measurement: the lag of returned audio, block by block, for looped speech and an
output that skipped ahead (what made one lag per session report offsets of -6 and -12 s)."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.benchmarks.peer import returned_audio_lags
from tests.unit.test_streaming_session import speech_like

pytestmark = pytest.mark.unit

RATE = 16_000


def test_lags_follow_a_skip_ahead_and_ignore_the_loop_period() -> None:
    clip = speech_like(3.0).astype(np.float32)  # loops every 3 s
    sent = np.tile(clip, 5)
    delay, skipped_at, skip = 7200, 8 * RATE, 1600  # 450 ms behind; at 8 s the output skips 100 ms
    got = np.concatenate([np.zeros(delay, np.float32), sent[: skipped_at - delay], sent[skipped_at - delay + skip :]])
    got = got[: len(sent)]
    lags = returned_audio_lags(got, sent, max_lag=int(0.9 * 3.0 * RATE), block=RATE)
    assert set(lags[RATE : 7 * RATE]) == {delay}
    assert set(lags[9 * RATE : 14 * RATE]) == {delay - skip}
    assert lags[0] == delay  # the leading silence takes the first block with sound's lag


def test_silence_everywhere_gives_zero_lags() -> None:
    assert not returned_audio_lags(np.zeros(RATE, np.float32), np.zeros(RATE, np.float32), 800, 400).any()
