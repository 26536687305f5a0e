"""GPU benchmark: one prepared run that measures the generator, the live path and training on a borrowed GPU host.

    python -m lipsync.benchmarks.gpu [--device cuda|cpu] [--quick] [--out DIR]

Sections, each timed; a failing section is recorded (with its error) and the run goes on:

1. pytest_gpu  the project's `gpu`-marked tests that need neither tritonserver nor TensorRT (a subprocess);
               with --device cpu CUDA is hidden from them, so they skip, and the counts say so.
2. generator   Wav2Lip latency p50/p99 and frames/s per width x dtype x mode (eager, CUDA graphs) x batch,
               the device's fastest matmul peak (bf16, or fp32 on a CPU without bf16 units) in the same run, and each point's TFLOP/s as a share of it
               (FLOPs counted once per width with torch.utils.flop_counter).
3. backend     the live path through PyTorchBackend (FP16 + CUDA graphs on CUDA, FP32 on CPU): batch-1
               latency, batched calls, and how many 25 fps sessions fit with p99 < 40 ms.
4. training    a short run of the project's own generator trainer (`lipsync-train generator`) on a small
               synthetic corpus (`lipsync-train corpus --boxes render`, needs espeak-ng): steps/s, frames/s,
               the loss curve and the speed-up over the 2-core CPU reference (--cpu-seconds-per-step).
5. compile     torch.compile points of section 2 (CUDA and full runs only), last because a compile can
               take minutes; the first compile over --compile-limit-s stops the section.

Writes two files into --out (default benchmarks/results/): gpu.json (gpu_<device>[_quick].json for other
runs) with the machine, versions and every figure, rewritten after each section so a killed run keeps what
it measured; and the PNG beside it (frames/s against batch per configuration). Prints a summary table.
Nothing is downloaded. A full CUDA run should take 5-8 minutes on an H200 (training about 3 of them, the
compile section at most 150 s); `--skip compile` or a lower --train-seconds trims it.
Point --out at the folder you collect: the JSON is complete up to the last finished section even if killed.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lipsync.benchmarks.machine import cpu_model, describe_machine, report_header
from lipsync.client.model_repository import SHIPPED_EXPERT
from lipsync.export.verify import random_inputs

RESULTS = Path(__file__).parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SECTIONS = ("pytest_gpu", "generator", "backend", "training", "compile")

FRAME_PERIOD_S = 0.04  # 25 fps: one frame per session every 40 ms, and the live path's latency budget
WINDOW_FRAMES = 5  # the trainer's windows: batch_size x 5 frames per step
PAPER_GFLOP_PER_FRAME = 7.9  # width 1.0; the fallback when the FLOP counter fails (FLOPs scale ~ width^2)
CPU_REFERENCE = {"width": 0.25, "batch_size": 8}  # what --cpu-seconds-per-step was measured with (training/config.py)
# The gpu tests that need a tritonserver or TensorRT, left out: neither exists on the borrowed host.
NEEDS_SERVER_OR_TENSORRT = "not tensorrt and not triton and not embedded"


class SectionSkipped(Exception):
    """A section cannot run here (no espeak-ng, no CUDA, --quick); the message is the reason."""


@dataclass(frozen=True)
class TrainRun:
    """One trainer run: a preset of training/config.py, overrides, and the wall time it may take."""

    name: str
    preset: str
    overrides: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class Plan:
    device: str
    quick: bool
    widths: tuple[float, ...]
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]  # "eager", "cuda graphs"
    batches: tuple[int, ...]
    compile_dtypes: tuple[str, ...]  # empty: no compile section
    compile_budget_s: float  # the compile section starts no new compile after this long
    seconds_per_point: float
    min_calls: int
    max_calls: int
    warmup_calls: int
    peak_size: int  # square bf16 matmul for the peak
    backend_batches: tuple[int, ...]
    max_sessions: int
    session_seconds: float
    session_budget_s: float
    pytest_timeout_s: float
    corpus_clips: int
    corpus_split: str
    train_runs: tuple[TrainRun, ...] = field(default=())


def make_plan(device: str, quick: bool, widths: tuple[float, ...] | None, train_seconds: float | None) -> Plan:
    """The run's scale: the full sweep on CUDA, a few seconds per section with --quick on a CPU."""
    cuda = device == "cuda"
    if cuda and not quick:
        seconds = train_seconds or 90.0
        runs = (
            TrainRun("paper: width 1.0, batch 16", "paper", {"log_interval": 10, "num_workers": 8}, seconds),
            # The CPU reference's own configuration, so its speed-up compares like with like.
            TrainRun("cpu-small on cuda: width 0.25, batch 8", "cpu-small",
                     {"log_interval": 10, "num_workers": 4, "torch_threads": 0}, seconds / 3),
        )  # fmt: skip
        return Plan(device, quick, widths or (1.0, 0.25), ("fp32", "fp16", "bf16"), ("eager", "cuda graphs"),
                    (1, 8, 32, 128, 512), ("fp16",), 150.0, seconds_per_point=0.5, min_calls=5, max_calls=300,
                    warmup_calls=3, peak_size=8192, backend_batches=(1, 2, 4, 8, 16, 32), max_sessions=1024,
                    session_seconds=2.0, session_budget_s=30.0, pytest_timeout_s=240.0, corpus_clips=48,
                    corpus_split="0.8,0.1,0.1", train_runs=runs)  # fmt: skip
    if quick:
        # Width 0.125 would leave 2 channels in the narrowest layer; 0.22 is the narrowest the network allows.
        runs = (TrainRun("tiny: width 0.25, batch 2", "tiny", {"steps": 6, "log_interval": 1}, train_seconds or 90.0),)
        return Plan(device, quick, widths or (0.25, 0.22), ("fp32", "fp16", "bf16") if cuda else ("fp32", "bf16"),
                    ("eager", "cuda graphs") if cuda else ("eager",), (1, 4), (), 0.0, seconds_per_point=0.3,
                    min_calls=3, max_calls=50, warmup_calls=2, peak_size=2048 if cuda else 1024,
                    backend_batches=(1, 2, 4), max_sessions=8, session_seconds=1.0, session_budget_s=8.0,
                    pytest_timeout_s=120.0, corpus_clips=6, corpus_split="0.5,0.25,0.25", train_runs=runs)  # fmt: skip
    runs = (TrainRun("cpu-small: width 0.25, batch 8", "cpu-small", {"log_interval": 5}, train_seconds or 120.0),)
    return Plan(device, quick, widths or (1.0, 0.25), ("fp32", "bf16"), ("eager",), (1, 8, 32), ("fp32",), 300.0,
                seconds_per_point=2.0, min_calls=3, max_calls=100, warmup_calls=1, peak_size=2048,
                backend_batches=(1, 2, 4, 8), max_sessions=16, session_seconds=2.0, session_budget_s=30.0,
                pytest_timeout_s=300.0, corpus_clips=12, corpus_split="0.5,0.25,0.25", train_runs=runs)  # fmt: skip


