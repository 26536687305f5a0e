"""Wall-clock time per named stage of a batch job, for the offline command's closing summary."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def summary(self, frames: int, wall_seconds: float) -> str:
        lines = [f"{'stage':<14}{'total s':>10}{'ms/frame':>10}{'share':>8}"]
        for name, total in self.seconds.items():
            per_frame = 1000 * total / max(frames, 1)
            share = 100 * total / max(wall_seconds, 1e-9)
            lines.append(f"{name:<14}{total:>10.2f}{per_frame:>10.2f}{share:>7.1f}%")
        fps = frames / max(wall_seconds, 1e-9)
        lines.append(f"{'wall':<14}{wall_seconds:>10.2f}{1000 * wall_seconds / max(frames, 1):>10.2f}   {fps:.1f} fps")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)
