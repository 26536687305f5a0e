"""The generator's CPU paths (ONNX Runtime FP32 or INT8, PyTorch bf16) and the choice between them: named
explicitly, or measured for about a second at start so each machine runs its fastest.

Which one wins depends on the CPU, so it is measured, never assumed: on a 2-core Xeon with AMX, PyTorch
bf16 ran the width-0.25 generator at 1.6 ms/frame against 3.8 for FP32; on a 2-core Xeon with AVX512_BF16
but no AMX, INT8 ONNX Runtime was the fastest and bf16 slower than FP32.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from lipsync.client import contract
from lipsync.client.backends.base import BackendError, LipSyncBackend

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "int8", "bf16")
CPU_PATHS = ("fp32", "int8", "bf16")  # what "auto" chooses between, in the order a tie goes

# Written by `lipsync-export` beside the FP32 model it was quantized from (export/quantize.py). Its name
# lives here rather than in client/model_repository.py because the file is only ever found as the FP32
# model's sibling (an avatar's DIR/model.onnx has one too), never by its place in the repository.
INT8_ONNX_FILE = "model_int8.onnx"

# CPU flags of native bf16 arithmetic (x86): AMX tiles, or AVX-512 dot products. Without them oneDNN
# emulates bf16 with fp32 instructions and conversions, slower than plain fp32, so bf16 is refused there.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

MEASURE_BATCHES = (1, 8)  # a live frame alone, and a small batch the dynamic batcher forms under load
# Wall-clock for warming and timing every path at every batch: with the shipped width-0.25 generator, one
# thread on a 2-core Xeon, a round of all three paths at both batches takes ~0.17 s, so 3-4 rounds fit
# after the warm-up. At least one timed round runs, even past the budget (a path slowed ~50x by other
# processes' load once took 3 s; every path is then measured all the same, and the slow one loses).
MEASURE_BUDGET_S = 0.8


def check_precision(precision: object) -> str:
    """The precision if it is one of PRECISIONS; otherwise ValueError naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return str(precision)


def int8_path(onnx_fp32: str | Path) -> Path:
    """Where export writes the INT8 model quantized from `onnx_fp32`."""
    return Path(onnx_fp32).with_name(INT8_ONNX_FILE)


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none to read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> str | None:
    """The flag that makes bf16 native on this CPU (amx_bf16 first), or None."""
    flags = cpu_flags()
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


def require_native_bf16() -> str:
    flag = native_bf16()
    if flag is None:
        raise BackendError(
            f"bf16 needs a CPU with native bf16 ({' or '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo); this one has "
            "neither and would emulate it slower than fp32: use precision fp32 or int8"
        )
    return flag


@dataclass(frozen=True)
class CpuArtifacts:
    """The files of one set of weights that the CPU paths run: the FP32 ONNX model, its INT8 sibling and
    the PyTorch checkpoint (any may be absent). They must hold the same weights: export writes them so.

    fp32 runs the ONNX model in ONNX Runtime, or the checkpoint in PyTorch where there is no ONNX model
    (the pytorch backend's own fp32); int8 runs in ONNX Runtime, bf16 in PyTorch.
    """

    onnx_fp32: Path | None = None
    onnx_int8: Path | None = None
    checkpoint: Path | None = None

    @classmethod
    def beside(cls, onnx_fp32: str | Path, checkpoint: str | Path | None = None) -> CpuArtifacts:
        return cls(Path(onnx_fp32), int8_path(onnx_fp32), Path(checkpoint) if checkpoint else None)

    def file_for(self, precision: str) -> Path | None:
        fp32 = self.onnx_fp32 if self.onnx_fp32 is not None else self.checkpoint
        return {"fp32": fp32, "int8": self.onnx_int8, "bf16": self.checkpoint}[precision]

    def runtime(self, precision: str) -> str:
        """ "onnxruntime" or "pytorch": what runs `precision` from these files."""
        if precision == "bf16" or (precision == "fp32" and self.onnx_fp32 is None):
            return "pytorch"
        return "onnxruntime"

    def label(self, precision: str) -> str:
        runtime = "PyTorch" if self.runtime(precision) == "pytorch" else "ONNX Runtime"
        return f"{runtime} {precision.upper() if precision != 'bf16' else precision}"

    def missing(self, precision: str) -> str | None:
        """Why `precision` cannot run from these files and this CPU, or None when it can."""
        path = self.file_for(precision)
        if path is None:
            return f"no file given for {self.label(precision)}"
        if not path.is_file():
            return f"no {self.label(precision)} model at {path} (lipsync-export writes it)"
        if self.runtime(precision) == "pytorch":
            try:
                import torch  # noqa: F401
            except ImportError:
                return "PyTorch is not installed"
        if precision == "bf16" and native_bf16() is None:
            return "no native bf16 on this CPU"
        return None


