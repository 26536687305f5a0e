"""The one observer of the gateway: stage latencies, queue depths, drops, for Prometheus and the benchmark.

Every session reports here; Prometheus reads the per-gateway registry, the stats endpoint and the
benchmark read the per-session recent samples (bounded) for exact percentiles.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter

from lipsync.streaming.delay import DelayParts

# Latency buckets from 1 ms to 2 s: mouth generation is tens of ms, the added delay hundreds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
# Stages timed per frame; "mouth" is their sum for a generated frame (docs/latency.md, section 1).
STAGES = ("track", "audio_wait", "infer", "blend", "mouth", "added_delay")
_RECENT = 3000  # samples per stage kept per session (two minutes at 25 fps)


def percentile(values: list[float] | deque[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


@dataclass
class SessionStats:
    """What one session has done so far; read by /sessions/{id}/stats and the benchmark."""

    session_id: str
    started: float = field(default_factory=time.monotonic)
    stage_s: dict[str, deque[float]] = field(default_factory=lambda: {s: deque(maxlen=_RECENT) for s in STAGES})
    outcomes: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    queues: dict[str, int] = field(default_factory=dict)
    frames_out: int = 0
    out_times: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    faces_lost: int = 0
    audio_underruns: int = 0
    downscaled: int = 0  # incoming frames over the size limit, scaled down to fit
    delay_ms: float = 0.0  # the added delay D now
    delay_parts_ms: dict[str, float] = field(default_factory=dict)  # what D is heading for, by part
    delay_changes: int = 0  # 20 ms steps D has taken

    def fps(self) -> float:
        if len(self.out_times) < 2:
            return 0.0
        span = self.out_times[-1] - self.out_times[0]
        return (len(self.out_times) - 1) / span if span > 0 else 0.0

    def samples(self) -> dict[str, list[float]]:
        """The recent per-frame seconds of every stage (bounded), for pooling across sessions."""
        return {stage: list(values) for stage, values in self.stage_s.items()}

    def summary(self) -> dict[str, object]:
        def ms(stage: str, q: float) -> float | None:
            value = percentile(self.stage_s[stage], q)
            return None if value is None else round(1000 * value, 2)

        return {
            "session_id": self.session_id,
            "uptime_s": round(time.monotonic() - self.started, 2),
            "mouth_ms": {"p50": ms("mouth", 50), "p95": ms("mouth", 95), "p99": ms("mouth", 99)},
            "stages_ms_p50": {s: ms(s, 50) for s in STAGES},
            "stages_ms": {s: {"p50": ms(s, 50), "p95": ms(s, 95), "p99": ms(s, 99)} for s in STAGES},
            "added_delay_ms": self.delay_ms,
            "delay_ms": {"now": self.delay_ms, **self.delay_parts_ms, "changes": self.delay_changes},
            "fps": round(self.fps(), 2),
            "frames_out": self.frames_out,
            "outcomes": dict(self.outcomes),
            "dropped": dict(self.drops),
            "frames_downscaled": self.downscaled,
            "faces_lost": self.faces_lost,
            "audio_underruns": self.audio_underruns,
            "queues": dict(self.queues),
        }


class GatewayObserver:
    """Collects everything the sessions report; one per gateway (and its own Prometheus registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._active = Gauge("lipsync_sessions_active", "Sessions now open", registry=r)
        self._sessions = PromCounter("lipsync_sessions", "Sessions opened", registry=r)
        self._rejected = PromCounter("lipsync_requests_rejected", "Requests refused", ["reason"], registry=r)
        self._stage = Histogram(
            "lipsync_stage_seconds", "Per-frame time in each stage", ["stage"], buckets=_BUCKETS, registry=r
        )
        self._queue = Gauge("lipsync_queue_depth", "Items waiting, summed over sessions", ["queue"], registry=r)
        self._dropped = PromCounter("lipsync_dropped_frames", "Video frames dropped", ["reason"], registry=r)
        self._frames = PromCounter("lipsync_frames", "Video frames sent, by outcome", ["outcome"], registry=r)
        self._faces_lost = PromCounter("lipsync_faces_lost", "Times a tracked face was lost", registry=r)
        self._downscaled = PromCounter(
            "lipsync_frames_downscaled", "Incoming frames over the size limit, scaled down", registry=r
        )
        self._underruns = PromCounter(
            "lipsync_audio_underruns", "Outgoing audio frames filled with silence", registry=r
        )
        self._backend_errors = PromCounter("lipsync_backend_errors", "Failed inference requests", ["kind"], registry=r)
        self._delay = Gauge(
            "lipsync_delay_ms",
            "Added delay of the latest reporting session: now, and the parts of its target",
            ["part"],
            registry=r,
        )
        self.sessions: dict[str, SessionStats] = {}
        self.finished: deque[SessionStats] = deque(maxlen=64)

    # -- session lifecycle
    def session_started(self, session_id: str) -> SessionStats:
        stats = SessionStats(session_id)
        self.sessions[session_id] = stats
        self._sessions.inc()
        self._active.set(len(self.sessions))
        return stats

    def session_ended(self, session_id: str) -> None:
        stats = self.sessions.pop(session_id, None)
        if stats is not None:
            self.finished.append(stats)
            for queue in stats.queues:
                self._queue.labels(queue).set(sum(s.queues.get(queue, 0) for s in self.sessions.values()))
        self._active.set(len(self.sessions))

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    # -- per-frame reports
    def stage(self, session_id: str, stage: str, seconds: float) -> None:
        self._stage.labels(stage).observe(seconds)
        if (stats := self.sessions.get(session_id)) is not None:
            stats.stage_s[stage].append(seconds)

    def queue_depth(self, session_id: str, queue: str, depth: int) -> None:
        if (stats := self.sessions.get(session_id)) is None:
            return
        stats.queues[queue] = depth
        self._queue.labels(queue).set(sum(s.queues.get(queue, 0) for s in self.sessions.values()))

    def dropped(self, session_id: str, reason: str, n: int = 1) -> None:
        self._dropped.labels(reason).inc(n)
        if (stats := self.sessions.get(session_id)) is not None:
            stats.drops[reason] += n

    def downscaled(self, session_id: str) -> None:
        self._downscaled.inc()
        if (stats := self.sessions.get(session_id)) is not None:
            stats.downscaled += 1

    def frame_sent(self, session_id: str, outcome: str, when: float) -> None:
        self._frames.labels(outcome).inc()
        if (stats := self.sessions.get(session_id)) is not None:
            stats.outcomes[outcome] += 1
            stats.frames_out += 1
            stats.out_times.append(when)

    def face_lost(self, session_id: str) -> None:
        self._faces_lost.inc()
        if (stats := self.sessions.get(session_id)) is not None:
            stats.faces_lost += 1

    def audio_underrun(self, session_id: str) -> None:
        self._underruns.inc()
        if (stats := self.sessions.get(session_id)) is not None:
            stats.audio_underruns += 1

    def backend_error(self, kind: str) -> None:
        self._backend_errors.labels(kind).inc()

    def set_delay(self, session_id: str, delay_ms: float, parts: DelayParts | None = None, changes: int = 0) -> None:
        """A session's added delay now and, when given, the parts of the target it follows (streaming/delay.py)."""
        if (stats := self.sessions.get(session_id)) is None:
            return
        stats.delay_ms = round(delay_ms, 1)
        stats.delay_changes = changes
        self._delay.labels("now").set(delay_ms)
        if parts is not None:
            stats.delay_parts_ms = {
                "target": round(parts.total_ms, 1),
                "lookahead": round(parts.lookahead_ms, 1),
                "input_hold": round(parts.input_hold_ms, 1),
                "budget": round(parts.budget_ms, 1),
            }
            for part, value in stats.delay_parts_ms.items():
                self._delay.labels(part).set(value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
