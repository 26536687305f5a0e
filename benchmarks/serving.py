"""Serving benchmark: latency p50/p99 and throughput of the generator against batch size and concurrency,
in-process ONNX Runtime vs Triton, Triton's dynamic batching on vs off, and, in the same run, the
original architecture's baseline (width 1.0, eager PyTorch FP32, batch 128): every figure is also
a ratio to that baseline on the same machine. The CPU paths (client/backends/cpu_paths.py) run beside
ONNX Runtime FP32 in-process: INT8 ONNX Runtime, PyTorch bf16 (CPUs with native bf16 only) and Triton
serving INT8; each batch row also gives its ratio to FP32 ONNX Runtime at that batch and its share of the
CPU's fastest matmul rate (benchmarks/gpu.matmul_peak). Prints a table, writes JSON and a PNG plot.

    .venv/bin/python -m lipsync.benchmarks.serving [--quick] [--widths 0.5 1.0] [--seconds 5]
    .venv/bin/python -m lipsync.benchmarks.serving --sweep config [--widths 0.25 0.5] [--seconds 3] [--repeats 3]

`--sweep config` serves the embedded model's batcher config as shipped before issue 11 (2 ms delay, queue
policy), the current one, and no dynamic batching, side by side, one-frame requests at concurrency 1-8.

Random weights: timing does not depend on the weights' values, only on the width.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from lipsync.benchmarks.machine import describe_machine, report_header
from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.backends import cpu_paths
from lipsync.client.backends.base import BackendError, LipSyncBackend
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.client.backends.triton import TritonBackend
from lipsync.client.triton_server import EmbeddedTritonServer
from lipsync.export.verify import random_inputs

RESULTS = Path(__file__).parent / "results"
BASELINE_WIDTH = 1.0
BASELINE_BATCH = 128  # the original inference.py's --wav2lip_batch_size
ORT_FP32 = "onnxruntime in-process"  # the CPU paths' reference row at each batch
ORT_INT8 = "onnxruntime int8 in-process"
PYTORCH_BF16 = "pytorch bf16 in-process"
TRITON_INT8 = "triton int8"
PEAK_MATMUL_SIZE = 1024  # benchmarks/gpu.py's CPU size: large enough for the peak on 2-16 cores, 1.5 s a dtype


@dataclass(frozen=True)
class Plan:
    widths: tuple[float, ...]
    batches: tuple[int, ...]
    concurrency: tuple[int, ...]
    seconds: float  # measuring time per point
    baseline_repeats: int


FULL = Plan(widths=(0.5, 1.0), batches=(1, 4, 8, 16, 32), concurrency=(1, 2, 4, 8, 16, 32), seconds=5.0,
            baseline_repeats=3)  # fmt: skip
QUICK = Plan(widths=(0.5,), batches=(1, 8, 32), concurrency=(1, 4, 16), seconds=2.0, baseline_repeats=1)


@dataclass
class Row:
    # "baseline", "batch" (one call/request of B frames), "concurrency" (C one-frame requests) or
    # "overhead" (a frame the model rejects unrun: transport and batcher cost alone)
    sweep: str
    # "pytorch eager" | "onnxruntime in-process" | "onnxruntime int8 in-process" | "pytorch bf16 in-process"
    # | "triton" | "triton int8"
    path: str
    width: float
    batch: int  # frames per request / call
    concurrency: int  # requests in flight
    batching: str  # "-", "dynamic" or "off"
    samples: int
    p50_ms: float
    p99_ms: float
    fps: float
    fps_x_baseline: float = 0.0
    p50_x_baseline: float = 0.0
    executed_batches: dict[int, int] = field(default_factory=dict)  # Triton: executions per batch size
    # Batch rows: fps over ONNX Runtime FP32 in-process's at the same width and batch (1.0 for that row)...
    fps_x_onnxruntime_fp32: float | None = None
    # ...and the achieved rate (counted FLOPs x fps) as a share of the CPU's fastest matmul rate.
    share_of_peak: float | None = None

    @property
    def mean_executed_batch(self) -> float:
        n = sum(self.executed_batches.values())
        return sum(b * c for b, c in self.executed_batches.items()) / n if n else 0.0


def percentiles(latencies_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies_s) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed_calls(call, seconds: float, min_calls: int = 3, max_calls: int = 200) -> list[float]:
    call()  # warm-up
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < min_calls or (time.perf_counter() < deadline and len(latencies) < max_calls):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def row_from(sweep: str, path: str, width: float, batch: int, latencies: list[float], **extra) -> Row:
    p50, p99 = percentiles(latencies)
    return Row(sweep, path, width, batch, extra.pop("concurrency", 1), extra.pop("batching", "-"), len(latencies), p50, p99,
               fps=batch / statistics.fmean(latencies), **extra)  # fmt: skip


# ------------------------------------------------------------------------------------------ measurements


def measure_baseline(repeats: int) -> Row:
    """The original setup: width 1.0 generator, eager PyTorch FP32, batches of 128 frames."""
    import torch

    from lipsync.client.networks import Wav2Lip, Wav2LipConfig

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    model = Wav2Lip(Wav2LipConfig(width=BASELINE_WIDTH)).eval()
    mel, faces = (torch.from_numpy(a) for a in random_inputs(BASELINE_BATCH))
    with torch.no_grad():
        model(mel[:8], faces[:8])  # warm-up on a slice: a full batch costs seconds
        latencies = []
        for _ in range(repeats):
            started = time.perf_counter()
            model(mel, faces)
            latencies.append(time.perf_counter() - started)
    # A frame's result exists only when its whole batch is done: the batch time is the frame latency.
    return row_from("baseline", "pytorch eager", BASELINE_WIDTH, BASELINE_BATCH, latencies)


def measure_in_process(backend: LipSyncBackend, path: str, width: float, plan: Plan) -> list[Row]:
    rows = []
    with backend:
        for batch in plan.batches:
            mel, faces = random_inputs(batch)
            latencies = timed_calls(lambda mel=mel, faces=faces: backend.infer(mel, faces), plan.seconds / 2)
            rows.append(row_from("batch", path, width, batch, latencies))
    return rows


def measure_onnxruntime(onnx_path: Path, width: float, plan: Plan) -> list[Row]:
    return measure_in_process(OnnxRuntimeBackend(onnx_path), ORT_FP32, width, plan)


def write_int8(repository: Path, log) -> Path | None:
    """The INT8 model of the exported FP32 one, into the embedded model's folder (random weights, so the
    export's own INT8 stage is skipped: calibrated here on the same real inputs, timing alone matters)."""
    from lipsync.export.quantize import quantize_int8

    onnx_path = layout.artifact_path(repository, contract.EMBEDDED_MODEL, layout.ONNX_FILE)
    try:
        return quantize_int8(onnx_path, cpu_paths.int8_path(onnx_path))
    except RuntimeError as exc:  # real inputs need espeak-ng and scikit-image
        log(f"no INT8 rows: {exc}")
        return None