def open_path(
    precision: str, artifacts: CpuArtifacts, *, threads: int | None = None, max_batch: int = contract.MAX_BATCH
) -> LipSyncBackend:
    """The backend of one CPU path (not "auto"); BackendError naming what is missing when it cannot run here."""
    if check_precision(precision) == "auto":
        raise ValueError("open_path runs one path: fp32, int8 or bf16 (choose() resolves auto)")
    reason = artifacts.missing(precision)
    if reason is not None:
        raise BackendError(f"precision {precision} cannot run: {reason}")
    path = artifacts.file_for(precision)
    if artifacts.runtime(precision) == "pytorch":
        from lipsync.client.backends.pytorch import PyTorchBackend

        return PyTorchBackend(path, device="cpu", bf16=precision == "bf16", threads=threads, max_batch=max_batch)
    from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, threads=threads, max_batch=max_batch)


@dataclass(frozen=True)
class PathTiming:
    """One path's measured speed: the best ms per frame seen at each batch size."""

    precision: str
    ms_per_frame: dict[int, float]
    label: str = ""  # what ran it, e.g. "ONNX Runtime INT8"

    @property
    def score(self) -> float:
        # Geometric mean over the batches: a live frame's latency and a small batch's throughput count
        # alike, whichever is the larger number.
        return math.exp(sum(math.log(ms) for ms in self.ms_per_frame.values()) / len(self.ms_per_frame))

    def describe(self) -> str:
        figures = ", ".join(f"batch {b}: {ms:.2f} ms/frame" for b, ms in sorted(self.ms_per_frame.items()))
        return f"{self.label or self.precision} {figures}"


@dataclass(frozen=True)
class Choice:
    """The CPU path that will run, with its open backend and, when it was measured, every path's figures."""

    precision: str
    backend: LipSyncBackend = field(repr=False)
    reason: str
    timings: tuple[PathTiming, ...] = ()
    measure_s: float = 0.0
    label: str = ""  # what runs it, e.g. "ONNX Runtime INT8"

    def describe(self) -> str:
        text = f"{self.label or self.precision} on the CPU ({self.reason})"
        if self.timings:
            text += f"; measured in {self.measure_s:.2f} s: " + "; ".join(t.describe() for t in self.timings)
        return text


def _measure_inputs(batch: int) -> tuple[np.ndarray, np.ndarray]:
    # Timing does not depend on the values (dense kernels); these are in the inputs' ranges all the same.
    rng = np.random.default_rng(0)
    mel = rng.uniform(-4.0, 4.0, contract.MEL_INPUT.batched_shape(batch)).astype(np.float32)
    faces = rng.uniform(0.0, 1.0, contract.FACE_INPUT.batched_shape(batch)).astype(np.float32)
    return mel, faces


