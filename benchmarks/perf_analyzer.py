"""Triton's own load generator, perf_analyzer, against the served model: a concurrency sweep over gRPC.

Starts the embedded tritonserver on the project's model repository (or measures the Triton at --url),
feeds perf_analyzer real inputs (the astronaut's face crop and espeak-ng speech mel windows, the export
check's own, written as its --input-data JSON), prints its report for each concurrency and writes
benchmarks/results/perf_analyzer.json and .png: throughput, p50/p90/p99 latency and where a request's
time goes (client send/receive, network, Triton's queue and compute) per concurrency.

    .venv/bin/python -m lipsync.benchmarks.perf_analyzer [--models wav2lip_python wav2lip_live]
        [--concurrency 1 2 4 8] [--window-ms 3000] [--url HOST:PORT]

The perf_analyzer binary comes with the tritonclient wheel; it links libb64.so.0d (Debian libb64-0d)
and libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel, used without a GPU too), which this module
puts on its LD_LIBRARY_PATH.
"""

from __future__ import annotations

import argparse
import base64
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lipsync.benchmarks.machine import describe_machine, report_header
from lipsync.client import contract
from lipsync.client import model_repository as layout
from lipsync.client.triton_server import EmbeddedTritonServer, TritonServerError

RESULTS = Path(__file__).parent / "results"
BINARY_NAME = "perf_analyzer"
# perf_analyzer's own words when a point's windows never agree within the stability percentage.
UNSTABLE = "Failed to obtain stable measurement"
# A busy machine rarely keeps 3 windows within perf_analyzer's default 10 %: 25 % first, then a retry
# that accepts any 3 windows (stability 1000 %), recorded as such.
STABILITY_PERCENT = 25
RETRY_STABILITY_PERCENT = 1000


class PerfAnalyzerUnavailable(RuntimeError):
    """The perf_analyzer binary is missing or cannot start (a library it links is not installed)."""


class PerfAnalyzerFailed(RuntimeError):
    """perf_analyzer ran but reported no result (unstable windows, refused requests); carries its output."""


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...]
    concurrency: tuple[int, ...]
    window_ms: int  # perf_analyzer --measurement-interval
    max_trials: int  # windows per point before it gives up on stability
    input_samples: int  # distinct real inputs, sent round robin


DEFAULT_PLAN = Plan(
    models=(contract.EMBEDDED_MODEL,), concurrency=(1, 2, 4, 8), window_ms=3000, max_trials=6, input_samples=16
)


# ------------------------------------------------------------------------------------------ the binary


def binary() -> Path:
    """perf_analyzer from this environment's bin (where the tritonclient wheel installs it), else PATH."""
    beside = Path(sys.executable).parent / BINARY_NAME
    found = beside if beside.is_file() else (Path(p) if (p := shutil.which(BINARY_NAME)) else None)
    if found is None:
        raise PerfAnalyzerUnavailable(
            f"{BINARY_NAME} not found in {beside.parent} or on PATH; it comes with the tritonclient wheel "
            "(pip install -e '.[serve]')"
        )
    return found


