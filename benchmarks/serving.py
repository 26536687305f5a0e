"""Serving benchmark: latency p50/p99 and throughput of the generator against batch size and concurrency,
in-process ONNX Runtime vs Triton, Triton's dynamic batching on vs off, and, in the same run, the
original architecture's baseline (width 1.0, eager PyTorch FP32, batch 128): every figure is also
a ratio to that baseline on the same machine. Prints a table, writes JSON and a PNG plot.

    .venv/bin/python -m lipsync.benchmarks.serving [--quick] [--widths 0.5 1.0] [--seconds 5]

Random weights: timing does not depend on the weights' values, only on the width.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from lipsync.benchmarks.machine import describe_machine, report_header
from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.backends.base import BackendError
from lipsync.client.backends.onnxruntime import OnnxRuntimeBackend
from lipsync.client.backends.triton import TritonBackend
from lipsync.client.triton_server import EmbeddedTritonServer
from lipsync.export.verify import random_inputs

RESULTS = Path(__file__).parent / "results"
BASELINE_WIDTH = 1.0
BASELINE_BATCH = 128  # the original inference.py's --wav2lip_batch_size


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
    path: str  # "pytorch eager" | "onnxruntime in-process" | "triton"
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


def measure_onnxruntime(onnx_path: Path, width: float, plan: Plan) -> list[Row]:
    rows = []
    with OnnxRuntimeBackend(onnx_path) as backend:
        for batch in plan.batches:
            mel, faces = random_inputs(batch)
            latencies = timed_calls(lambda mel=mel, faces=faces: backend.infer(mel, faces), plan.seconds / 2)
            rows.append(row_from("batch", "onnxruntime in-process", width, batch, latencies))
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


def measure_triton_concurrency(backend: TritonBackend, width: float, plan: Plan, batching: str) -> list[Row]:
    rows = []
    for concurrency in plan.concurrency:
        before = backend.batch_executions()

        async def run(concurrency: int = concurrency) -> tuple[list[float], float]:
            try:
                return await closed_loop(backend, concurrency, plan.seconds)
            finally:
                await backend.aclose()

        latencies, elapsed = asyncio.run(run())
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


# ------------------------------------------------------------------------------------------ report


def add_ratios(rows: list[Row], baseline: Row) -> None:
    for row in rows:
        row.fps_x_baseline = row.fps / baseline.fps
        row.p50_x_baseline = row.p50_ms / baseline.p50_ms


def table(rows: list[Row]) -> str:
    head = (f"{'path':<24}{'width':>6}{'batch':>6}{'conc':>6}{'batching':>9}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'fps':>8}{'fps/base':>9}{'p50/base':>9}{'exec batch':>11}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        mean_batch = f"{r.mean_executed_batch:.1f}" if r.executed_batches else "-"
        lines.append(
            f"{r.path:<24}{r.width:>6}{r.batch:>6}{r.concurrency:>6}{r.batching:>9}{r.samples:>6}{r.p50_ms:>9.1f}"
            f"{r.p99_ms:>9.1f}{r.fps:>8.1f}{r.fps_x_baseline:>9.2f}{r.p50_x_baseline:>9.3f}{mean_batch:>11}"
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
        (0, "onnxruntime in-process", "-", "batch", "o", "ORT in-process"),
        (0, "triton", "dynamic", "batch", "s", "Triton, one request of B frames"),
        (1, "triton", "dynamic", "concurrency", "s", "Triton, dynamic batching"),
        (1, "triton", "off", "concurrency", "x", "Triton, batching off"),
    ]
    for column, path_name, batching, axis, marker, label in series:
        for width in widths:
            points = [r for r in rows if (r.sweep, r.path, r.width, r.batching) == (axis, path_name, width, batching)]
            if not points:
                continue
            x = [getattr(r, axis) for r in points]
            style = {"marker": marker, "color": colors[width], "linestyle": "--" if batching == "off" else "-"}
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
    args = parser.parse_args(argv)
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
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        for width in plan.widths:
            rows += measure_width(width, plan, Path(tmp), log)
    add_ratios([baseline, *rows], baseline)
    report = {
        **report_header(plan, started, load_before),
        "notes": "random weights (timing depends on width only); Triton = embedded tritonserver, Python backend "
        "running ONNX Runtime on the same CPU as the clients; latency per request from the client; fps/base and "
        "p50/base are ratios to the baseline row; exec batch = mean batch size Triton executed",
        "baseline": asdict(baseline),
        "rows": [asdict(r) | {"mean_executed_batch": r.mean_executed_batch} for r in rows],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, baseline, machine, out.with_suffix(".png"))
    print(table([baseline, *rows]))
    load = report["load_average_1min"]
    print(f"\nmachine: {machine}; 1-min load average {load['start']} at start, {load['end']} at end")
    print(f"took {report['seconds']} s; wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