def measure(
    backends: Mapping[str, LipSyncBackend],
    *,
    batches: tuple[int, ...] = MEASURE_BATCHES,
    budget_s: float = MEASURE_BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
    labels: Mapping[str, str] | None = None,
) -> tuple[PathTiming, ...]:
    """Time every backend at every batch size within about `budget_s`, in interleaved rounds.

    Rounds interleave the paths so that load from other processes falls on all of them alike, and each
    figure is the fastest call seen: on a shared machine the minimum is what other work disturbs least.
    """
    if not backends:
        raise ValueError("measure needs at least one backend")
    batches = tuple(sorted({min(b, *(bk.max_batch for bk in backends.values())) for b in batches}))
    inputs = {b: _measure_inputs(b) for b in batches}
    deadline = clock() + budget_s
    for backend in backends.values():  # warm-up: first calls build kernels and allocate
        for b in batches:
            backend.infer(*inputs[b])
    best: dict[str, dict[int, float]] = {name: {} for name in backends}
    rounds = 0
    while rounds == 0 or clock() < deadline:
        for name, backend in backends.items():
            for b in batches:
                started = clock()
                backend.infer(*inputs[b])
                ms = (clock() - started) * 1000 / b
                best[name][b] = min(ms, best[name].get(b, math.inf))
        rounds += 1
    log.debug("measured %d rounds of %s", rounds, ", ".join(backends))
    return tuple(PathTiming(name, dict(figures), (labels or {}).get(name, "")) for name, figures in best.items())


def choose(
    precision: str,
    artifacts: CpuArtifacts,
    *,
    candidates: tuple[str, ...] = CPU_PATHS,
    threads: int | None = None,
    max_batch: int = contract.MAX_BATCH,
    batches: tuple[int, ...] = MEASURE_BATCHES,
    budget_s: float = MEASURE_BUDGET_S,
) -> Choice:
    """Open the CPU path `precision` names, or with "auto" the fastest of `candidates` that can run here.

    An explicit precision is honoured or refused (BackendError saying why); "auto" measures the paths whose
    files exist and that this CPU runs natively, and keeps the fastest open (the others are closed).
    """
    check_precision(precision)
    for name in candidates:
        if name not in CPU_PATHS:
            raise ValueError(f"unknown CPU path {name!r} among the candidates; they are {', '.join(CPU_PATHS)}")
    if precision != "auto":
        if precision not in candidates:
            raise BackendError(f"precision {precision} is not a path of this backend; it runs {', '.join(candidates)}")
        backend = open_path(precision, artifacts, threads=threads, max_batch=max_batch)
        return Choice(precision, backend, reason="chosen explicitly", label=artifacts.label(precision))
    skipped = {name: artifacts.missing(name) for name in candidates}
    runnable = [name for name in candidates if skipped[name] is None]
    if not runnable:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise BackendError(f"precision auto found no CPU path that can run: {reasons}")
    left_out = ", ".join(f"{name} ({why})" for name, why in skipped.items() if why is not None)
    if len(runnable) == 1:
        backend = open_path(runnable[0], artifacts, threads=threads, max_batch=max_batch)
        reason = "auto: the only path that can run here" + (f"; left out {left_out}" if left_out else "")
        return Choice(runnable[0], backend, reason=reason, label=artifacts.label(runnable[0]))
    return choose_fastest(
        {name: lambda name=name: open_path(name, artifacts, threads=threads, max_batch=max_batch) for name in runnable},
        batches=batches,
        budget_s=budget_s,
        note=f"left out {left_out}" if left_out else "",
        labels={name: artifacts.label(name) for name in runnable},
    )


def choose_fastest(
    openers: Mapping[str, Callable[[], LipSyncBackend]],
    *,
    batches: tuple[int, ...] = MEASURE_BATCHES,
    budget_s: float = MEASURE_BUDGET_S,
    note: str = "",
    labels: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Choice:
    """Open every path, measure them together, keep the fastest open and close the rest."""
    backends: dict[str, LipSyncBackend] = {}
    try:
        for name, opener in openers.items():
            backends[name] = opener()
        started = clock()
        timings = measure(backends, batches=batches, budget_s=budget_s, labels=labels, clock=clock)
        elapsed = clock() - started
    except BaseException:
        for backend in backends.values():
            backend.close()
        raise
    fastest = min(timings, key=lambda t: t.score)
    for name, backend in backends.items():
        if name != fastest.precision:
            backend.close()
    reason = "auto: the fastest measured here" + (f"; {note}" if note else "")
    choice = Choice(fastest.precision, backends[fastest.precision], reason, timings, elapsed, fastest.label)
    log.info("CPU path: %s", choice.describe())
    return choice