def cuda_runtime_libraries() -> Path | None:
    """The folder holding libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel, None without the wheel."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except ModuleNotFoundError:  # no `nvidia` namespace at all
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return lib if (lib / "libcudart.so.12").is_file() else None


def environment() -> dict[str, str]:
    """This process's environment with the CUDA runtime wheel's libraries first on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    lib = cuda_runtime_libraries()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def version() -> str:
    """perf_analyzer's --version line; PerfAnalyzerUnavailable naming the missing library if it cannot start."""
    path = binary()
    try:
        done = subprocess.run(
            [str(path), "--version"], env=environment(), capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise PerfAnalyzerUnavailable(f"{path} cannot be executed: {exc}") from exc
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        hint = ""
        if "libb64" in output:
            hint = " (apt-get install libb64-0d)"
        elif "libcudart" in output:
            hint = " (pip install nvidia-cuda-runtime-cu12)"
        raise PerfAnalyzerUnavailable(f"{path} does not start{hint}: {output[-500:]}")
    return output.splitlines()[-1] if output else "unknown version"


# ------------------------------------------------------------------------------------------ input data


def write_input_data(path: Path, samples: int, seed: int = 0) -> Path:
    """perf_analyzer's --input-data JSON: `samples` real one-frame requests, each tensor base64 little-endian.

    Real inputs, not perf_analyzer's random bytes: those read as floats are often NaN, which the served
    model refuses (and zeros would time a face the network never sees)."""
    from lipsync.export.verify import real_inputs

    mel, faces = real_inputs(samples, seed)
    steps = []
    for i in range(samples):
        step = {}
        for spec, array in ((contract.MEL_INPUT, mel[i]), (contract.FACE_INPUT, faces[i])):
            if array.shape != spec.shape:
                raise ValueError(f"{spec.name} sample has shape {array.shape}, the contract says {spec.shape}")
            raw = array.astype(spec.numpy_dtype.newbyteorder("<"), copy=False).tobytes()
            step[spec.name] = {"b64": base64.b64encode(raw).decode("ascii")}
        steps.append(step)
    path.write_text(json.dumps({"data": steps}))
    return path


# ------------------------------------------------------------------------------------------ one point


@dataclass
class Point:
    """One perf_analyzer measurement: a model at one concurrency (times in ms, from its CSV's microseconds)."""

    model: str
    concurrency: int
    throughput_per_s: float
    latency_ms: dict[str, float]  # avg, p50, p90, p95, p99 (client side)
    server_ms: dict[str, float]  # queue, compute_input, compute_infer, compute_output (per request, averages)
    client_ms: dict[str, float]  # send, network_and_server, recv
    stability_percent: int  # the stability perf_analyzer was held to for this point
    # Requests per model execution (Triton's inference count / execution count): how much the dynamic
    # batcher batched. Only in perf_analyzer's printed report, not its CSV; None where it is absent.
    mean_batch: float | None = None


_LATENCY_COLUMNS = {"avg": "Avg latency", "p50": "p50 latency", "p90": "p90 latency", "p95": "p95 latency",
                    "p99": "p99 latency"}  # fmt: skip
_SERVER_COLUMNS = {"queue": "Server Queue", "compute_input": "Server Compute Input",
                   "compute_infer": "Server Compute Infer", "compute_output": "Server Compute Output"}  # fmt: skip
_CLIENT_COLUMNS = {"send": "Client Send", "network_and_server": "Network+Server Send/Recv", "recv": "Client Recv"}


def parse_csv(text: str, model: str, stability_percent: int) -> list[Point]:
    """perf_analyzer's -f CSV (one row per concurrency, times in microseconds) as Points."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise PerfAnalyzerFailed(f"perf_analyzer wrote an empty CSV report: {text[:200]!r}")
    needed = {"Concurrency", "Inferences/Second", *_LATENCY_COLUMNS.values(), *_SERVER_COLUMNS.values()}
    if missing := sorted(needed - set(rows[0])):
        raise PerfAnalyzerFailed(f"perf_analyzer's CSV lacks columns {missing}; it has {sorted(rows[0])}")

    def ms(row: dict[str, str], columns: dict[str, str]) -> dict[str, float]:
        return {key: round(float(row[col]) / 1000, 3) for key, col in columns.items() if row.get(col) not in (None, "")}

    return [
        Point(
            model=model,
            concurrency=int(row["Concurrency"]),
            throughput_per_s=float(row["Inferences/Second"]),
            latency_ms=ms(row, _LATENCY_COLUMNS),
            server_ms=ms(row, _SERVER_COLUMNS),
            client_ms=ms(row, _CLIENT_COLUMNS),
            stability_percent=stability_percent,
        )
        for row in rows
    ]


def mean_batch(output: str) -> float | None:
    """Inference count / execution count from the server section of perf_analyzer's printed report."""
    inferences = re.search(r"Inference count: (\d+)", output)
    executions = re.search(r"Execution count: (\d+)", output)
    if not inferences or not executions or int(executions.group(1)) == 0:
        return None
    return round(int(inferences.group(1)) / int(executions.group(1)), 3)


def say(text: str) -> None:
    print(text, flush=True)  # flushed: perf_analyzer's reports and the progress lines (stderr) interleave


def command(url: str, model: str, concurrency: int, input_data: Path, csv_path: Path, plan: Plan,
            stability_percent: int) -> list[str]:  # fmt: skip
    return [
        str(binary()),
        "-m", model,
        "-u", url,
        "-i", "grpc",
        "--input-data", str(input_data),
        "--concurrency-range", str(concurrency),
        "--measurement-interval", str(plan.window_ms),
        "--max-trials", str(plan.max_trials),
        "--stability-percentage", str(stability_percent),
        "-f", str(csv_path),
        "--verbose-csv",  # adds the average latency to the CSV
    ]  # fmt: skip


def run_point(url: str, model: str, concurrency: int, input_data: Path, plan: Plan, workdir: Path,
              echo=say) -> tuple[Point, list[str]]:  # fmt: skip
    """Measure one (model, concurrency); perf_analyzer's report goes to `echo`. Returns the point and the
    command that produced it. An unstable first try is retried once, accepting any three windows."""
    csv_path = workdir / f"{model}_c{concurrency}.csv"
    timeout_s = 60 + 3 * plan.max_trials * plan.window_ms / 1000
    output = ""
    for stability in (STABILITY_PERCENT, RETRY_STABILITY_PERCENT):
        cmd = command(url, model, concurrency, input_data, csv_path, plan, stability)
        try:
            done = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerFailed(f"perf_analyzer ran past {timeout_s:.0f} s for {model} at {concurrency}") from exc
        output = done.stdout + done.stderr
        echo(_report_part(output))
        if done.returncode == 0 and csv_path.is_file():
            (point,) = parse_csv(csv_path.read_text(), model, stability)
            point.mean_batch = mean_batch(output)
            return point, cmd
        if UNSTABLE not in output:
            break
        echo(f"({model}, concurrency {concurrency}: not stable within {stability} %; measuring again, "
             "accepting the first three windows)")  # fmt: skip
    raise PerfAnalyzerFailed(
        f"perf_analyzer found no result for {model} at concurrency {concurrency}:\n{output[-2000:]}"
    )


def _report_part(output: str) -> str:
    """perf_analyzer's output from its measurement report on (its settings banner is the same every time)."""
    start = output.find("Request concurrency:")
    return output[start:].rstrip() if start >= 0 else output.rstrip()


# ------------------------------------------------------------------------------------------ report


def table(points: list[Point]) -> str:
    head = (f"{'model':<16}{'conc':>5}{'infer/s':>9}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'avg ms':>8}"
            f"{'queue':>8}{'infer':>8}{'in+out':>8}{'network':>9}{'batch':>7}{'stab %':>7}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for p in points:
        lat, srv = p.latency_ms, p.server_ms
        io_ms = srv.get("compute_input", 0.0) + srv.get("compute_output", 0.0)
        batch = f"{p.mean_batch:.2f}" if p.mean_batch is not None else "-"
        lines.append(
            f"{p.model:<16}{p.concurrency:>5}{p.throughput_per_s:>9.1f}{lat['p50']:>8.2f}{lat['p90']:>8.2f}"
            f"{lat['p99']:>8.2f}{lat.get('avg', float('nan')):>8.2f}{srv['queue']:>8.2f}{srv['compute_infer']:>8.2f}"
            f"{io_ms:>8.2f}{p.client_ms.get('network_and_server', float('nan')):>9.2f}{batch:>7}{p.stability_percent:>7}"
        )
    return "\n".join(lines)


def plot(points: list[Point], machine: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(p.model for p in points))
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, (top, middle, bottom) = plt.subplots(1, 3, figsize=(15, 4.8))
    for model in models:
        mine = [p for p in points if p.model == model]
        x = [p.concurrency for p in mine]
        top.plot(x, [p.throughput_per_s for p in mine], marker="o", color=colors[model], label=model)
        for key, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
            middle.plot(x, [p.latency_ms[key] for p in mine], marker="o", linestyle=style, color=colors[model],
                        label=f"{model} {key}")  # fmt: skip
    # Where the average request's time goes, per model and concurrency: queue, compute, the rest.
    labels, queue, compute, rest = [], [], [], []
    for p in points:
        labels.append(f"{p.model.removeprefix('wav2lip_')}\nc={p.concurrency}")
        queue.append(p.server_ms["queue"])
        compute.append(sum(p.server_ms.get(k, 0.0) for k in ("compute_input", "compute_infer", "compute_output")))
        rest.append(max(p.latency_ms.get("avg", p.latency_ms["p50"]) - queue[-1] - compute[-1], 0.0))
    bottom.bar(labels, compute, label="server compute (input + infer + output)")
    bottom.bar(labels, queue, bottom=compute, label="server queue (dynamic batcher)")
    bottom.bar(labels, rest, bottom=[a + b for a, b in zip(compute, queue, strict=True)],
               label="client + gRPC + network")  # fmt: skip
    bottom.tick_params(axis="x", labelsize=7)
    ticks = sorted({p.concurrency for p in points})
    for ax, ylabel in ((top, "throughput (inferences/s)"), (middle, "client latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("requests in flight (perf_analyzer concurrency)")
        ax.set_ylabel(ylabel)
    bottom.set_ylabel("average request latency (ms)")
    for ax in (top, middle, bottom):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"perf_analyzer over gRPC, one-frame requests of real inputs\n{machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main


def sweep(url: str, plan: Plan, workdir: Path, log, echo=say) -> tuple[list[Point], list[list[str]]]:
    input_data = write_input_data(workdir / "input_data.json", plan.input_samples)
    points, commands = [], []
    for model in plan.models:
        for concurrency in plan.concurrency:
            log(f"{model}: concurrency {concurrency}")
            point, cmd = run_point(url, model, concurrency, input_data, plan, workdir, echo)
            points.append(point)
            commands.append(cmd)
    return points, commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lipsync.benchmarks.perf_analyzer", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_PLAN.models),
                        help=f"served models to measure, one after the other (default {contract.EMBEDDED_MODEL}; "
                        f"{contract.LIVE_MODEL} is the gateway's)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_PLAN.concurrency),
                        help="requests in flight, one perf_analyzer run each")  # fmt: skip
    parser.add_argument("--window-ms", type=int, default=DEFAULT_PLAN.window_ms, help="measurement window (ms)")
    parser.add_argument("--max-trials", type=int, default=DEFAULT_PLAN.max_trials,
                        help="windows per point before perf_analyzer gives up on stability")  # fmt: skip
    parser.add_argument("--url", help="measure the Triton at this gRPC address (host:port) instead of starting one")
    parser.add_argument("--model-repository", type=Path, help="repository the embedded server serves")
    parser.add_argument("--out", type=Path, default=RESULTS / "perf_analyzer.json", help="JSON path (+ .png)")
    args = parser.parse_args(argv)
    if any(c < 1 for c in args.concurrency) or args.window_ms < 100 or args.max_trials < 3:
        parser.error("concurrency must be >= 1, --window-ms >= 100 and --max-trials >= 3")
    plan = plan_from_args(args)
    try:
        pa_version = version()
    except PerfAnalyzerUnavailable as exc:
        print(f"perf_analyzer: {exc}", file=sys.stderr)
        return 2
    machine = describe_machine()
    load_before = os.getloadavg()
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        try:
            if args.url:
                server_note = f"the Triton at {args.url}"
                points, commands = sweep(args.url, plan, Path(tmp), log)
            else:
                repository = args.model_repository or layout.DEFAULT_REPOSITORY
                server_note = f"embedded tritonserver (nvidia-pytriton wheel) on {repository}"
                log(f"starting the embedded tritonserver on {repository} ({', '.join(plan.models)})")
                with EmbeddedTritonServer(repository, plan.models) as server:
                    points, commands = sweep(server.grpc_url, plan, Path(tmp), log)
        except (PerfAnalyzerFailed, TritonServerError) as exc:
            print(f"perf_analyzer: {exc}", file=sys.stderr)
            return 1
        # The temporary folder is gone once written: the commands name it $TMP.
        commands = [" ".join(c).replace(tmp, "$TMP") for c in commands]
    report = {
        **report_header(plan, started, load_before),
        "perf_analyzer": pa_version,
        "server": server_note,
        "notes": "perf_analyzer (tritonclient wheel) over gRPC, one-frame requests (batch 1) of real inputs "
        "(astronaut face crop + espeak-ng mel windows, round robin), closed loop at each concurrency; times in ms; "
        "latency_ms is client side, server_ms the per-request averages Triton reports (queue = waiting in the "
        "dynamic batcher); mean_batch = requests per model execution (Triton's inference / execution counts); "
        "stability_percent is what perf_analyzer held the windows to (1000: its first 3 windows "
        "taken as they came, on a busy machine)",
        "commands": commands,
        "points": [asdict(p) for p in points],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(points, machine, args.out.with_suffix(".png"))
    print()
    print(table(points))
    load = report["load_average_1min"]
    print(f"\nmachine: {machine}; 1-min load average {load['start']} at start, {load['end']} at end")
    print(f"took {report['seconds']} s; wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def plan_from_args(args: argparse.Namespace) -> Plan:
    return Plan(
        models=tuple(args.models),
        concurrency=tuple(args.concurrency),
        window_ms=args.window_ms,
        max_trials=args.max_trials,
        input_samples=DEFAULT_PLAN.input_samples,
    )


if __name__ == "__main__":
    sys.exit(main())
