"""Where one live session's CPU goes: per process (gateway, tritonserver with its model process, the peer)
and, inside the gateway and the model process, per stage (VP8 decode and encode, Opus, frame conversion,
tracking, face mesh, blend, mel/VAD/resampling, the Triton client, inference, WebRTC transport, the rest).

    .venv/bin/python -m lipsync.benchmarks.profile_session [--seconds 15] [--sessions 1]

The same set-up as benchmarks/pipeline.py (a tritonserver on the live default weights, the gateway in its
own process, aiortc peers in this one sending 320x240 VP8 at 25 fps and speech). Process CPU comes from
/proc (user + system time, children of tritonserver included); the stage split from py-spy sampling the
gateway and the model process at 100 Hz (active threads only), each sample filed under the first stage
whose code is on its stack, leaf first. Writes benchmarks/results/profile_session.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lipsync.benchmarks.machine import report_header
from lipsync.benchmarks.peer import GatewayClient
from lipsync.benchmarks.pipeline import FPS, QUICK, prepare_repository, speech_clip, start_gateway, stop_gateway
from lipsync.benchmarks.synthetic_media import make_moving_face_clip
from lipsync.client.triton_server import EmbeddedTritonServer, process_group

RESULTS = Path(__file__).parent / "results"
TICKS = os.sysconf("SC_CLK_TCK")

# (stage, markers): a sample belongs to the first stage, leaf first, one of whose markers is in a frame.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vp8 decode", ("vpx.py:decode", "Vp8Decoder")),
    ("vp8 encode", ("vpx.py:encode", "Vp8Encoder")),
    ("opus", ("opus.py",)),
    ("frame conversion", ("to_ndarray", "from_ndarray", "reformat", "_video_frame")),
    ("face mesh", ("face_landmarks.py",)),
    ("tracking", ("face_tracking.py",)),
    ("crop", ("face_crop.py",)),
    ("blend", ("blend.py", "mouth_mask.py", "compositing.py")),
    ("mel, VAD, resampling", ("streaming_mel.py", "vad.py", "client/audio.py", "speech_source.py")),
    ("inference (model process)", ("onnxruntime", "backends/pytorch.py", "cpu_paths.py")),
    ("triton python backend", ("model.py", "triton_python_backend_utils")),
    ("triton client (gRPC)", ("backends/triton.py", "grpc")),
    ("WebRTC transport (RTP, SRTP, ICE)", ("aiortc", "aioice", "pylibsrtp", "crypto")),
    ("asyncio and the rest", ("",)),
)


# Leaves where a thread waits without running (py-spy's idle detection misses waits inside C calls that
# release the GIL): an executor thread waiting for work, the event loop in select(), a lock or condition.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py:81)",
    "select (selectors.py",
    "Condition.wait",
    "Event.wait",
    "Queue.get",
)


@dataclass(frozen=True)
class Plan:
    sessions: int
    seconds: float
    settle_s: float = 5.0
    rate_hz: int = 100
    # Sample only the thread holding the GIL: Python's own CPU time, by stage (a thread waiting for the GIL
    # is otherwise counted where it waits); native work that releases the GIL (codecs, ONNX Runtime) is missed.
    gil: bool = False


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def stage_of(frames: list[str]) -> str:
    """The stage of one sampled stack (its frames leaf first)."""
    for frame in frames:
        for stage, markers in STAGES[:-1]:
            if any(marker in frame for marker in markers):
                return stage
    return STAGES[-1][0]


def split_by_stage(raw: str) -> tuple[Counter[str], Counter[str]]:
    """py-spy's raw output ('frame;frame;...;leaf count' per line) as samples per stage, and the samples
    by stage and innermost frames (what to look at next)."""
    counts: Counter[str] = Counter()
    rest: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = list(reversed(stack.split(";")))
        if any(marker in frames[0] for marker in IDLE_LEAVES):
            continue
        stage = stage_of(frames)
        counts[stage] += int(n)
        rest[f"{stage}: {' < '.join(frames[:3])}"] += int(n)
    return counts, rest


def start_sampling(pid: int, plan: Plan, out: Path) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return None
    command = [spy, "record", "--pid", str(pid), "--duration", str(int(plan.seconds)), "--rate", str(plan.rate_hz),
               "--format", "raw", "--output", str(out), "--nonblocking", *(["--gil"] if plan.gil else [])]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def profile(plan: Plan, log) -> dict:
    clip = make_moving_face_clip(10 * FPS, QUICK.size, FPS)
    speech = speech_clip()
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="profile-session-") as tmp:
        repo, model = prepare_repository(QUICK, Path(tmp), None)
        with EmbeddedTritonServer(repo, (model,)) as server:
            gateway, url = await start_gateway(QUICK, server.grpc_url, log, model)
            clients = [GatewayClient(url, keep_images=False) for _ in range(plan.sessions)]
            try:
                for client in clients:
                    await client.connect(clip.frames, speech, fps=FPS, loop=True)
                await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 60)
                await asyncio.sleep(plan.settle_s)
                triton = process_group(server.pid)
                stub = [pid for pid in triton if pid != server.pid]
                processes = {"gateway": [gateway.pid], "tritonserver + model process": triton, "peers": [os.getpid()]}
                before = {name: cpu_seconds(pids) for name, pids in processes.items()}
                sampled = {"gateway": gateway.pid, **({"model process": stub[0]} if stub else {})}
                spies = {name: start_sampling(pid, plan, Path(tmp) / f"{name}.txt") for name, pid in sampled.items()}
                frames_before = sum(len(c.received.video) for c in clients)
                start = time.monotonic()
                await asyncio.sleep(plan.seconds)
                elapsed = time.monotonic() - start
                after = {name: cpu_seconds(pids) for name, pids in processes.items()}
                frames = sum(len(c.received.video) for c in clients) - frames_before
                stats = await asyncio.gather(*(c.stats() for c in clients))
            finally:
                await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
                await stop_gateway(gateway)
            for spy in spies.values():
                if spy is not None:
                    spy.wait(timeout=60)
            result["frames_back"] = frames
            result["fps_back"] = round(frames / elapsed / plan.sessions, 2)
            result["outcomes"] = dict(sum((Counter(s["outcomes"]) for s in stats), Counter()))
            result["cpu_cores"] = {name: round((after[name] - before[name]) / elapsed, 3) for name in processes}
            result["cpu_ms_per_frame"] = {
                name: round(1000 * (after[name] - before[name]) / max(frames, 1), 2) for name in processes
            }
            result["stages"] = {}
            for name, spy in spies.items():
                path = Path(tmp) / f"{name}.txt"
                if spy is None or not path.is_file():
                    result["stages"][name] = "not sampled (py-spy missing or could not attach)"
                    continue
                counts, rest = split_by_stage(path.read_text())
                total = sum(counts.values()) or 1
                # The process's CPU per frame (from /proc) split in the proportions of the busy samples.
                process_ms = result["cpu_ms_per_frame"][
                    "gateway" if name == "gateway" else "tritonserver + model process"
                ]
                result["stages"][name] = {
                    stage: {"share": round(n / total, 3), "cpu_ms_per_frame": round(process_ms * n / total, 2)}
                    for stage, n in counts.most_common()
                }
                top = {frames_: round(n / total, 3) for frames_, n in rest.most_common(25)}
                result.setdefault("top_frames", {})[name] = top
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lipsync.benchmarks.profile_session", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="profiling window")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent peers")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (see Plan.gil)")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile_session.json")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        parser.error("espeak-ng is needed for the speech (apt-get install espeak-ng)")
    plan = Plan(sessions=args.sessions, seconds=args.seconds, gil=args.gil)
    load_before = os.getloadavg()
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    result = asyncio.run(profile(plan, log))
    report = {
        **report_header(plan, started, load_before),
        "notes": "one live session as in benchmarks/pipeline.py (live default weights, 320x240 VP8 at 25 fps, speech "
        "as microphone); cpu_cores = CPU seconds per second per process; stages from py-spy samples of active "
        "threads (leaf-first match), cpu_ms_per_frame = samples / rate / frames returned",
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{result['frames_back']} frames back ({result['fps_back']} fps per session); outcomes {result['outcomes']}")
    for name, cores in result["cpu_cores"].items():
        print(f"  {name:<30} {cores:5.2f} cores  {result['cpu_ms_per_frame'][name]:7.2f} CPU ms per frame")
    for name, stages in result["stages"].items():
        print(f"\n{name}:")
        if isinstance(stages, str):
            print(f"  {stages}")
            continue
        for stage, figures in stages.items():
            print(f"  {stage:<36} {100 * figures['share']:5.1f} %  {figures['cpu_ms_per_frame']:6.2f} ms/frame")
    print(f"\nmachine: {report['machine']}; 1-min load {report['load_average_1min']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
