"""How long aiortc's receive path holds live audio: the "input hold" part of the gateway's delay.

    .venv/bin/python -m lipsync.benchmarks.input_hold [--seconds 10]

Two aiortc peers in this process, over loopback: one sends 20 ms Opus frames of a tone, paced in real
time, and notes when each left its track; the other notes when its track hands each one out. On one
machine both read the same monotonic clock, so the difference is the hold itself: encoding, the
network, the jitter buffer (aiortc keeps audio until 4 more packets have arrived), decoding. The
gateway's delay adds one packet duration to it (a frame's first sample was captured 20 ms before the
frame was complete): streaming/config.MIC_INPUT_MS. Writes benchmarks/results/input_hold.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection

from lipsync.benchmarks.machine import report_header
from lipsync.streaming.config import MIC_INPUT_MS
from lipsync.streaming.ice import allow_loopback_candidates, rtc_configuration

RESULTS = Path(__file__).parent / "results"
RATE = 48_000
SAMPLES = RATE // 50  # 20 ms


@dataclass(frozen=True)
class Plan:
    seconds: float
    warmup_s: float = 1.0  # the first packets meet an empty jitter buffer and cold codecs


class PacedTone(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames, released in real time; remembers when each frame left (by pts)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[int, float] = {}
        self._start: float | None = None
        self._index = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._index * SAMPLES / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        t = (self._index * SAMPLES + np.arange(SAMPLES)) / RATE
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._index * SAMPLES
        frame.time_base = Fraction(1, RATE)
        self.sent[frame.pts] = time.monotonic()
        self._index += 1
        return frame


async def measure(plan: Plan) -> np.ndarray:
    """Seconds from a frame leaving the sender's track to the receiver's track handing it out."""
    allow_loopback_candidates()
    sender, receiver = RTCPeerConnection(rtc_configuration()), RTCPeerConnection(rtc_configuration())
    tone = PacedTone()
    sender.addTrack(tone)
    arrivals: list[tuple[int, float]] = []
    first_pts: list[int] = []

    async def consume(track) -> None:
        while True:
            frame = await track.recv()
            now = time.monotonic()
            if not first_pts:
                first_pts.append(frame.pts)
            arrivals.append((frame.pts - first_pts[0], now))

    tasks: list[asyncio.Task] = []
    receiver.on("track", lambda track: tasks.append(asyncio.create_task(consume(track))))
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        await asyncio.sleep(plan.warmup_s + plan.seconds)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sender.close()
        await receiver.close()
    # The receiver's pts count from its own random RTP start: matched to the sender's by order, which
    # holds on loopback (no loss); the first sent frame is the first received one.
    sent = sorted(tone.sent.items())
    first_sent = sent[0][0]
    sent_at = dict(sent)
    holds = [
        arrived - sent_at[pts + first_sent]
        for pts, arrived in arrivals
        if pts + first_sent in sent_at and sent_at[pts + first_sent] - sent[0][1] >= plan.warmup_s
    ]
    return np.asarray(holds, dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lipsync.benchmarks.input_hold", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time after a 1 s warm-up")
    parser.add_argument("--out", type=Path, default=RESULTS / "input_hold.json")
    args = parser.parse_args(argv)
    plan = Plan(seconds=args.seconds)
    load_before = os.getloadavg()
    started = time.perf_counter()
    holds = asyncio.run(measure(plan))
    if not len(holds):
        print("no audio frame came through", file=sys.stderr)
        return 1
    ms = {f"p{q}": round(float(np.percentile(1000 * holds, q)), 1) for q in (5, 50, 95, 99)}
    report = {
        **report_header(plan, started, load_before),
        "notes": "aiortc sender -> receiver over loopback in one process, Opus 48 kHz mono, 20 ms frames paced in "
        "real time; hold = receiver track hands the frame out - sender track released it (one monotonic clock)",
        "frames": len(holds),
        "hold_ms": ms,
        "input_ms_measured": round(ms["p50"] + 1000 * SAMPLES / RATE, 1),
        "mic_input_ms_assumed": MIC_INPUT_MS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(holds)} frames: hold p5/p50/p95/p99 {ms['p5']}/{ms['p50']}/{ms['p95']}/{ms['p99']} ms; "
          f"with the 20 ms frame: {report['input_ms_measured']} ms (the gateway assumes {MIC_INPUT_MS} ms)")  # fmt: skip
    print(f"machine: {report['machine']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
