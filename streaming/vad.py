"""Speech/silence decisions on the session clock: webrtcvad (mode 3) behind an energy gate, with hangover.

A video frame's mouth is generated only when its interval holds speech, so silence shows the
input face unchanged instead of a chattering mouth.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import webrtcvad

from lipsync.streaming.frames import CLOCK_RATE


class VoiceActivity:
    """Decides speech per 20 ms frame of 16 kHz float32 samples pushed in order from clock 0.

    Decisions are final as soon as a frame is complete (the hangover only looks back), so a
    caller can ask about any interval that ends before `decided_until`.
    """

    def __init__(
        self,
        mode: int = 3,
        *,
        frame_ms: int = 20,
        energy_dbfs: float = -50.0,
        hangover_ms: int = 120,
        history_s: float = 20.0,
    ) -> None:
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"webrtcvad takes 10, 20 or 30 ms frames, got {frame_ms}")
        self._vad = webrtcvad.Vad(mode)
        self.frame_len = CLOCK_RATE * frame_ms // 1000
        self._gate = 10.0 ** (energy_dbfs / 20.0)  # RMS of full-scale float samples
        self._hangover_frames = -(-hangover_ms // frame_ms)
        self._pending = np.zeros(0, np.float32)
        self._decisions: deque[bool] = deque(maxlen=int(history_s * 1000 / frame_ms))
        self._first = 0  # frame index of _decisions[0]
        self._since_speech = self._hangover_frames + 1

    @property
    def decided_until(self) -> int:
        """Clock position (samples) up to which every frame has a decision."""
        return (self._first + len(self._decisions)) * self.frame_len

    def push(self, samples: np.ndarray) -> None:
        data = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        n = len(data) // self.frame_len
        for i in range(n):
            self._decide(data[i * self.frame_len : (i + 1) * self.frame_len])
        self._pending = data[n * self.frame_len :]

    def _decide(self, frame: np.ndarray) -> None:
        loud = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) >= self._gate
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        speech = loud and self._vad.is_speech(pcm, CLOCK_RATE)
        self._since_speech = 0 if speech else self._since_speech + 1
        if len(self._decisions) == self._decisions.maxlen:
            self._first += 1
        self._decisions.append(self._since_speech <= self._hangover_frames)

    def speech_in(self, start: int, end: int) -> bool | None:
        """Whether any frame overlapping [start, end) is speech; None if not all decided yet."""
        if end > self.decided_until:
            return None
        lo = max(start // self.frame_len - self._first, 0)
        hi = -(-end // self.frame_len) - self._first
        return any(self._decisions[i] for i in range(lo, max(lo, hi)))