# ------------------------------------------------------------------------------------------ timing helpers


def synchronizer(device: str) -> Callable[[], None]:
    """What to call around each timed call: CUDA work is asynchronous, its cost only shows after a sync."""
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def timed_calls(call: Callable[[], object], sync: Callable[[], None], plan: Plan) -> list[float]:
    """Seconds per call after warm-up: at least min_calls, then until seconds_per_point or max_calls."""
    for _ in range(plan.warmup_calls):
        call()
    sync()
    latencies: list[float] = []
    deadline = time.perf_counter() + plan.seconds_per_point
    while len(latencies) < plan.min_calls or (time.perf_counter() < deadline and len(latencies) < plan.max_calls):
        started = time.perf_counter()
        call()
        sync()
        latencies.append(time.perf_counter() - started)
    return latencies


def latency_figures(latencies_s: list[float], frames_per_call: int) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000
    return {
        "calls": len(latencies_s),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "fps": round(frames_per_call * 1000 / float(ms.mean()), 2),
    }


def failure(exc: BaseException, **where: Any) -> dict[str, Any]:
    """A point that could not be measured, kept in the report with its error instead of ending the section."""
    return {**where, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a figure that is not finite is written as null."""
    return value if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------------------------ 1. pytest


def parse_pytest_counts(output: str) -> dict[str, int]:
    """Counts from pytest's last summary line, e.g. '1 passed, 3 skipped, 441 deselected in 6.7s'."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "deselected": 0, "errors": 0, "xfailed": 0, "xpassed": 0}
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)]
    if summary:
        for number, word in re.findall(
            r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", summary[-1]
        ):
            counts["errors" if word.startswith("error") else word] = int(number)
    return counts


def section_pytest(plan: Plan) -> dict[str, Any]:
    """The gpu-marked tests in a subprocess, with a timeout; on --device cpu CUDA is hidden so they skip."""
    if not (REPO_ROOT / "tests").is_dir():
        raise SectionSkipped(f"no tests/ folder next to the package ({REPO_ROOT}): an installed copy, not a checkout")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-k", NEEDS_SERVER_OR_TENSORRT,
           "-p", "no:cacheprovider", "--continue-on-collection-errors"]  # fmt: skip
    env = dict(os.environ)
    if plan.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=plan.pytest_timeout_s
        )
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, returncode = f"{exc.stdout or ''}{exc.stderr or ''}\n[timed out after {plan.pytest_timeout_s} s]", None
    counts = parse_pytest_counts(output)
    # A test module that fails to import (aiortc or playwright absent on the host) is an error, not a failed test.
    errors = sorted({m.group(1) for m in re.finditer(r"^ERROR (\S+)", output, re.MULTILINE)})
    return {
        "command": " ".join(cmd[1:]),
        "returncode": returncode,
        "test_seconds": round(time.perf_counter() - started, 1),
        **counts,
        "gpu_tests_passed": counts["passed"] > 0 and counts["failed"] == 0 and returncode is not None,
        "error_modules": errors,
        "note": "CUDA hidden (--device cpu): the gpu tests skip" if plan.device == "cpu" else "",
        "output_tail": output[-3000:],
    }


