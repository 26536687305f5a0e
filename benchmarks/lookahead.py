"""What a smaller audio look-ahead costs in lip sync: the same network trained with its mel window
moved back (docs/latency.md, section 2), measured against the 200 ms default on held-out clips.

Each model is given as OFFSET=CHECKPOINT (offset in mel columns, read back from the checkpoint and
checked). Every model lip-syncs the same held-out synthetic talking heads (benchmarks/quality.py's
population, which no corpus is rendered from), re-driven by their own speech and dubbed with a
neighbour's, through the product's own pieces (tracker, crop, backend with its windows cut at its
own offset, mouth blend). Figures per model: LSE-D / LSE-C by the project's expert, the independent
sync measure (face-mesh lip opening of the output against the speech's loudness, best correlation
within +-10 frames), and the lower-face PSNR of self-reconstruction, each with its ratio to the
200 ms model's.

    .venv/bin/python -m lipsync.benchmarks.lookahead --model=0=training/weights/wav2lip_cpu.pt \\
        --model=-10=runs/la10/checkpoint.pt --model=-13=runs/la13/checkpoint.pt [--clips 8]

Writes benchmarks/results/lookahead.json and lookahead.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lipsync.benchmarks.machine import describe_machine
from lipsync.benchmarks.quality import make_material
from lipsync.client import contract
from lipsync.client.backends.pytorch import PyTorchBackend
from lipsync.training.quality_run import lip_sync, load_expert, measure, track_inputs

RESULTS = Path(__file__).parent / "results"
FIGURES = ("lse_d", "lse_c", "sync_lip_vs_loudness", "lower_face_psnr_db")
# Where the best match lies (frames): a model that hears too little of the future shows it as a lag.
OFFSETS = ("lse_offset", "sync_lag_frames")
# Higher is better for every figure except LSE-D (a distance).
LOWER_IS_BETTER = {"lse_d"}


def measure_model(backend: PyTorchBackend, items: list, scorer) -> dict[str, dict[str, float]]:
    """Mean figures over the own-speech and the dubbed items, per speech kind."""
    groups: dict[str, list[dict]] = {"own": [], "dubbed": []}
    for item in items:
        frames, supports = lip_sync(backend, item, "mouth")
        groups["own" if item.own else "dubbed"].append(measure(item, frames, supports, scorer))
    return {
        kind: {name: float(np.nanmean([f[name] for f in figs if name in f])) for name in FIGURES + OFFSETS}
        for kind, figs in groups.items()
        if figs
    }


def ratios(figures: dict, reference: dict) -> dict:
    """Each figure as a share of the reference's, oriented so that 1.0 is as good and below 1 is worse."""
    out = {}
    for kind, values in figures.items():
        out[kind] = {}
        for name, value in values.items():
            if name in OFFSETS:
                continue
            ref = reference.get(kind, {}).get(name)
            if ref in (None, 0) or not np.isfinite(ref) or not np.isfinite(value):
                continue
            out[kind][name] = round(ref / value if name in LOWER_IS_BETTER else value / ref, 4)
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(report["models"], key=lambda m: -m["lookahead_ms"])
    x = [m["lookahead_ms"] for m in models]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, name, title in zip(
        axes,
        ("sync_lip_vs_loudness", "lse_d", "lse_c"),
        ("independent sync (higher = better)", "LSE-D (lower = better)", "LSE-C (higher = better)"),
        strict=True,
    ):
        for kind, style in (("dubbed", "o-"), ("own", "s--")):
            ax.plot(x, [m["figures"].get(kind, {}).get(name, np.nan) for m in models], style, label=f"{kind} speech")
        if name == "sync_lip_vs_loudness" and report.get("inputs_own_sync") is not None:
            ax.axhline(report["inputs_own_sync"], color="grey", ls=":", label="the inputs' own recording")
        ax.set(title=title, xlabel="audio look-ahead (ms)")
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    fig.suptitle(f"look-ahead vs lip sync, {report['clips']} held-out clips: {report['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(models: dict[int, Path], clips: int, out: Path) -> dict:
    started = time.perf_counter()
    for offset, path in models.items():  # before any rendering: a wrong pairing is a one-line refusal
        stored = PyTorchBackend(path).mel_offset
        if stored != offset:
            raise SystemExit(f"{path} was trained with mel offset {stored}, not {offset}")
    items = [item for item in make_material(clips, 1.0) if item.kind == "synthetic"]
    for item in tqdm(items, desc="track inputs", leave=False):
        track_inputs(item)
    scorer = load_expert()
    rows = []
    for offset, path in tqdm(sorted(models.items(), reverse=True), desc="models"):
        with PyTorchBackend(path) as backend:
            rows.append(
                {
                    "mel_offset": offset,
                    "lookahead_ms": backend.lookahead_ms,
                    "checkpoint": str(path),
                    "figures": measure_model(backend, items, scorer),
                }
            )
    reference = next((r["figures"] for r in rows if r["mel_offset"] == 0), None)
    for row in rows:
        row["ratio_to_200ms"] = ratios(row["figures"], reference) if reference else None
    own = [quality_of_input(item) for item in items if item.own]
    report = {
        "benchmark": "lookahead",
        "machine": describe_machine(),
        "command": " ".join(["python -m lipsync.benchmarks.lookahead", *sys.argv[1:]]),
        "clips": clips,
        "material": f"{clips} held-out photo-style synthetic talking heads, own speech and a neighbour's (mouth blend)",
        "inputs_own_sync": float(np.mean(own)) if own else None,
        "models": rows,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    return report


def quality_of_input(item) -> float:
    """The input recording's own lip opening vs its speech: what a real talker scores."""
    from lipsync.training.quality_run import input_reference

    return float(input_reference(item)["sync_lip_vs_loudness"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync.benchmarks.lookahead", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", action="append", default=[], metavar="OFFSET=CHECKPOINT", help="a generator and its mel offset"
    )
    parser.add_argument("--clips", type=int, default=8, help="held-out synthetic clips (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS / "lookahead.json", help="JSON report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    models: dict[int, Path] = {}
    for spec in args.model:
        offset, _, path = spec.partition("=")
        try:
            models[contract.check_mel_offset(int(offset))] = Path(path)
        except ValueError as exc:
            parser.error(f"--model takes OFFSET=CHECKPOINT, got {spec!r}: {exc}")
        if not Path(path).is_file():
            parser.error(f"--model {spec!r}: no such file")
    if not models or args.clips < 2:
        parser.error("give at least one --model OFFSET=CHECKPOINT and --clips >= 2")
    report = run(models, args.clips, args.out)
    for row in report["models"]:
        print(f"look-ahead {row['lookahead_ms']:6.1f} ms: {json.dumps(row['figures'])}")
        print(f"   ratio to 200 ms: {json.dumps(row['ratio_to_200ms'])}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
