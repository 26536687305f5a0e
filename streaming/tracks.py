"""The outgoing aiortc tracks: lip-synced video and the speech delayed to match.

Both take their timestamps from the session clock (video 90 kHz, audio 48 kHz), so a receiver
that syncs on RTP timestamps sees them aligned. Audio frames are 20 ms, 960 samples of s16
mono at 48 kHz, made here (aiortc's own AudioStreamTrack would give 8 kHz).
"""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack

from lipsync.client.streaming_mel import StreamingResampler
from lipsync.streaming.av_sync import AvSynchronizer
from lipsync.streaming.frames import CLOCK_RATE

VIDEO_RATE = 90_000
AUDIO_RATE = 48_000
AUDIO_SAMPLES = AUDIO_RATE // 50  # 960


def _video_frame(image: np.ndarray, pts: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(image, format="bgr24")
    frame.pts = pts
    frame.time_base = Fraction(1, VIDEO_RATE)
    return frame


class LipSyncVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, sync: AvSynchronizer) -> None:
        super().__init__()
        self._sync = sync

    async def recv(self) -> av.VideoFrame:
        out, position = await self._sync.next_video_out()
        pts = position * VIDEO_RATE // CLOCK_RATE
        # Building the frame copies and converts the picture: off the event loop.
        return await asyncio.get_running_loop().run_in_executor(None, _video_frame, out.image, pts)


class DelayedAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, sync: AvSynchronizer) -> None:
        super().__init__()
        self._sync = sync
        self._upsampler = StreamingResampler(CLOCK_RATE, AUDIO_RATE)
        self._pending = np.zeros(0, np.float32)

    def _to_48k(self, samples: np.ndarray) -> np.ndarray:
        self._pending = np.concatenate([self._pending, self._upsampler.push(samples)])
        if len(self._pending) < AUDIO_SAMPLES:  # only while the filter fills: a few ms of silence first
            self._pending = np.concatenate([np.zeros(AUDIO_SAMPLES - len(self._pending), np.float32), self._pending])
        out, self._pending = self._pending[:AUDIO_SAMPLES], self._pending[AUDIO_SAMPLES:]
        return out

    async def recv(self) -> av.AudioFrame:
        samples, position = await self._sync.next_audio()
        pcm = await asyncio.get_running_loop().run_in_executor(None, self._to_48k, samples)
        frame = av.AudioFrame.from_ndarray(
            (np.clip(pcm, -1, 1) * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = position * (AUDIO_RATE // CLOCK_RATE)
        frame.time_base = Fraction(1, AUDIO_RATE)
        return frame