# ------------------------------------------------------------------------------------------ 2. generator


def _matmul_rate(device: str, size: int, dtype: torch.dtype, seconds: float) -> float:
    """FLOP/s of a square matmul in `dtype`, best of 3 rounds."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=gen) for _ in range(2))
    out = torch.empty_like(a)
    sync = synchronizer(device)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    sync()
    best = 0.0
    for _ in range(3):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3 or count < 2:
            torch.matmul(a, b, out=out)
            count += 1
        sync()
        best = max(best, 2 * size**3 * count / (time.perf_counter() - started))
    return best


def matmul_peak(device: str, size: int, seconds: float = 1.5) -> dict[str, Any]:
    """The device's fastest matmul rate, bf16 or fp32: the ceiling every generator figure is compared with.

    On a GPU and on CPUs with AMX or AVX-512 BF16 that is bf16. A CPU without them emulates bf16 far
    below its fp32 rate (on this project's AVX2-only EPYC, an fp32 network ran at 25x the bf16
    "peak"), so there the ceiling is fp32's.
    """
    rates = {"bf16": _matmul_rate(device, size, torch.bfloat16, seconds)}
    if device == "cpu":
        rates["fp32"] = _matmul_rate(device, size, torch.float32, seconds)
    dtype = max(rates, key=rates.get)
    return {"tflops": round(rates[dtype] / 1e12, 3), "dtype": dtype, "size": size,
            "tflops_by_dtype": {k: round(v / 1e12, 3) for k, v in rates.items()}}  # fmt: skip


@cache
def generator_flops(width: float) -> tuple[float, str]:
    """FLOPs per frame at this width (counted on one CPU frame) and where the figure comes from."""
    from torch.utils.flop_counter import FlopCounterMode

    from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig

    try:
        model = Wav2Lip(Wav2LipConfig(width=width)).eval()
        mel, faces = (torch.from_numpy(a) for a in random_inputs(1))
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(mel, faces)
        return float(counter.get_total_flops()), "torch.utils.flop_counter"
    except Exception as exc:  # the counter is a convenience: the paper's figure scaled by width^2 is close
        return PAPER_GFLOP_PER_FRAME * 1e9 * width**2, f"7.9 GFLOP x width^2 (flop counter failed: {exc})"


def load_generator(width: float) -> tuple[torch.nn.Module, str]:
    """The shipped checkpoint where its width matches, else random weights (timing depends on the width only)."""
    from lipsync.client.backends import DEFAULT_CHECKPOINT
    from lipsync.client.networks.wav2lip import Wav2Lip, Wav2LipConfig

    if Path(DEFAULT_CHECKPOINT).is_file():
        shipped = Wav2Lip.from_checkpoint(DEFAULT_CHECKPOINT)
        if math.isclose(shipped.config.width, width):
            return shipped.eval(), f"shipped checkpoint {Path(DEFAULT_CHECKPOINT).name}"
    torch.manual_seed(0)
    return Wav2Lip(Wav2LipConfig(width=width)).eval(), "random"


def device_inputs(batch: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    mel, faces = random_inputs(batch)
    return torch.from_numpy(mel).to(device=device, dtype=dtype), torch.from_numpy(faces).to(device=device, dtype=dtype)


def cuda_graph_call(model: torch.nn.Module, mel: torch.Tensor, faces: torch.Tensor) -> Callable[[], None]:
    """Capture one forward pass (after warm-up on a side stream, as PyTorchBackend does) and return its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model(mel, faces)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(mel, faces)
    return graph.replay


def point_row(
    width: float, dtype: str, mode: str, batch: int, latencies: list[float], peak_tflops: float | None
) -> dict:
    """One measured configuration, with its achieved TFLOP/s and their share of the matmul peak."""
    row = {"width": width, "dtype": dtype, "mode": mode, "batch": batch, **latency_figures(latencies, batch)}
    tflops = generator_flops(width)[0] * row["fps"] / 1e12
    row["tflops"] = round(tflops, 4)
    row["share_of_peak"] = finite_or_none(round(tflops / peak_tflops, 5)) if peak_tflops else None
    return row


def measure_points(
    model, width: float, dtype: str, mode: str, plan: Plan, peak: float | None, bar: tqdm
) -> tuple[list, list]:
    """Every batch size of one (width, dtype, mode); a failing point (out of memory, say) is recorded, not fatal."""
    rows, failed = [], []
    sync = synchronizer(plan.device)
    for batch in plan.batches:
        bar.set_postfix_str(f"width {width} {dtype} {mode} batch {batch}")
        try:
            with torch.inference_mode():
                mel, faces = device_inputs(batch, plan.device, DTYPES[dtype])
                call = (
                    cuda_graph_call(model, mel, faces)
                    if mode == "cuda graphs"
                    else (lambda m=mel, f=faces: model(m, f))
                )
                rows.append(point_row(width, dtype, mode, batch, timed_calls(call, sync, plan), peak))
        except Exception as exc:
            failed.append(failure(exc, width=width, dtype=dtype, mode=mode, batch=batch))
        finally:
            call = None  # drop the graph and its memory pool before the next, larger capture
            if plan.device == "cuda":
                torch.cuda.empty_cache()
        bar.update(1)
    return rows, failed


