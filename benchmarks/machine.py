"""One line naming the machine a benchmark ran on, for every printed and saved result."""

from __future__ import annotations

import os
import platform
from functools import cache


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@cache
def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return None


def describe_machine() -> str:
    cores = len(os.sched_getaffinity(0))
    text = f"{cpu_model()}, {cores} cores usable, {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    gpu = gpu_name()
    return f"{text}, GPU {gpu}" if gpu else f"{text}, no GPU"


def report_header(plan: object, started: float, load_before: tuple[float, float, float]) -> dict:
    """The fields every benchmark report opens with: machine, date, duration, plan, and the load it ran under."""
    import dataclasses
    import time

    return {
        "machine": describe_machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "seconds": round(time.perf_counter() - started, 1),
        "plan": dataclasses.asdict(plan),
        # Other processes on a shared machine skew every figure; the 1-minute load says how much.
        "load_average_1min": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
    }
