"""The added delay D of a session, measured rather than assumed (docs/latency.md, section 3).

D = look-ahead + input hold + compute budget:
- the look-ahead is the served model's (how far its mel window reaches past a frame);
- the input hold is how late live audio reaches the session: aiortc's receive path (MIC_INPUT_MS,
  measured by benchmarks/input_hold.py) plus the arrival jitter this session's audio shows;
- the compute budget follows the p99 of the gateway's recent post-audio compute times (from a frame's
  audio being in to its mouth being pasted: inference and blend; the frame was tracked while its audio
  was awaited), within a floor and a ceiling.

`ComputeBudget` is one per gateway (every session competes for the same cores); `SessionDelay` is
one per session and only proposes a target: the A/V synchroniser moves D toward it in 20 ms steps,
and only across silence, so no speech sample is dropped or repeated (streaming/av_sync.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

# Recent samples each estimate looks at: 10 s of one session's frames at 25 fps (a budget raised by a burst
# comes back down 10 s after it), 10 s of 20 ms audio packets.
_BUDGET_WINDOW = 250
_JITTER_WINDOW = 500
# Before this many frames were timed, the budget is its ceiling (the safe side).
_BUDGET_MIN_SAMPLES = 25
# The percentiles are read per frame and per 20 ms of audio: recomputed after this many new samples, not each
# time (a percentile over 500 values per audio packet was 2 % of the gateway's Python time, py-spy --gil).
_RECOMPUTE_EVERY = 10


@dataclass(frozen=True)
class DelayParts:
    """What a session's D is made of, in ms (reported in the session's stats and metrics)."""

    lookahead_ms: float
    input_hold_ms: float
    budget_ms: float

    @property
    def total_ms(self) -> float:
        return self.lookahead_ms + self.input_hold_ms + self.budget_ms


class ComputeBudget:
    """The time a frame may take once its audio is in (inference and blend): `margin` x the p99 of the
    recent ones, plus `slack_ms`, kept within [floor_ms, ceiling_ms].

    A frame that ran out of time counts with the time it was given (it needed at least that), so a
    budget too tight for more than 1 % of frames grows until it is not.
    """

    # margin 1 and 10 ms: the p99 itself leaves 1 % of frames late (passed through), the slack covers the
    # hand-offs around the measured span (the frame's send, the audio deadline's check).
    def __init__(self, floor_ms: float, ceiling_ms: float, *, margin: float = 1.0, slack_ms: float = 10.0) -> None:
        if not 0 < floor_ms <= ceiling_ms:
            raise ValueError(f"need 0 < floor_ms <= ceiling_ms, got floor {floor_ms}, ceiling {ceiling_ms}")
        if margin < 1:
            raise ValueError(f"margin must be >= 1, got {margin}")
        self.floor_ms = float(floor_ms)
        self.ceiling_ms = float(ceiling_ms)
        self.margin = margin
        self.slack_ms = slack_ms
        self._recent: deque[float] = deque(maxlen=_BUDGET_WINDOW)
        self._p99: float | None = None  # cached (_RECOMPUTE_EVERY)
        self._new = 0

    def observe(self, seconds: float) -> None:
        """A generated frame's time from audio in to mouth pasted, or the time a frame that ran out was given."""
        self._recent.append(1000.0 * seconds)
        self._new += 1
        if self._new >= _RECOMPUTE_EVERY or len(self._recent) <= _BUDGET_MIN_SAMPLES:
            self._p99, self._new = None, 0

    @property
    def samples(self) -> int:
        return len(self._recent)

    @property
    def p99_ms(self) -> float | None:
        if self._p99 is None and self._recent:
            self._p99 = float(np.percentile(np.fromiter(self._recent, float), 99))
        return self._p99

    @property
    def ms(self) -> float:
        if len(self._recent) < _BUDGET_MIN_SAMPLES:
            return self.ceiling_ms
        return min(self.ceiling_ms, max(self.floor_ms, self.margin * self.p99_ms + self.slack_ms))

    @classmethod
    def for_gateway(cls, config) -> ComputeBudget:
        """The budget a GatewayConfig asks for; `--adaptive_budget false` pins it at the ceiling (floor = ceiling)."""
        floor = config.budget_floor_ms if config.adaptive_budget else config.compute_budget_ms
        return cls(floor, config.compute_budget_ms)


class ArrivalJitter:
    """How much later than its place in the stream live audio arrives: the p95 of each packet's
    lateness against the least delayed one (the anchor), over the recent packets, at most `ceiling_ms`
    (a connection that needs more is broken, and a delay of seconds would not mend it)."""

    def __init__(self, ceiling_ms: float = 200.0) -> None:
        self.ceiling_ms = ceiling_ms
        self._late_ms: deque[float] = deque(maxlen=_JITTER_WINDOW)
        self._ms: float | None = 0.0  # cached (_RECOMPUTE_EVERY)
        self._new = 0

    def observe(self, late_samples: int, rate: int) -> None:
        self._late_ms.append(1000.0 * max(late_samples, 0) / rate)
        self._new += 1
        if self._new >= _RECOMPUTE_EVERY:
            self._ms, self._new = None, 0

    @property
    def ms(self) -> float:
        if self._ms is None:
            self._ms = min(self.ceiling_ms, float(np.percentile(np.fromiter(self._late_ms, float), 95)))
        return self._ms


class SessionDelay:
    """One session's target D from its parts; pushed speech has no look-ahead wait and no input hold.

    Pushed speech is fed into the session a look-ahead ahead of the clock (PushSpeech's lead), so
    only the compute budget remains."""

    def __init__(
        self,
        budget: ComputeBudget,
        *,
        lookahead_ms: float,
        input_base_ms: float,
        live_input: bool,
        jitter: ArrivalJitter | None = None,
    ) -> None:
        self.budget = budget
        self.jitter = jitter if jitter is not None else ArrivalJitter()
        self._lookahead_ms = lookahead_ms if live_input else 0.0
        self._input_base_ms = input_base_ms if live_input else 0.0
        self.live_input = live_input

    def parts(self) -> DelayParts:
        hold = self._input_base_ms + (self.jitter.ms if self.live_input else 0.0)
        return DelayParts(self._lookahead_ms, hold, self.budget.ms)

    def target_ms(self) -> float:
        return self.parts().total_ms