def section_generator(plan: Plan) -> dict[str, Any]:
    """Latency and frames/s of the bare network per width, dtype, mode and batch, against the matmul peak."""
    peak = matmul_peak(plan.device, plan.peak_size)
    flops = {str(w): generator_flops(w) for w in plan.widths}
    rows, failed, weights = [], [], {}
    total = len(plan.widths) * len(plan.dtypes) * len(plan.modes) * len(plan.batches)
    with tqdm(total=total, desc="generator", unit="point", file=sys.stderr) as bar:
        for width in plan.widths:
            base, weights[str(width)] = load_generator(width)
            for dtype in plan.dtypes:
                model = copy.deepcopy(base).to(device=plan.device, dtype=DTYPES[dtype])
                for mode in plan.modes:
                    got, lost = measure_points(model, width, dtype, mode, plan, peak["tflops"], bar)
                    rows += got
                    failed += lost
                del model
    return {
        "peak": peak,
        "flops_per_frame": {w: f for w, (f, _) in flops.items()},
        "flops_source": {w: s for w, (_, s) in flops.items()},
        "weights": weights,
        "rows": rows,
        "failed": failed,
        "notes": "p50/p99 per call with the device synchronised around it; fps = batch / mean call time; "
        "tflops = counted forward FLOPs x fps; share_of_peak = tflops / the matmul peak (bf16, or fp32 where faster) (also for fp32/fp16 "
        "points). cuda graphs: replay of a captured forward on static inputs (input copies not timed).",
    }


def compile_points(
    width: float, dtype: str, plan: Plan, limits: tuple[float, float], peak: float | None, bar: tqdm
) -> dict[str, Any]:
    """One compiled model over the batch sizes; stops at a compile slower than limit_s, at the section's deadline
    (time.perf_counter()) or at the first failure (a missing C compiler fails every shape alike)."""
    limit_s, deadline = limits
    sync = synchronizer(plan.device)
    model = load_generator(width)[0].to(device=plan.device, dtype=DTYPES[dtype])
    compiled = torch.compile(model)
    result: dict[str, Any] = {"rows": [], "compiles": [], "failed": [], "stopped": ""}
    for batch in plan.batches:
        bar.set_postfix_str(f"width {width} {dtype} batch {batch}")
        bar.update(1)
        if time.perf_counter() > deadline:
            result["stopped"] = (
                f"the section's {plan.compile_budget_s:.0f} s budget was spent before width {width} batch {batch}"
            )
            return result
        try:
            with torch.inference_mode():
                mel, faces = device_inputs(batch, plan.device, DTYPES[dtype])
                started = time.perf_counter()
                compiled(mel, faces)  # compiles this shape (from the second batch size on, a dynamic one)
                sync()
                seconds = time.perf_counter() - started
                result["compiles"].append(
                    {"width": width, "dtype": dtype, "batch": batch, "first_call_s": round(seconds, 2)}
                )
                if seconds > limit_s:
                    result["stopped"] = (
                        f"width {width} {dtype} batch {batch}: compile took {seconds:.0f} s > {limit_s:.0f} s"
                    )
                    return result
                latencies = timed_calls(lambda m=mel, f=faces: compiled(m, f), sync, plan)
                result["rows"].append(point_row(width, dtype, "compile", batch, latencies, peak))
        except Exception as exc:
            result["failed"].append(failure(exc, width=width, dtype=dtype, mode="compile", batch=batch))
            return result
    return result


def section_compile(plan: Plan, limit_s: float, report: dict) -> dict[str, Any]:
    """torch.compile points (default mode); the first compile slower than limit_s ends the section."""
    if not plan.compile_dtypes:
        raise SectionSkipped("not on --quick runs: a compile takes tens of seconds per shape")
    import torch._dynamo

    limits = (limit_s, time.perf_counter() + plan.compile_budget_s)
    total = {"rows": [], "compiles": [], "failed": [], "stopped": ""}
    with tqdm(
        total=len(plan.widths) * len(plan.compile_dtypes) * len(plan.batches), desc="compile", file=sys.stderr
    ) as bar:
        for width in plan.widths:
            for dtype in plan.compile_dtypes:
                torch._dynamo.reset()  # each model compiles afresh, its own shapes only
                part = compile_points(width, dtype, plan, limits, peak_tflops(report), bar)
                for key in ("rows", "compiles", "failed"):
                    total[key] += part[key]
                if part["stopped"]:  # too slow or out of time: the other models would be too
                    total["stopped"] = part["stopped"]
                    return total
    return total


# ------------------------------------------------------------------------------------------ 3. backend


