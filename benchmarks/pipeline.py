"""The whole live pipeline over loopback: mouth-generation latency, added delay, per-stage times, sessions at 25 fps.

`python -m lipsync.benchmarks.pipeline [--quick]` starts a tritonserver (embedded, Python backend running
ONNX Runtime) on the live default generator (the shipped low-look-ahead weights; `--weights` for others,
`--random-weights --width W` for a width only), the gateway (`lipsync-gateway`, its own process) and
N aiortc peers in this process, each sending a talking face (320x240, 25 fps) and speech as its
microphone. For N = 1, 2, ... it measures, over a fixed window:
- mouth generation (docs/latency.md, section 1): track + Triton round trip + blend, per generated frame;
- the per-stage breakdown (track, audio_wait = the look-ahead wait, infer, blend);
- the added delay at the gateway (frame in -> frame out) and the round trip seen by the peer;
- the session's delay D and its parts (look-ahead of the served model, input hold, compute budget);
- output frames per second at each peer and what became of the frames.
N keeps 25 fps when every peer gets >= 95 % of 25 fps back; N is sustained when it also has
>= 95 % of the speech frames that show a face generated (not passed through for want of time)
and mouth p99 within the compute budget. The ramp stops at the first N that does not keep 25 fps. Everything runs on this machine, peers
included: their VP8 encoding and decoding take CPU from the gateway and the server.
Writes benchmarks/results/pipeline[_quick].json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lipsync.benchmarks.machine import describe_machine, report_header
from lipsync.benchmarks.peer import GatewayClient
from lipsync.benchmarks.synthetic_media import make_moving_face_clip
from lipsync.client import contract
from lipsync.client.audio import load_audio
from lipsync.client.triton_server import EmbeddedTritonServer
from lipsync.streaming import memory
from lipsync.streaming.config import GatewayConfig
from lipsync.streaming.frames import CLOCK_RATE

RESULTS = Path(__file__).parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
FPS = 25
PASS_THROUGH = ("timeout", "error", "backend_unavailable", "no_audio", "overloaded")


@dataclass(frozen=True)
class Plan:
    max_sessions: int
    seconds: float  # measuring window per N
    settle_s: float  # after every peer connected, before measuring
    width: float  # generator width of the random-weight model
    size: tuple[int, int] = (320, 240)
    compute_budget_ms: int = 150  # the ceiling of the gateway's adaptive budget
    ort_threads: int = 1
    weights: str | None = None  # checkpoint served (None: random weights of `width`)


# The live default: the shipped weights that need 75 ms of future audio (training/weights/MODEL_CARD.md).
LIVE_WEIGHTS = REPO_ROOT / "training" / "weights" / "wav2lip_cpu_lookahead75.pt"
FULL = Plan(max_sessions=8, seconds=20.0, settle_s=5.0, width=0.25, weights=str(LIVE_WEIGHTS))
QUICK = Plan(max_sessions=3, seconds=8.0, settle_s=4.0, width=0.25, weights=str(LIVE_WEIGHTS))


@dataclass
class Run:
    sessions: int
    sustained: bool = False
    keeps_fps: bool = False
    fps_min: float = 0.0
    fps_mean: float = 0.0
    generated_share: float = 0.0
    mouth_ms: dict[str, float | None] = field(default_factory=dict)
    stages_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    added_delay_ms: dict[str, float | None] = field(default_factory=dict)
    round_trip_ms: dict[str, float | None] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    # The sessions' delay D at the end of the window and the parts of its target (mean over sessions), ms.
    delay_ms: dict[str, float] = field(default_factory=dict)
    why_not: str = ""


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    a = 1000 * np.asarray(values, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)}


def speech_clip() -> np.ndarray:
    """Two espeak-ng sentences with half a second of silence after each (about half the time speech)."""
    parts = []
    for text in ("the quick brown fox jumps over the lazy dog", "now is the time for all good people to talk"):
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            subprocess.run(["espeak-ng", "-w", f.name, text], check=True)
            parts += [load_audio(f.name), np.zeros(CLOCK_RATE // 2, np.float32)]
    return np.concatenate(parts).astype(np.float32)


def prepare_repository(plan: Plan, folder: Path, given: Path | None) -> tuple[Path, str]:
    """A model repository with the one model to serve, its ONNX Runtime set to plan.ort_threads, and that
    model's name: given weights are exported as the live model is by `make setup` (`lipsync-export --live`:
    precision auto, INT8 calibrated on real inputs); random weights as the embedded model."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    model = contract.LIVE_MODEL if plan.weights else contract.EMBEDDED_MODEL
    if given is None:
        from lipsync.export.cli import ExportConfig, run

        source = folder / "export"
        if plan.weights:
            export = ExportConfig(live=True, checkpoint=Path(plan.weights), output_dir=source, quiet=True)
        else:
            export = ExportConfig(random_weights=True, width=plan.width, output_dir=source, fp16=False,
                                  real_inputs=False, int8=False, verify_samples=1, quiet=True)  # fmt: skip
        run(export)
    else:
        source = given
        if not (source / model).is_dir():
            model = contract.EMBEDDED_MODEL
    repository = folder / "repository"
    shutil.copytree(source / model, repository / model)
    path = repository / model / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    # One intra-op thread: the server shares two cores with the gateway and the peers, and ONNX
    # Runtime's spinning thread pool over both cores made inference 5-20x slower under that load.
    config.parameters["intra_op_threads"].string_value = str(plan.ort_threads)
    path.write_text(text_format.MessageToString(config))
    return repository, model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_gateway(
    plan: Plan, triton_url: str, log, model: str = contract.EMBEDDED_MODEL
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "lipsync.streaming.server", "--port", str(port), "--ice_loopback", "--triton_url", triton_url,
        "--model", model,
        "--compute_budget_ms", str(plan.compute_budget_ms), "--max_sessions", str(plan.max_sessions),
        "--log_level", "WARNING", "--session_idle_s", "10",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*cmd, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    import aiohttp

    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}")
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        log(f"gateway up on {url}")
                        return process, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    process.kill()
    await process.wait()
    raise RuntimeError("the gateway did not answer /healthz within 120 s")