def measure_cpu_paths(repository: Path, int8: Path | None, width: float, plan: Plan, log) -> list[Row]:
    """INT8 ONNX Runtime and PyTorch bf16 in-process, where they can run here."""
    rows = []
    if int8 is not None:
        log(f"width {width}: in-process ONNX Runtime INT8")
        rows += measure_in_process(OnnxRuntimeBackend(int8), ORT_INT8, width, plan)
    if cpu_paths.native_bf16() is None:
        log(f"width {width}: no PyTorch bf16 rows: this CPU has no native bf16")
        return rows
    from lipsync.client.backends.pytorch import PyTorchBackend

    log(f"width {width}: in-process PyTorch bf16 ({cpu_paths.native_bf16()})")
    checkpoint = layout.artifact_path(repository, contract.EMBEDDED_MODEL, layout.CHECKPOINT_FILE)
    rows += measure_in_process(PyTorchBackend(checkpoint, bf16=True), PYTORCH_BF16, width, plan)
    return rows


def delta(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {b: n - before.get(b, 0) for b, n in sorted(after.items()) if n - before.get(b, 0) > 0}


def measure_triton_batches(backend: TritonBackend, width: float, plan: Plan) -> list[Row]:
    """One request carrying B frames at a time: the same batches as in-process, plus Triton's overhead."""
    from tritonclient import grpc as grpcclient

    client = grpcclient.InferenceServerClient(backend.url)
    rows = []
    for batch in plan.batches:
        mel, faces = random_inputs(batch)
        inputs = []
        for spec, array in ((contract.MEL_INPUT, mel), (contract.FACE_INPUT, faces)):
            tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        before = backend.batch_executions()
        latencies = timed_calls(lambda inputs=inputs: client.infer(backend.model, inputs), plan.seconds / 2)
        rows.append(row_from("batch", "triton", width, batch, latencies, batching="dynamic",
                             executed_batches=delta(backend.batch_executions(), before)))  # fmt: skip
    client.close()
    return rows


def measure_triton_overhead(backend: TritonBackend, width: float, plan: Plan) -> Row:
    """Round trip of a frame the model rejects before inference (a NaN): gRPC upload, the batcher's queue
    delay and the Python backend's hand-off, without compute. Bounds what shared memory could save."""
    mel, faces = random_inputs(1)
    faces[0, 0, 0, 0] = np.nan

    def call() -> None:
        try:
            backend.infer(mel, faces)
        except BackendError:
            pass
        else:
            raise RuntimeError("the served model accepted a NaN frame")

    row = row_from("overhead", "triton, no compute", width, 1, timed_calls(call, plan.seconds / 4), batching="dynamic")
    row.fps = 0.0  # no frames come back: only the latency means something
    return row


async def closed_loop(backend: TritonBackend, concurrency: int, seconds: float) -> tuple[list[float], float]:
    """`concurrency` clients, each sending one frame per request and the next as soon as it returns."""
    mel, faces = random_inputs(concurrency, seed=concurrency)
    latencies: list[float] = []
    stop_at = 0.0

    async def client(i: int) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await backend.infer_frame(mel[i], faces[i])
            latencies.append(time.perf_counter() - started)

    # Warm-up: every client once, so channels and the server's batcher are primed.
    await asyncio.gather(*(backend.infer_frame(mel[i], faces[i]) for i in range(concurrency)))
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return latencies, time.perf_counter() - started


async def closed_loop_point(backend: TritonBackend, concurrency: int, seconds: float) -> tuple[list[float], float]:
    """`closed_loop` on this event loop, closing the backend's channels of it after (each point runs its own)."""
    try:
        return await closed_loop(backend, concurrency, seconds)
    finally:
        await backend.aclose()


def measure_triton_concurrency(backend: TritonBackend, width: float, plan: Plan, batching: str) -> list[Row]:
    rows = []
    for concurrency in plan.concurrency:
        before = backend.batch_executions()
        latencies, elapsed = asyncio.run(closed_loop_point(backend, concurrency, plan.seconds))
        p50, p99 = percentiles(latencies)
        rows.append(Row("concurrency", "triton", width, 1, concurrency, batching, len(latencies), p50, p99,
                        fps=len(latencies) / elapsed, executed_batches=delta(backend.batch_executions(), before)))  # fmt: skip
    return rows


def without_dynamic_batching(repository: Path) -> None:
    """Rewrite the embedded model's config without its dynamic batcher (via Triton's own schema)."""
    path = repository / contract.EMBEDDED_MODEL / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config.ClearField("dynamic_batching")
    path.write_text(text_format.MessageToString(config))


def with_precision(repository: Path, precision: str) -> None:
    """Rewrite the embedded model's CPU path (parameter precision, see 1/model.py) via Triton's own schema."""
    path = repository / contract.EMBEDDED_MODEL / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config.parameters["precision"].string_value = cpu_paths.check_precision(precision)
    path.write_text(text_format.MessageToString(config))


def export_random(width: float, folder: Path) -> Path:
    from lipsync.export.cli import ExportConfig, run

    run(ExportConfig(random_weights=True, width=width, output_dir=folder, fp16=False, real_inputs=False,
                     verify_samples=1, quiet=True))  # fmt: skip
    return folder


def measure_width(width: float, plan: Plan, workdir: Path, log) -> list[Row]:
    repository = export_random(width, workdir / f"width_{width}")
    onnx_path = layout.artifact_path(repository, contract.EMBEDDED_MODEL, layout.ONNX_FILE)
    log(f"width {width}: in-process ONNX Runtime")
    rows = measure_onnxruntime(onnx_path, width, plan)
    int8 = write_int8(repository, log)
    rows += measure_cpu_paths(repository, int8, width, plan, log)
    if int8 is not None:
        # Only the batch sweep: the concurrency sweeps measure the batcher, the same whatever the path.
        log(f"width {width}: Triton, precision int8")
        with_precision(repository, "int8")
        with EmbeddedTritonServer(repository) as server:
            backend = TritonBackend(server.grpc_url, timeout_s=60)
            rows += [replace(r, path=TRITON_INT8) for r in measure_triton_batches(backend, width, plan)]
            backend.close()
        with_precision(repository, "fp32")
    for batching in ("dynamic", "off"):
        if batching == "off":
            without_dynamic_batching(repository)
        log(f"width {width}: Triton, dynamic batching {batching}")
        with EmbeddedTritonServer(repository) as server:
            backend = TritonBackend(server.grpc_url, timeout_s=60)
            if batching == "dynamic":
                rows.append(measure_triton_overhead(backend, width, plan))
                rows += measure_triton_batches(backend, width, plan)
            rows += measure_triton_concurrency(backend, width, plan, batching)
            backend.close()
    return rows


# ------------------------------------------------------------------------------------------ config sweep

CONFIG_PLAN = Plan(widths=(0.25, 0.5), batches=(1,), concurrency=(1, 2, 4, 8), seconds=3.0, baseline_repeats=0)


def as_before_issue_11(repository: Path) -> None:
    """Rewrite the embedded model's batcher as shipped before issue 11: the GPU models' 2 ms queue delay and
    queue policy (deadlines, bounded queue), which turns off Triton's payload prefetch (export/model_repository.py)."""
    from lipsync.export import model_repository as configs

    path = repository / contract.EMBEDDED_MODEL / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config.dynamic_batching.max_queue_delay_microseconds = configs.MAX_QUEUE_DELAY_US
    config.dynamic_batching.default_queue_policy.CopyFrom(
        model_config_pb2.ModelQueuePolicy(
            timeout_action=model_config_pb2.ModelQueuePolicy.REJECT,
            allow_timeout_override=True,
            max_queue_size=configs.MAX_QUEUE_SIZE,
        )
    )
    path.write_text(text_format.MessageToString(config))


# (path, batching, rewrite of the shipped config): the old config, the shipped one, and no dynamic batching.
CONFIG_VARIANTS = (
    ("triton, old config", "dynamic", as_before_issue_11),
    ("triton", "dynamic", None),
    ("triton", "off", without_dynamic_batching),
)


def measure_configs(width: float, plan: Plan, repeats: int, workdir: Path, log) -> list[Row]:
    """Every variant served at once, points interleaved (concurrency, then variant, `repeats` rounds) so the
    variants share the machine's noise; each row pools its point's rounds."""
    exported = export_random(width, workdir / f"width_{width}")
    pooled: dict[tuple[int, int], tuple[list[float], list[float], collections.Counter]] = {}
    with contextlib.ExitStack() as stack:
        backends = []
        for i, (_, _, rewrite) in enumerate(CONFIG_VARIANTS):
            repository = workdir / f"width_{width}_variant_{i}"
            shutil.copytree(exported / contract.EMBEDDED_MODEL, repository / contract.EMBEDDED_MODEL)
            if rewrite is not None:
                rewrite(repository)
            server = stack.enter_context(EmbeddedTritonServer(repository))
            backends.append(TritonBackend(server.grpc_url, timeout_s=60))
            stack.callback(backends[-1].close)
        for round_ in range(repeats):
            log(f"width {width}: configs, round {round_ + 1} of {repeats}")
            for concurrency in plan.concurrency:
                for i, backend in enumerate(backends):
                    before = backend.batch_executions()
                    latencies, elapsed = asyncio.run(closed_loop_point(backend, concurrency, plan.seconds))
                    point = pooled.setdefault((i, concurrency), ([], [], collections.Counter()))
                    point[0].extend(latencies)
                    point[1].append(elapsed)
                    point[2].update(delta(backend.batch_executions(), before))
    rows = []
    for (i, concurrency), (latencies, elapsed_s, executed) in sorted(pooled.items(), key=lambda kv: kv[0][::-1]):
        path, batching, _ = CONFIG_VARIANTS[i]
        p50, p99 = percentiles(latencies)
        rows.append(Row("config", path, width, 1, concurrency, batching, len(latencies), p50, p99,
                        fps=len(latencies) / sum(elapsed_s), executed_batches=dict(sorted(executed.items()))))  # fmt: skip
    return rows


def config_sweep(args: argparse.Namespace) -> int:
    widths = tuple(args.widths or CONFIG_PLAN.widths)
    plan = replace(CONFIG_PLAN, widths=widths, seconds=args.seconds or CONFIG_PLAN.seconds)
    out = args.out or RESULTS / "serving_config.json"
    machine = describe_machine()
    load_before = os.getloadavg()
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="serving-config-") as tmp:
        for width in plan.widths:
            rows += measure_configs(width, plan, args.repeats, Path(tmp), log)
    report = {
        **report_header(plan, started, load_before),
        "notes": "random weights; one-frame requests from `concurrency` closed-loop clients on the server's machine; "
        "'triton, old config' = the embedded model's batcher before issue 11 (2 ms queue delay, queue policy), "
        "'triton' dynamic = the shipped config, 'triton' off = no dynamic batching; the three servers run at once "
        f"and their points interleave, {args.repeats} rounds of {plan.seconds:g} s pooled per row",
        "repeats": args.repeats,
        "rows": [asdict(r) | {"mean_executed_batch": r.mean_executed_batch} for r in rows],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    load = report["load_average_1min"]
    print(f"\nmachine: {machine}; 1-min load average {load['start']} at start, {load['end']} at end")
    print(f"took {report['seconds']} s; wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------ report


def add_ratios(rows: list[Row], baseline: Row) -> None:
    for row in rows:
        row.fps_x_baseline = row.fps / baseline.fps
        row.p50_x_baseline = row.p50_ms / baseline.p50_ms


def cpu_peak() -> dict:
    """The CPU's fastest matmul rate (bf16 where native and faster, else fp32), measured as benchmarks/gpu.py does."""
    from lipsync.benchmarks.gpu import matmul_peak

    return matmul_peak("cpu", PEAK_MATMUL_SIZE)


def add_cpu_ratios(rows: list[Row], peak_tflops: float) -> None:
    """Each batch row against ONNX Runtime FP32 in-process at its width and batch, and against the peak."""
    from lipsync.benchmarks.gpu import generator_flops

    reference = {(r.width, r.batch): r for r in rows if r.sweep == "batch" and r.path == ORT_FP32}
    for row in rows:
        if row.sweep != "batch":
            continue
        if (row.width, row.batch) in reference:
            row.fps_x_onnxruntime_fp32 = row.fps / reference[row.width, row.batch].fps
        flops, _ = generator_flops(row.width)
        row.share_of_peak = flops * row.fps / (peak_tflops * 1e12)


def table(rows: list[Row]) -> str:
    head = (f"{'path':<28}{'width':>6}{'batch':>6}{'conc':>6}{'batching':>9}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'fps':>8}{'fps/base':>9}{'p50/base':>9}{'exec batch':>11}{'x fp32':>8}{'% peak':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        mean_batch = f"{r.mean_executed_batch:.1f}" if r.executed_batches else "-"
        x_fp32 = f"{r.fps_x_onnxruntime_fp32:.2f}" if r.fps_x_onnxruntime_fp32 is not None else "-"
        peak = f"{100 * r.share_of_peak:.1f}" if r.share_of_peak is not None else "-"
        lines.append(
            f"{r.path:<28}{r.width:>6}{r.batch:>6}{r.concurrency:>6}{r.batching:>9}{r.samples:>6}{r.p50_ms:>9.1f}"
            f"{r.p99_ms:>9.1f}{r.fps:>8.1f}{r.fps_x_baseline:>9.2f}{r.p50_x_baseline:>9.3f}{mean_batch:>11}"
            f"{x_fp32:>8}{peak:>8}"
        )
    return "\n".join(lines)


def plot(rows: list[Row], baseline: Row, machine: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    widths = sorted({r.width for r in rows if r.path != "pytorch eager"})
    colors = dict(zip(widths, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    series = [
        (0, ORT_FP32, "-", "batch", "o", "ORT in-process"),
        (0, ORT_INT8, "-", "batch", "^", "ORT INT8 in-process"),
        (0, PYTORCH_BF16, "-", "batch", "v", "PyTorch bf16 in-process"),
        (0, "triton", "dynamic", "batch", "s", "Triton, one request of B frames"),
        (0, TRITON_INT8, "dynamic", "batch", "D", "Triton INT8, one request of B frames"),
        (1, "triton", "dynamic", "concurrency", "s", "Triton, dynamic batching"),
        (1, "triton", "off", "concurrency", "x", "Triton, batching off"),
    ]
    for column, path_name, batching, axis, marker, label in series:
        for width in widths:
            points = [r for r in rows if (r.sweep, r.path, r.width, r.batching) == (axis, path_name, width, batching)]
            if not points:
                continue
            x = [getattr(r, axis) for r in points]
            dashed = batching == "off" or path_name in (ORT_INT8, PYTORCH_BF16, TRITON_INT8)
            style = {"marker": marker, "color": colors[width], "linestyle": "--" if dashed else "-"}
            axes[0][column].plot(x, [r.fps for r in points], label=f"{label}, width {width}", **style)
            axes[1][column].plot(x, [r.p50_ms for r in points], label=f"p50, {label}, width {width}", **style)
            axes[1][column].plot(x, [r.p99_ms for r in points], alpha=0.5, **{**style, "linestyle": ":"})
    for column, xlabel in ((0, "frames per request / call (batch size)"), (1, "concurrent one-frame requests")):
        top, bottom = axes[0][column], axes[1][column]
        top.axhline(baseline.fps, color="k", linestyle="--", linewidth=1,
                    label=f"baseline: width 1.0 eager FP32 batch 128, {baseline.fps:.1f} fps")  # fmt: skip
        bottom.axhline(baseline.p50_ms, color="k", linestyle="--", linewidth=1,
                       label=f"baseline frame latency {baseline.p50_ms / 1000:.1f} s")  # fmt: skip
        top.set_ylabel("throughput (frames/s)")
        bottom.set_ylabel("latency (ms; dotted: p99)")
        ticks = sorted({r.batch if column == 0 else r.concurrency for r in rows if r.sweep != "baseline"})
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        bottom.set_yscale("log")
        secondary = top.secondary_yaxis("right", functions=(lambda y: y / baseline.fps, lambda r: r * baseline.fps))
        secondary.set_ylabel("x baseline")
    fig.suptitle(f"Wav2Lip generator serving\n{machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync.benchmarks.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI scale: width 0.5, 3 batch sizes, 3 concurrencies")
    parser.add_argument("--widths", type=float, nargs="+", help="generator widths to serve")
    parser.add_argument("--seconds", type=float, help="measuring time per Triton point")
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/serving[_quick].json)")
    parser.add_argument("--sweep", choices=("all", "config"), default="all",
                        help="config: only the embedded model's batcher config, old vs shipped vs off (serving_config.json)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="--sweep config: interleaved rounds per point")
    args = parser.parse_args(argv)
    if args.sweep == "config":
        return config_sweep(args)
    plan = QUICK if args.quick else FULL
    plan = Plan(
        widths=tuple(args.widths or plan.widths),
        batches=plan.batches,
        concurrency=plan.concurrency,
        seconds=args.seconds or plan.seconds,
        baseline_repeats=plan.baseline_repeats,
    )
    out = args.out or RESULTS / ("serving_quick.json" if args.quick else "serving.json")
    machine = describe_machine()
    load_before = os.getloadavg()
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    log(f"baseline: width {BASELINE_WIDTH} eager PyTorch FP32, batch {BASELINE_BATCH}, {plan.baseline_repeats}x")
    baseline = measure_baseline(plan.baseline_repeats)
    log(f"CPU matmul peak ({PEAK_MATMUL_SIZE}x{PEAK_MATMUL_SIZE}, bf16 and fp32)")
    peak = cpu_peak()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        for width in plan.widths:
            rows += measure_width(width, plan, Path(tmp), log)
    add_ratios([baseline, *rows], baseline)
    add_cpu_ratios(rows, peak["tflops"])
    report = {
        **report_header(plan, started, load_before),
        "notes": "random weights (timing depends on width only); Triton = embedded tritonserver, Python backend "
        "running ONNX Runtime on the same CPU as the clients; latency per request from the client; fps/base and "
        "p50/base are ratios to the baseline row; exec batch = mean batch size Triton executed; CPU paths: INT8 = "
        "static INT8 ONNX (export/quantize.py), bf16 = PyTorch bf16 channels-last (CPUs with native bf16 only), "
        "triton int8 = the embedded model with precision int8; fps_x_onnxruntime_fp32 = fps / in-process ONNX "
        "Runtime FP32's at the same width and batch; share_of_peak = counted FLOPs x fps / cpu_peak",
        "baseline": asdict(baseline),
        "cpu_peak": peak,
        "rows": [asdict(r) | {"mean_executed_batch": r.mean_executed_batch} for r in rows],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, baseline, machine, out.with_suffix(".png"))
    print(table([baseline, *rows]))
    load = report["load_average_1min"]
    print(f"\nmachine: {machine}; 1-min load average {load['start']} at start, {load['end']} at end")
    print(f"CPU peak: {peak['tflops']} TFLOP/s {peak['dtype']} matmul ({peak['tflops_by_dtype']})")
    print(f"took {report['seconds']} s; wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