async def paced_sessions(backend, sessions: int, seconds: float) -> dict[str, Any]:
    """`sessions` callers, each due to send one frame every 40 ms; latency counts from when a frame was due.

    Calls go through infer_async as the gateway's do (the event loop's default executor). A caller that
    falls behind keeps sending its overdue frames, so overload shows as latency growing past 40 ms.
    """
    mel, faces = random_inputs(sessions, seed=sessions)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    stop = start + seconds
    latencies: list[float] = []

    async def session(i: int) -> None:
        due = start + FRAME_PERIOD_S * i / sessions  # staggered, as independent sessions are
        while due < stop and loop.time() < stop + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await backend.infer_async(mel[i : i + 1], faces[i : i + 1])
            latencies.append(loop.time() - due)
            due += FRAME_PERIOD_S

    await asyncio.gather(*(session(i) for i in range(sessions)))
    figures = latency_figures(latencies, 1)
    figures["fps"] = round(len(latencies) / (loop.time() - start), 2)
    return {"sessions": sessions, **figures, "offered_fps": 25 * sessions}


def session_sweep(backend, plan: Plan) -> dict[str, Any]:
    """Double the number of paced sessions until p99 passes 40 ms or throughput stops keeping up, then bisect."""
    deadline = time.perf_counter() + plan.session_budget_s
    points: list[dict] = []
    passed, failed, why = 0, None, f"reached {plan.max_sessions} sessions"

    def probe(n: int) -> bool:
        point = asyncio.run(paced_sessions(backend, n, plan.session_seconds))
        point["ok"] = point["p99_ms"] < 1000 * FRAME_PERIOD_S and point["fps"] >= 0.95 * point["offered_fps"]
        points.append(point)
        return point["ok"]

    n = 1
    with tqdm(desc="sessions", file=sys.stderr) as bar:
        while n <= plan.max_sessions and time.perf_counter() < deadline:
            bar.set_postfix_str(f"{n} sessions")
            bar.update(1)
            if not probe(n):
                failed, why = n, f"{n} sessions: p99 over 40 ms or under 95 % of the offered frames"
                break
            passed, n = n, 2 * n
        while failed is not None and failed - passed > 1 and time.perf_counter() < deadline:
            mid = (passed + failed) // 2
            bar.set_postfix_str(f"{mid} sessions")
            bar.update(1)
            passed, failed = (mid, failed) if probe(mid) else (passed, mid)
        if time.perf_counter() >= deadline:
            why += f"; sweep stopped at its {plan.session_budget_s:.0f} s budget"
    return {"max_sessions": passed, "stopped_because": why, "points": points}


