"""Offline `lipsync` benchmark: per-stage time and frames per second on a 10-s 640x480 clip.

Runs the whole command (decode, track, crop, model, blend, encode) once per in-process backend
on the same synthetic moving-face clip and speech-shaped audio; prints a table, writes
benchmarks/results/offline.json and offline.png.

    .venv/bin/python -m lipsync.benchmarks.offline [--seconds 10] [--checkpoint PATH] [--onnx PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import av
import numpy as np

from lipsync.benchmarks.machine import describe_machine
from lipsync.benchmarks.synthetic_media import make_moving_face_clip
from lipsync.client.backends import DEFAULT_CHECKPOINT, DEFAULT_ONNX_MODEL
from lipsync.client.lipsync import LipSyncConfig, run

RESULTS = Path(__file__).parent / "results"


def write_inputs(folder: Path, seconds: float, size=(640, 480), fps: int = 25) -> tuple[Path, Path]:
    clip = make_moving_face_clip(int(seconds * fps), size=size, fps=fps, seed=1)
    video = folder / "face.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for frame in clip.frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    rate = 16_000
    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * 130 * k * t) / k for k in range(1, 10))
    samples = (0.1 * voice * np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None)).astype(np.float32)
    audio = folder / "speech.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return video, audio


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted({s for r in results for s in r["ms_per_frame"]})
    fig, ax = plt.subplots(figsize=(8, 4))
    left = np.zeros(len(results))
    for stage in stages:
        values = np.array([r["ms_per_frame"].get(stage, 0.0) for r in results])
        ax.barh([r["backend"] for r in results], values, left=left, label=stage)
        left += values
    for i, r in enumerate(results):
        ax.text(left[i] + 0.5, i, f"{r['fps']:.1f} fps", va="center")
    ax.set_xlabel("ms per output frame")
    ax.set_title(f"lipsync offline, {results[0]['seconds']:.0f}-s 640x480 clip\n{results[0]['machine']}", fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX_MODEL)
    parser.add_argument("--out", type=Path, default=RESULTS / "offline.json")
    args = parser.parse_args()
    machine = describe_machine()
    backends = []
    if args.onnx.is_file():
        backends.append(("onnxruntime", args.onnx))
    if args.checkpoint.is_file():
        backends.append(("pytorch", args.checkpoint))
    if not backends:
        parser.error(f"neither {args.onnx} nor {args.checkpoint} exists: run `make setup` first")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        video, audio = write_inputs(Path(tmp), args.seconds)
        for name, weights in backends:
            config = LipSyncConfig(
                face=video, audio=audio, outfile=Path(tmp) / f"{name}.mp4", checkpoint_path=weights, backend=name
            )
            report = run(config, progress=False)
            print(f"\n== {name} ({weights.name}) ==\n{report.summary}")
            results.append(
                {
                    "backend": name,
                    "weights": str(weights),
                    "seconds": args.seconds,
                    "frames": report.frames,
                    "fps": report.frames / report.wall_seconds,
                    "wall_seconds": report.wall_seconds,
                    "ms_per_frame": {k: 1000 * v / report.frames for k, v in report.stage_seconds.items()},
                    "machine": machine,
                }
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"\nmachine: {machine}\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
