"""Soak benchmark: sessions opened and closed for N minutes at the cap, with one Triton restart in the middle.

`python -m lipsync.benchmarks.soak --minutes 60` starts a tritonserver (random-weight generator), the
gateway in its own process and aiortc peers in this one. Sessions are kept at `--sessions` at all
times, each living `--session-s`: microphone sessions (a talking face and speech) alternate with
pushed-speech sessions (speech pushed, then interrupted half way). Half way through, tritonserver
is stopped and started again. Every `--sample-s` it records the gateway's and tritonserver's
resident memory (the server with its model processes), the gateway's open file descriptors and
threads, and the sessions /healthz counts; each microphone session leaves its A/V offset at the peer.
At the end: memory slope after warm-up (MB per 10 minutes, least squares), A/V offset first vs last
(the drift), sessions left open after every client closed (leaks), descriptors and threads at the
end against after warm-up, frames dropped and why. Not in CI beyond a half-minute smoke run.

Writes benchmarks/results/soak.json and soak.png (soak_smoke.* for runs under 5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np
from tqdm import tqdm

from lipsync.benchmarks.machine import describe_machine, report_header
from lipsync.benchmarks.peer import GatewayClient, av_offsets
from lipsync.benchmarks.pipeline import Plan, prepare_repository, speech_clip, start_gateway, stop_gateway
from lipsync.benchmarks.synthetic_media import make_moving_face_clip
from lipsync.client.triton_server import EmbeddedTritonServer, process_group

RESULTS = Path(__file__).parent / "results"
FPS = 25
WARM_UP_FRACTION = 0.15  # memory before this share of the run is start-up, not a leak


@dataclass(frozen=True)
class SoakPlan:
    minutes: float
    sessions: int
    session_s: float
    sample_s: float
    width: float = 0.25


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes together, in MB (VmRSS from /proc)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def threads_and_fds(pid: int) -> tuple[int, int]:
    try:
        threads = next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("Threads:")
        )
        return threads, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0, 0


def slope_mb_per_10_min(times_s: list[float], values: list[float]) -> float | None:
    if len(times_s) < 3:
        return None
    return float(np.polyfit(np.asarray(times_s) / 600.0, np.asarray(values), 1)[0])


async def one_session(url: str, kind: str, frames: list, speech: np.ndarray, seconds: float, record: dict) -> None:
    """A session of `kind` ("microphone" or "push") that lives `seconds`, then closes; records what it saw."""
    async with GatewayClient(url, keep_images=False) as client:
        if kind == "microphone":
            await client.connect(frames, speech, fps=FPS, loop=True)
        else:
            await client.connect(frames, None, fps=FPS, speech_mode="push", loop=True)
        await asyncio.wait_for(client.connected.wait(), 30)
        started = time.monotonic()
        if kind == "push":
            await client.push_speech(speech)
            await asyncio.sleep(seconds / 2)
            await client.push_speech(speech[: len(speech) // 4], interrupt=True)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
        stats = await client.stats()
        record["dropped"].update(stats.get("dropped", {}))
        record["outcomes"].update(stats.get("outcomes", {}))
        record["sessions"] += 1
        if kind == "microphone":
            # The clip loops: the lag is searched within less than its period, block by block (an output
            # that skipped ahead under load shifts the lag of what follows).
            max_lag_s = min(3.0, 0.9 * len(speech) / 16_000)
            tiled = np.tile(speech, 1 + int(seconds * 16_000 / len(speech)) + 1)
            offsets = av_offsets(client, tiled, max_lag_s=max_lag_s, block_s=2.0)
            offsets = offsets[2 * FPS :]  # after the start-up of the connection
            if len(offsets):
                record["av_offsets"].append((time.monotonic(), float(np.median(offsets))))


async def keep_sessions(url: str, plan: SoakPlan, until: float, frames: list, speech: np.ndarray, record: dict) -> None:
    """`plan.sessions` slots, each opening a new session as soon as its last one ended, until `until`."""

    async def slot(index: int) -> None:
        k = index
        while time.monotonic() + plan.session_s < until:
            kind = "microphone" if k % 2 == 0 else "push"
            try:
                await one_session(url, kind, frames, speech, plan.session_s, record)
            except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
                record["failed_sessions"].append(f"{kind}: {exc}")
                await asyncio.sleep(1.0)
            k += plan.sessions

    await asyncio.gather(*(slot(i) for i in range(plan.sessions)))


async def sample(url: str, gateway_pid: int, server: EmbeddedTritonServer, started: float, samples: list) -> None:
    threads, fds = threads_and_fds(gateway_pid)
    server_pids = process_group(server.pid) if server.pid else []
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
            health = await resp.json()
    except aiohttp.ClientError:
        health = {}
    samples.append(
        {
            "t_s": round(time.monotonic() - started, 1),
            "gateway_rss_mb": round(rss_mb([gateway_pid]), 1),
            "triton_rss_mb": round(rss_mb(server_pids), 1),
            "gateway_threads": threads,
            "gateway_fds": fds,
            "sessions": health.get("sessions"),
            "inference_answering": health.get("inference_answering"),
        }
    )


async def run_soak(plan: SoakPlan, log) -> dict:
    frames = make_moving_face_clip(10 * FPS, (320, 240), FPS).frames
    speech = speech_clip()
    record: dict = {"dropped": Counter(), "outcomes": Counter(), "sessions": 0, "av_offsets": [], "failed_sessions": []}
    samples: list[dict] = []
    restart: dict = {}
    pipeline_plan = Plan(max_sessions=plan.sessions, seconds=0, settle_s=0, width=plan.width)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        repo, model = prepare_repository(pipeline_plan, Path(tmp), None)
        with EmbeddedTritonServer(repo, (model,)) as server:
            gateway, url = await start_gateway(pipeline_plan, server.grpc_url, log, model)
            started = time.monotonic()
            until = started + 60 * plan.minutes
            bar = tqdm(total=round(60 * plan.minutes), unit="s", desc="soak", file=sys.stderr)
            try:
                sessions = asyncio.create_task(keep_sessions(url, plan, until, frames, speech, record))
                restarted = False
                while not sessions.done():
                    await sample(url, gateway.pid, server, started, samples)
                    bar.n = min(bar.total, round(time.monotonic() - started))
                    bar.set_postfix(sessions=record["sessions"], failed=len(record["failed_sessions"]), refresh=False)
                    bar.refresh()
                    if not restarted and time.monotonic() - started > 30 * plan.minutes:
                        restarted = True
                        t0 = time.monotonic()
                        await asyncio.to_thread(server.stop)
                        await asyncio.to_thread(server.start)
                        await asyncio.to_thread(server.wait_ready)
                        restart = {"at_s": round(t0 - started, 1), "took_s": round(time.monotonic() - t0, 1)}
                        log(f"tritonserver restarted in {restart['took_s']} s")
                    await asyncio.wait([sessions], timeout=plan.sample_s)
                await sessions
                await asyncio.sleep(3.0)  # closings reach the gateway
                await sample(url, gateway.pid, server, started, samples)
            finally:
                bar.close()
                await stop_gateway(gateway)
    return summarise(plan, record, samples, restart, started)


def summarise(plan: SoakPlan, record: dict, samples: list[dict], restart: dict, started: float) -> dict:
    warm = [s for s in samples if s["t_s"] >= WARM_UP_FRACTION * 60 * plan.minutes] or samples
    offsets = [(round(t - started, 1), round(1000 * o, 1)) for t, o in record["av_offsets"]]
    first, last = (offsets[0][1], offsets[-1][1]) if offsets else (None, None)
    return {
        "plan": asdict(plan),
        "sessions_completed": record["sessions"],
        "sessions_failed": record["failed_sessions"],
        "sessions_left_open": samples[-1]["sessions"] if samples else None,
        "triton_restart": restart,
        "av_offset_ms": {"first": first, "last": last, "drift": None if first is None else round(last - first, 1)},
        "av_offsets_ms": offsets,
        "memory_slope_mb_per_10_min": {
            "gateway": slope_mb_per_10_min([s["t_s"] for s in warm], [s["gateway_rss_mb"] for s in warm]),
            "tritonserver": slope_mb_per_10_min([s["t_s"] for s in warm], [s["triton_rss_mb"] for s in warm]),
        },
        "gateway_fds": {"after_warm_up": warm[0]["gateway_fds"], "end": samples[-1]["gateway_fds"]} if samples else {},
        "gateway_threads": {"after_warm_up": warm[0]["gateway_threads"], "end": samples[-1]["gateway_threads"]}
        if samples
        else {},
        "frames_dropped": dict(record["dropped"]),
        "frame_outcomes": dict(record["outcomes"]),
        "samples": samples,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    axes[0, 0].plot(t, [s["gateway_rss_mb"] for s in samples], label="gateway")
    axes[0, 0].plot(t, [s["triton_rss_mb"] for s in samples], label="tritonserver + model")
    axes[0, 0].set(title="resident memory (MB)", xlabel="minutes")
    axes[0, 0].legend()
    axes[0, 1].plot(t, [s["gateway_fds"] for s in samples], label="file descriptors")
    axes[0, 1].plot(t, [s["gateway_threads"] for s in samples], label="threads")
    axes[0, 1].set(title="gateway descriptors and threads", xlabel="minutes")
    axes[0, 1].legend()
    offsets = report["av_offsets_ms"]
    axes[1, 0].plot([o[0] / 60 for o in offsets], [o[1] for o in offsets], "o-")
    axes[1, 0].axhspan(-40, 40, color="green", alpha=0.1, label="within one frame")
    axes[1, 0].set(title="A/V offset at the peer per microphone session (ms)", xlabel="minutes")
    axes[1, 0].legend()
    axes[1, 1].plot(t, [s["sessions"] or 0 for s in samples])
    if report["triton_restart"]:
        for ax in axes.flat:
            ax.axvline(report["triton_restart"]["at_s"] / 60, color="red", alpha=0.4)
    axes[1, 1].set(title="sessions open (/healthz); red: Triton restart", xlabel="minutes")
    fig.suptitle(f"soak, {report['plan']['minutes']} min: {report['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync.benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to run (default %(default)s)")
    parser.add_argument("--sessions", type=int, default=2, help="sessions kept open at all times (the cap)")
    parser.add_argument("--session-s", type=float, default=20.0, help="lifetime of each session")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between resource samples")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/soak[_smoke].json)")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        parser.error("espeak-ng is needed for the speech (apt-get install espeak-ng)")
    if args.minutes <= 0 or args.sessions < 1 or args.session_s < 5 or args.sample_s <= 0:
        parser.error("need --minutes > 0, --sessions >= 1, --session-s >= 5 and --sample-s > 0")
    plan = SoakPlan(args.minutes, args.sessions, args.session_s, args.sample_s)
    out = args.out or RESULTS / ("soak.json" if args.minutes >= 5 else "soak_smoke.json")
    load_before = os.getloadavg()
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {text}", file=sys.stderr, flush=True)

    report = {
        **report_header(plan, started, load_before),
        "machine": describe_machine(),
        **asyncio.run(run_soak(plan, log)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    summary = {k: report[k] for k in ("sessions_completed", "sessions_left_open", "av_offset_ms",
                                       "memory_slope_mb_per_10_min", "gateway_fds", "gateway_threads", "triton_restart")}  # fmt: skip
    print(json.dumps(summary, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