def sessions_from_batches(batched: list[dict], latency_ms: float) -> dict[str, Any]:
    """Sessions a batcher could serve: the best frames/s among batch sizes whose p99 stays under latency_ms."""
    fitting = [row for row in batched if row["p99_ms"] < latency_ms]
    if not fitting:
        return {"sessions": 0, "batch": None, "fps": 0.0}
    best = max(fitting, key=lambda row: row["fps"])
    return {"sessions": int(best["fps"] // 25), "batch": best["batch"], "fps": best["fps"]}


def section_backend(plan: Plan) -> dict[str, Any]:
    """The live path as the gateway runs it: PyTorchBackend.infer / infer_async on the shipped checkpoint."""
    from lipsync.client.backends import DEFAULT_CHECKPOINT
    from lipsync.client.backends.pytorch import PyTorchBackend

    cuda = plan.device == "cuda"
    started = time.perf_counter()
    backend = PyTorchBackend(DEFAULT_CHECKPOINT, device=plan.device, fp16=cuda, cuda_graphs=cuda)
    setup_s = time.perf_counter() - started
    assert backend.model is not None
    try:
        batched = []
        for batch in plan.backend_batches:
            mel, faces = random_inputs(batch)
            latencies = timed_calls(lambda m=mel, f=faces: backend.infer(m, f), lambda: None, plan)
            batched.append({"batch": batch, **latency_figures(latencies, batch)})
        budget_ms = 1000 * FRAME_PERIOD_S
        return {
            "config": {
                "checkpoint": str(DEFAULT_CHECKPOINT),
                "width": backend.model.config.width,
                "device": plan.device,
                "dtype": "fp16" if cuda else "fp32",
                "cuda_graphs": backend.uses_cuda_graphs,
                "max_batch": backend.max_batch,
                "setup_s": round(setup_s, 2),
            },  # fmt: skip
            "batch1": batched[0],
            "batched": batched,
            "in_process_batching": False,
            "batching_note": "PyTorchBackend.infer_async (LipSyncBackend's) runs each caller's infer in the default "
            "executor: no batching across callers in-process; streaming/inference.py leaves that to Triton's "
            "dynamic batcher. So the session estimate comes from batched calls, and the paced-callers sweep "
            "measures the live path as it is (one frame per call).",
            "sessions_from_batched": {
                **sessions_from_batches(batched, budget_ms),
                "rule": "best fps with p99 < 40 ms, / 25",
            },
            "sessions_from_batched_with_queueing": {
                **sessions_from_batches(batched, budget_ms / 2),
                "rule": "best fps with 2 x p99 < 40 ms (a frame may wait one batch before its own), / 25",
            },
            "unbatched_callers": session_sweep(backend, plan),
        }
    finally:
        backend.close()


# ------------------------------------------------------------------------------------------ 4. training


def run_bounded(cmd: list[str], timeout_s: float, log_path: Path) -> dict[str, Any]:
    """Run a command in its own process group with a wall-time limit; on the limit the whole group is ended."""
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        try:
            returncode: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
            os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its data-loader workers
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {
        "returncode": returncode,
        "timed_out": returncode is None,
        "seconds": round(time.perf_counter() - started, 1),
        "output_tail": log_tail(log_path.read_text(errors="replace")),
    }


def log_tail(text: str, lines: int = 25) -> str:
    """The last lines of a log that say something: tqdm's redrawn bars are kept only as the latest one."""
    all_lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    bars = [line for line in all_lines if re.search(r"\|\s*\d+/\d+ \[", line)]
    drawn = set(bars)
    kept = [line for line in all_lines if line not in drawn][-lines:] + bars[-1:]
    return "\n".join(kept)[-3000:]


def espeak_missing() -> str | None:
    """Why the synthetic corpus cannot be rendered here, or None: it speaks every clip with libespeak-ng."""
    try:
        from lipsync.training.data.synthetic.espeak import Espeak, EspeakError
    except ImportError as exc:
        return f"the synthetic corpus generator cannot be imported: {exc}"
    try:
        Espeak().close()
    except EspeakError as exc:
        return f"espeak-ng is not usable here: {exc}"
    return None


def make_corpus(plan: Plan, root: Path, workdir: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lipsync.training.cli", "corpus", "--out", str(root), "--clips", str(plan.corpus_clips),
           "--identities", str(plan.corpus_clips), "--split", plan.corpus_split, "--boxes", "render",
           "--min-seconds", "1", "--max-seconds", "2", "--workers", str(max(1, min(16, len(os.sched_getaffinity(0))))),
           "--no-progress"]  # fmt: skip
    result = run_bounded(cmd, 300, workdir / "corpus.log")
    if result["returncode"] != 0:
        raise RuntimeError(f"corpus generation failed ({result['returncode']}):\n{result['output_tail']}")
    return {"clips": plan.corpus_clips, "split": plan.corpus_split, "seconds": result["seconds"]}


def train_figures(metrics: list[dict[str, str]], batch_size: int) -> dict[str, Any]:
    """Steps/s (median of the logged intervals after the first, which holds start-up) and the loss curve."""
    train = [r for r in metrics if r["split"] == "train"]
    rates = [float(r["value"]) for r in train if r["name"] == "steps_per_s"]
    waits = [float(r["value"]) for r in train if r["name"] == "data_wait"]
    steady = rates[1:] or rates
    steps_per_s = float(np.median(steady)) if steady else 0.0
    return {
        "steps_logged": max((int(r["step"]) for r in train), default=0),
        "steps_per_s": round(steps_per_s, 4),
        "frames_per_s": round(steps_per_s * batch_size * WINDOW_FRAMES, 2),
        "data_wait_share": round(float(np.median(waits[1:] or waits)), 3) if waits else None,
        "loss_curve": [[int(r["step"]), float(r["value"])] for r in train if r["name"] == "loss"],
        "l1_curve": [[int(r["step"]), float(r["value"])] for r in train if r["name"] == "l1"],
    }


def speedups(steps_per_s: float, width: float, batch_size: int, cpu_s_per_step: float) -> dict[str, float | None]:
    """Against the CPU reference (width 0.25, batch 8): per step, per frame, and per frame x generator FLOPs."""
    if steps_per_s <= 0:
        return {"per_step": None, "per_frame": None, "per_frame_flops": None}
    cpu_fps = CPU_REFERENCE["batch_size"] * WINDOW_FRAMES / cpu_s_per_step
    fps = steps_per_s * batch_size * WINDOW_FRAMES
    work = generator_flops(width)[0] / generator_flops(CPU_REFERENCE["width"])[0]
    return {"per_step": round(steps_per_s * cpu_s_per_step, 2), "per_frame": round(fps / cpu_fps, 2),
            "per_frame_flops": round(fps * work / cpu_fps, 2)}  # fmt: skip


def train_once(run: TrainRun, plan: Plan, corpus: Path, workdir: Path, cpu_s_per_step: float) -> dict[str, Any]:
    from lipsync.training.config import GeneratorTrainConfig, preset
    from lipsync.training.runtime import read_metrics

    steps = int(run.overrides.get("steps", 1_000_000))  # time-bounded runs end at run.seconds
    values = {**run.overrides, "steps": steps, "eval_interval": steps, "checkpoint_interval": steps,
              "sample_interval": steps, "keep_checkpoints": 1, "device": plan.device}  # fmt: skip
    config = preset(GeneratorTrainConfig, run.preset, **values)  # validates the overrides before the subprocess
    out_dir = workdir / re.sub(r"\W+", "_", run.name)
    cmd = [sys.executable, "-m", "lipsync.training.cli", "generator", "--preset", run.preset, "--data-root", str(corpus),
           "--out-dir", str(out_dir), "--expert-checkpoint", str(SHIPPED_EXPERT)]  # fmt: skip
    for name, value in values.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    result = run_bounded(cmd, run.seconds, workdir / f"{out_dir.name}.log")
    metrics_path = out_dir / "metrics.csv"
    figures = train_figures(read_metrics(metrics_path), config.batch_size) if metrics_path.is_file() else {}
    if not figures.get("steps_logged"):
        raise RuntimeError(
            f"trainer {run.name!r} logged no step (returncode {result['returncode']}):\n{result['output_tail'][-1500:]}"
        )
    stopped = "finished" if result["returncode"] == 0 else "time limit (by design)" if result["timed_out"] else "failed"
    return {
        "name": run.name,
        "preset": run.preset,
        "width": config.width,
        "batch_size": config.batch_size,
        "disc_wt": config.disc_wt,
        "overrides": values,
        "wall_limit_s": run.seconds,
        "ended": stopped,
        **figures,
        "speedup_vs_cpu": speedups(figures["steps_per_s"], config.width, config.batch_size, cpu_s_per_step),
        "trainer": result,
    }


def section_training(plan: Plan, cpu_s_per_step: float) -> dict[str, Any]:
    """Short generator runs of the project's trainer on a freshly rendered synthetic corpus."""
    if not SHIPPED_EXPERT.is_file():
        raise SectionSkipped(f"no expert checkpoint at {SHIPPED_EXPERT} (the generator trains against it)")
    reason = espeak_missing()
    if reason:
        raise SectionSkipped(reason)
    runs: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-train-") as tmp:
        workdir = Path(tmp)
        corpus = make_corpus(plan, workdir / "corpus", workdir)
        for run in tqdm(plan.train_runs, desc="training", unit="run", file=sys.stderr):
            try:
                runs.append(train_once(run, plan, workdir / "corpus", workdir, cpu_s_per_step))
            except Exception as exc:
                failed.append(failure(exc, name=run.name))
    if not runs:
        raise RuntimeError(f"every training run failed: {failed}")
    return {
        "corpus": corpus,
        "expert_checkpoint": str(SHIPPED_EXPERT),
        "cpu_reference": {
            **CPU_REFERENCE,
            "seconds_per_step": cpu_s_per_step,
            "frames_per_s": round(CPU_REFERENCE["batch_size"] * WINDOW_FRAMES / cpu_s_per_step, 2),
        },  # fmt: skip
        "runs": runs,
        "failed": failed,
        "notes": "steps/s is the median of metrics.csv's logged intervals after the first; frames/s = batch_size x 5 x "
        "steps/s; speedup_vs_cpu: per_step = steps/s x the reference's s/step, per_frame = frames/s ratio, "
        "per_frame_flops also weighs each frame by its generator FLOPs relative to width 0.25. Eval, samples "
        "and checkpoints only at the last step; the expert sync loss stays off (it switches on at an eval).",
    }


# ------------------------------------------------------------------------------------------ 5. report


def environment(device: str) -> dict[str, Any]:
    cuda = device == "cuda"
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if cuda else cpu_model(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "settings": {
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        },  # fmt: skip
    }


def peak_tflops(report: dict) -> float | None:
    """The bf16 matmul peak section 2 measured, or None if it did not run."""
    return report["sections"].get("generator", {}).get("peak", {}).get("tflops")


def measured_rows(report: dict) -> list[dict]:
    """Generator rows of sections 2 and 5 together."""
    sections = report["sections"]
    return [*sections.get("generator", {}).get("rows", []), *sections.get("compile", {}).get("rows", [])]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = measured_rows(report)
    widths = sorted({r["width"] for r in rows}, reverse=True) or [0.0]
    fig, axes = plt.subplots(1, len(widths), figsize=(6.5 * len(widths), 4.8), squeeze=False)
    for ax, width in zip(axes[0], widths, strict=True):
        configs = sorted({(r["dtype"], r["mode"]) for r in rows if r["width"] == width})
        for dtype, mode in configs:
            points = sorted(
                (r["batch"], r["fps"]) for r in rows if (r["width"], r["dtype"], r["mode"]) == (width, dtype, mode)
            )
            style = {"eager": "-", "cuda graphs": "--", "compile": ":"}.get(mode, "-")
            ax.plot(*zip(*points, strict=True), style, marker="o", label=f"{dtype}, {mode}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (frames per call)")
        ax.set_ylabel("frames/s")
        ax.set_title(f"generator width {width}")
        ax.grid(alpha=0.3, which="both")
        if configs:  # the plot is first written before any point exists
            ax.legend(fontsize=7)
    peak = peak_tflops(report)
    fig.suptitle(f"Wav2Lip generator, {report['device_name']} (matmul peak {peak} TFLOP/s)\n{report['machine']}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, plan: Plan, started: float, load_before: tuple, out: Path) -> None:
    """Rewrite the JSON and the plot: called after every section, so an interrupted run keeps its figures."""
    report.update(report_header(plan, started, load_before))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        plot(report, out.with_suffix(".png"))
        report.pop("plot_error", None)
    except Exception as exc:
        report["plot_error"] = f"{type(exc).__name__}: {exc}"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")


def run_section(report: dict, name: str, fn: Callable[..., dict], *args: Any) -> None:
    """Run one section, recording its figures, its skip reason or its error, and how long it took."""
    print(f"== {name}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        entry: dict[str, Any] = {"status": "ok", **fn(*args)}
    except SectionSkipped as exc:
        entry = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:
        entry = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
    entry["seconds"] = round(time.perf_counter() - started, 1)
    report["sections"][name] = entry


def section_line(name: str, entry: dict) -> str:
    if entry["status"] != "ok":
        detail = entry.get("reason") or entry.get("error", "")
    elif name == "pytest_gpu":
        detail = (
            ", ".join(f"{entry[k]} {k}" for k in ("passed", "failed", "skipped", "errors"))
            + f" (rc {entry['returncode']})"
        )
    elif name == "generator":
        detail = f"{len(entry['rows'])} points, {len(entry['failed'])} failed; {entry['peak']['dtype']} matmul peak {entry['peak']['tflops']} TFLOP/s"
    elif name == "backend":
        b1, est = entry["batch1"], entry["sessions_from_batched"]
        detail = (f"batch 1 p50 {b1['p50_ms']:.2f} p99 {b1['p99_ms']:.2f} ms; sessions: {est['sessions']} (batched, "
                  f"batch {est['batch']}), {entry['unbatched_callers']['max_sessions']} (one frame per call)")  # fmt: skip
    elif name == "training":
        detail = "; ".join(f"{r['name']}: {r['steps_per_s']:.3f} steps/s, {r['frames_per_s']:.1f} frames/s, "
                           f"x{r['speedup_vs_cpu']['per_frame']} frames vs CPU" for r in entry["runs"])  # fmt: skip
    else:
        detail = f"{len(entry['rows'])} points, {len(entry['failed'])} failed {entry.get('stopped', '')}"
    return f"{name:<11}{entry['status']:<8}{entry['seconds']:>8.1f}  {detail}"


def summary(report: dict) -> str:
    lines = [f"{'section':<11}{'status':<8}{'seconds':>8}  detail", "-" * 100]
    lines += [section_line(name, entry) for name, entry in report["sections"].items()]
    head = f"{'width':>6} {'dtype':<5} {'mode':<12}{'batch':>6}{'calls':>6}{'p50 ms':>10}{'p99 ms':>10}{'frames/s':>11}{'TFLOP/s':>9}{'peak %':>8}"
    lines += ["", head, "-" * len(head)]
    for r in measured_rows(report):
        share = f"{100 * r['share_of_peak']:.2f}" if r["share_of_peak"] is not None else "-"
        lines.append(f"{r['width']:>6} {r['dtype']:<5} {r['mode']:<12}{r['batch']:>6}{r['calls']:>6}{r['p50_ms']:>10.3f}"
                     f"{r['p99_ms']:>10.3f}{r['fps']:>11.1f}{r['tflops']:>9.3f}{share:>8}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync.benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="CI scale: two narrow widths, batches 1 and 4, a tiny run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG (default %(default)s)")
    parser.add_argument("--widths", type=float, nargs="+", help="generator widths for sections 2 and 5")
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="sections not to run")
    parser.add_argument("--train-seconds", type=float, help="wall time of the main training run")
    parser.add_argument("--threads", type=int, default=0,
                        help="PyTorch CPU threads (0 = its default; 1 is much faster on a busy small machine)")  # fmt: skip
    parser.add_argument("--compile-limit-s", type=float, default=60.0, help="longest acceptable torch.compile")
    parser.add_argument("--cpu-seconds-per-step", type=float, default=2.15,
                        help="reference: the 2-core CPU's s/step at width 0.25, batch 8 (default %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available here (use --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = make_plan(args.device, args.quick, tuple(args.widths) if args.widths else None, args.train_seconds)
    name = (
        "gpu.json"
        if args.device == "cuda" and not args.quick
        else f"gpu_{args.device}{'_quick' if args.quick else ''}.json"
    )
    out = args.out / name
    started, load_before = time.perf_counter(), os.getloadavg()
    report: dict[str, Any] = {
        "benchmark": "gpu",
        "machine": describe_machine(),
        **environment(args.device),
        "sections": {},
    }
    sections: dict[str, tuple[Callable[..., dict], tuple]] = {
        "pytest_gpu": (section_pytest, (plan,)),
        "generator": (section_generator, (plan,)),
        "backend": (section_backend, (plan,)),
        "training": (section_training, (plan, args.cpu_seconds_per_step)),
        "compile": (section_compile, (plan, args.compile_limit_s, report)),
    }
    for section, (fn, fn_args) in sections.items():
        if section in args.skip:
            report["sections"][section] = {"status": "skipped", "reason": "--skip", "seconds": 0.0}
        else:
            run_section(report, section, fn, *fn_args)
        write_report(report, plan, started, load_before, out)
    print(summary(report))
    print(f"\nmachine: {report['machine']}; torch {report['torch']}; took {report['seconds']} s; "
          f"wrote {out} and {out.with_suffix('.png')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