async def stop_gateway(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the gateway process, SIGKILL it if it has not exited within 15 s."""
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        process.kill()
        await process.wait()


async def measure(n: int, url: str, frames: list[np.ndarray], speech: np.ndarray, plan: Plan, log) -> Run:
    # The peers' process: its full collections (160-340 ms, measured) would stall the peers' media and be
    # charged to the gateway; what it holds from set-up is kept out of the collector (streaming/memory.py).
    memory.freeze_startup_objects()
    clients = [GatewayClient(url, keep_images=False) for _ in range(n)]
    run = Run(sessions=n)
    try:
        for client in clients:
            await client.connect(frames, speech, fps=FPS, loop=True)
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 60)
        await asyncio.sleep(plan.settle_s)
        # Figures of the window only: what the sessions did while starting (settle_s) is subtracted.
        before = await asyncio.gather(*(c.stats(samples=True) for c in clients))
        start = time.monotonic()
        await asyncio.sleep(plan.seconds)
        end = time.monotonic()
        stats = [
            window_only(b, a)
            for b, a in zip(before, await asyncio.gather(*(c.stats(samples=True) for c in clients)), strict=True)
        ]
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    fps, round_trip = [], []
    for client in clients:
        seen = {}
        for arrived, index, _ in client.received.video:
            if index is not None and index not in seen:
                seen[index] = arrived
        window = [index for index, arrived in seen.items() if start <= arrived < end]
        fps.append(len(window) / (end - start))
        round_trip += [seen[i] - client.video_track.sent[i] for i in window if i in client.video_track.sent]
    pooled: dict[str, list[float]] = {}
    outcomes: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for s in stats:
        for stage, values in s["samples_s"].items():
            pooled.setdefault(stage, []).extend(values)
        for key, value in s["outcomes"].items():
            outcomes[key] = outcomes.get(key, 0) + value
        for key, value in s["dropped"].items():
            dropped[key] = dropped.get(key, 0) + value
    generated = outcomes.get("generated", 0)
    lost = sum(outcomes.get(k, 0) for k in PASS_THROUGH)
    run.fps_min, run.fps_mean = round(min(fps), 2), round(float(np.mean(fps)), 2)
    run.generated_share = round(generated / max(generated + lost, 1), 4)
    run.mouth_ms = percentiles_ms(pooled.get("mouth", []))
    run.stages_ms = {
        stage: percentiles_ms(pooled.get(stage, [])) for stage in ("track", "audio_wait", "infer", "blend")
    }
    run.added_delay_ms = percentiles_ms(pooled.get("added_delay", []))
    run.round_trip_ms = percentiles_ms(round_trip)
    run.outcomes, run.dropped = outcomes, dropped
    parts = [s["delay_ms"] for s in stats if s.get("delay_ms")]
    run.delay_ms = {key: round(float(np.mean([p[key] for p in parts])), 1) for key in parts[0]} if parts else {}
    reasons = []
    run.keeps_fps = run.fps_min >= 0.95 * FPS
    if not run.keeps_fps:
        reasons.append(f"a peer got {run.fps_min} fps")
    if run.generated_share < 0.95:
        reasons.append(f"only {100 * run.generated_share:.1f} % of speech frames generated")
    if run.mouth_ms["p99"] is None or run.mouth_ms["p99"] > plan.compute_budget_ms:
        reasons.append(f"mouth p99 {run.mouth_ms['p99']} ms over the {plan.compute_budget_ms} ms budget")
    run.sustained = not reasons
    run.why_not = "; ".join(reasons)
    log(f"{n} session(s): {'sustained' if run.sustained else 'NOT sustained (' + run.why_not + ')'}; "
        f"fps min {run.fps_min}, mouth p50/p99 {run.mouth_ms['p50']}/{run.mouth_ms['p99']} ms")  # fmt: skip
    return run


def delay_table(runs: list[Run]) -> str:
    head = (
        f"{'sessions':>8} {'D now':>7} {'target':>7} {'look-ahead':>10} {'input hold':>10} {'budget':>7} {'steps':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        d = r.delay_ms
        lines.append(
            f"{r.sessions:>8} {d.get('now', 0):>7.1f} {d.get('target', 0):>7.1f} {d.get('lookahead', 0):>10.1f} "
            f"{d.get('input_hold', 0):>10.1f} {d.get('budget', 0):>7.1f} {d.get('changes', 0):>6.1f}"
        )
    lines.append(
        "(ms, mean over the sessions at the end of the window; D = look-ahead + input hold + budget, in 20 ms steps)"
    )
    return "\n".join(lines)


def window_only(before: dict, after: dict) -> dict:
    """A session's stats with what it had at `before` taken out: the samples appended since (the gateway keeps
    each stage's latest 3000, more than a window holds) and the counts' increase."""
    out = dict(after)
    out["samples_s"] = {
        stage: values[len(before["samples_s"].get(stage, [])) :] for stage, values in after["samples_s"].items()
    }
    for key in ("outcomes", "dropped"):
        out[key] = {k: v - before[key].get(k, 0) for k, v in after[key].items() if v - before[key].get(k, 0)}
    return out


def table(runs: list[Run]) -> str:
    head = (f"{'sessions':>8} {'ok':>3} {'fps min':>8} {'gen %':>6} {'mouth p50':>9} {'p95':>7} {'p99':>7} "
            f"{'track':>6} {'wait':>6} {'infer':>6} {'blend':>6} {'added':>7} {'rtt p50':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in runs:
        st = {k: v["p50"] for k, v in r.stages_ms.items()}
        lines.append(
            f"{r.sessions:>8} {'yes' if r.sustained else 'no':>3} {r.fps_min:>8.1f} {100 * r.generated_share:>6.1f} "
            f"{r.mouth_ms['p50'] or 0:>9.1f} {r.mouth_ms['p95'] or 0:>7.1f} {r.mouth_ms['p99'] or 0:>7.1f} "
            f"{st['track'] or 0:>6.1f} {st['audio_wait'] or 0:>6.1f} {st['infer'] or 0:>6.1f} {st['blend'] or 0:>6.1f} "
            f"{r.added_delay_ms['p50'] or 0:>7.1f} {r.round_trip_ms['p50'] or 0:>8.1f}"
        )
    lines.append("(ms; stage columns are p50; wait = look-ahead wait for audio; added = gateway frame in -> out;"
                 " rtt = peer sent -> decoded back)")  # fmt: skip
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [Run(**r) for r in report["runs"]]
    n = [r.sessions for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
    for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
        ax1.plot(n, [r.mouth_ms[q] or np.nan for r in runs], style, label=f"mouth {q}")
    ax1.axhline(report["plan"]["compute_budget_ms"], color="grey", lw=0.8, label="compute budget ceiling")
    ax1.set_xlabel("concurrent sessions")
    ax1.set_ylabel("mouth generation latency (ms)")
    ax1.set_xticks(n)
    right = ax1.twinx()
    right.plot(n, [r.fps_min for r in runs], "k-x", label="fps (slowest peer)")
    right.axhline(0.95 * FPS, color="k", lw=0.6, ls=":")
    right.set_ylabel("frames per second back at the peer")
    right.set_ylim(0, FPS * 1.2)
    lines = ax1.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax1.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    ax1.legend(lines, labels, loc="upper left", fontsize=8)
    ax1.set_title(f"sustained: {report['max_sustained_sessions']} session(s); "
                  f"25 fps out: {report['max_sessions_at_25fps']}")  # fmt: skip

    stages = ("track", "infer", "blend", "audio_wait")
    bottom = np.zeros(len(runs))
    for stage in stages:
        values = np.array([r.stages_ms[stage]["p50"] or 0.0 for r in runs])
        ax2.bar(n, values, bottom=bottom, label=stage if stage != "audio_wait" else "look-ahead wait")
        bottom += values
    ax2.plot(n, [r.added_delay_ms["p50"] or np.nan for r in runs], "k-o", label="added delay (gateway)")
    ax2.plot(n, [r.round_trip_ms["p50"] or np.nan for r in runs], "r--o", label="round trip at the peer")
    ax2.plot(n, [r.delay_ms.get("now", np.nan) for r in runs], "k:s", label="D at the end (look-ahead + hold + budget)")
    ax2.set_xlabel("concurrent sessions")
    ax2.set_ylabel("ms (p50)")
    ax2.set_xticks(n)
    ax2.set_title("per-stage breakdown and glass-to-glass delay")
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    load = report["load_average_1min"]
    fig.suptitle(f"Live pipeline over loopback - {report['machine']} - 1-min load {load['start']}..{load['end']}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run_benchmark(plan: Plan, repository: Path | None, log) -> tuple[list[Run], dict]:
    clip = make_moving_face_clip(10 * FPS, plan.size, FPS)
    speech = speech_clip()
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        repo, model = prepare_repository(plan, Path(tmp), repository)
        log(
            f"model repository ready ({'given' if repository else plan.weights or f'random weights, width {plan.width}'})"
        )
        with EmbeddedTritonServer(repo, (model,)) as server:
            gateway, url = await start_gateway(plan, server.grpc_url, log, model)
            runs: list[Run] = []
            try:
                for n in range(1, plan.max_sessions + 1):
                    run = await measure(n, url, clip.frames, speech, plan, log)
                    runs.append(run)
                    if not run.keeps_fps:
                        break
                    await asyncio.sleep(1.0)  # let the gateway close the last sessions
                health = await gateway_health(url)
            finally:
                await stop_gateway(gateway)
    lookahead = health["lookahead_ms"]
    return runs, {
        "lookahead_ms": lookahead,
        # Where every session starts, before the budget was measured (then D follows it: runs[].delay_ms).
        "delay_ms": GatewayConfig(compute_budget_ms=plan.compute_budget_ms).delay_ms("microphone", lookahead),
        "compute_budget_ms": health["compute_budget_ms"],
    }


async def gateway_health(url: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
        return await resp.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync.benchmarks.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI scale: up to 3 sessions, 8 s windows")
    parser.add_argument("--max-sessions", type=int, help="stop the ramp here")
    parser.add_argument("--seconds", type=float, help="measuring window per number of sessions")
    parser.add_argument("--weights", type=Path, help=f"generator checkpoint to serve (default: {LIVE_WEIGHTS.name})")
    parser.add_argument("--random-weights", action="store_true", help="serve random weights of --width instead")
    parser.add_argument("--width", type=float, help="width of the random-weight generator to serve")
    parser.add_argument("--repository", type=Path, help="serve this exported repository instead of random weights")
    parser.add_argument("--budget-ms", type=int, help="the gateway's compute budget per frame")
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/pipeline[_quick].json)")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        parser.error("espeak-ng is needed for the speech (apt-get install espeak-ng)")
    base = QUICK if args.quick else FULL
    plan = Plan(
        max_sessions=args.max_sessions or base.max_sessions,
        seconds=args.seconds or base.seconds,
        settle_s=base.settle_s,
        width=args.width or base.width,
        compute_budget_ms=args.budget_ms or base.compute_budget_ms,
        weights=None if args.random_weights else str(args.weights or base.weights),
    )
    out = args.out or RESULTS / ("pipeline_quick.json" if args.quick else "pipeline.json")
    machine = describe_machine()
    load_before = os.getloadavg()
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    runs, extra = asyncio.run(run_benchmark(plan, args.repository, log))
    sustained = [r.sessions for r in runs if r.sustained]
    at_fps = [r.sessions for r in runs if r.keeps_fps]
    report = {
        **report_header(plan, started, load_before),
        "notes": f"served weights: {plan.weights or f'random, width {plan.width}'} (unless --repository); tritonserver "
        f"(Python backend, ONNX Runtime, {plan.ort_threads} intra-op thread), gateway process and peers share this "
        f"machine; peers send {plan.size[0]}x{plan.size[1]} VP8 at 25 fps with espeak-ng speech as microphone (~80 % of "
        "frames speech); the gateway holds frames and audio back by D = the served model's look-ahead + live-audio "
        "input hold + a compute budget that follows the measured p99 (runs[].delay_ms)",
        "max_sustained_sessions": max(sustained) if sustained else 0,
        "max_sessions_at_25fps": max(at_fps) if at_fps else 0,
        **extra,
        "runs": [asdict(r) for r in runs],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(table(runs))
    print()
    print(delay_table(runs))
    load = report["load_average_1min"]
    print(f"\nsustained (25 fps, >= 95 % of speech frames generated, p99 within budget): "
          f"{report['max_sustained_sessions']} session(s); 25 fps out: {report['max_sessions_at_25fps']}")  # fmt: skip
    print(f"machine: {machine}; 1-min load average {load['start']} at start, {load['end']} at end")
    print(f"took {report['seconds']} s; wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
