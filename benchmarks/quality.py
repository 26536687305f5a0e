"""Quality benchmark: how a lip-synced face looks and moves, per model and blend mode.

Material (nothing is downloaded, nothing here is committed but the report):
- held-out synthetic talking heads (photo style, a population seed no corpus is rendered from),
  each re-driven by its own speech (self-reconstruction: the ideal output is the input) and
  dubbed with another clip's speech;
- a real face: skimage's astronaut portrait (public domain, NASA), dubbed with espeak speech;
  a still has no moving reference, so its PSNR/SSIM compare with the still itself.
Models: the shipped default, the previous default (where its file exists) and an untrained network
of the same shape; blends: mouth (the default) and lower_face. Each frame goes through the product's
own pieces (face tracker, crop, backend, compositor), in memory, so no output codec is measured.

Figures (training/quality.py): lower-face PSNR/SSIM, CIE76 dE over changed pixels and over the
lower face's skin outside the lips, mouth sharpness output/input, the share of pixels outside the
mouth mask that changed, LSE-D/LSE-C by the project's expert, and an independent sync measure
(face-mesh lip opening of the output vs the driving speech's loudness, best correlation over
+-10 frames), with the input's own value as the reference a real recording sets.

    .venv/bin/python -m lipsync.benchmarks.quality [--clips 4] [--quick]

Writes benchmarks/results/quality.json (quality_quick.json) and quality.png, a grid of frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from lipsync.benchmarks.machine import describe_machine
from lipsync.client import contract
from lipsync.client.audio import mel_windows, melspectrogram
from lipsync.client.backends import DEFAULT_CHECKPOINT
from lipsync.client.backends.pytorch import PyTorchBackend
from lipsync.client.blend import BLEND_MODES
from lipsync.client.compositing import Compositor
from lipsync.client.face_crop import crop_face, model_face_input
from lipsync.streaming.config import GatewayConfig
from lipsync.training import quality
from lipsync.training.quality_run import (
    FPS,
    Item,
    fit_audio,
    input_reference,
    lip_sync,
    load_expert,
    measure,
    track_inputs,
)

log = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results"
PREVIOUS_CHECKPOINT = DEFAULT_CHECKPOINT.with_name("wav2lip_cpu_previous.pt")
HELD_OUT_SEED = 90_210  # the synthetic population of this benchmark; corpora use other seeds
SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "we will meet again tomorrow morning at nine",
    "please open the window and let the fresh air in",
    "my favourite colour has always been a deep blue",
    "she sells sea shells by the sea shore",
    "how much wood would a woodchuck chuck",
)


def _espeak(text: str, seed: int) -> np.ndarray:
    from lipsync.training.data.synthetic.espeak import Voice, synthesize

    voice = Voice("en-us", ("", "m3", "f2", "f4")[seed % 4], 165, 50)
    return synthesize(text, voice).audio.astype(np.float32)


def make_material(clips: int, real_seconds: float) -> list[Item]:
    """Synthetic clips (own speech and a neighbour's) and the astronaut still dubbed with speech."""
    from skimage import data

    from lipsync.training.data.synthetic.clip import render_talking_clip

    rendered = []
    for k in tqdm(range(clips), desc="render held-out clips", leave=False):
        frames, wav, _ = render_talking_clip(
            HELD_OUT_SEED + k, SENTENCES[k % len(SENTENCES)], size=(320, 320), fps=FPS, style="photo"
        )
        rendered.append((frames, wav))
    items = []
    for k, (frames, wav) in enumerate(rendered):
        n = len(frames)
        items.append(Item(f"synthetic{k}", "synthetic", frames, fit_audio(wav, n), own=True, still=False))
        if clips > 1:
            other = rendered[(k + 1) % clips][1]
            items.append(Item(f"synthetic{k}_dubbed", "synthetic", frames, fit_audio(other, n), own=False, still=False))
    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    speech = _espeak(SENTENCES[-1], 1)[: int(real_seconds * contract.SAMPLE_RATE)]
    n = int(round(len(speech) / contract.SAMPLE_RATE * FPS))
    items.append(Item("astronaut_dubbed", "real_still", [astronaut] * n, fit_audio(speech, n), own=False, still=True))
    return items


def compositing_cost(backend: PyTorchBackend, repeats: int = 2) -> dict:
    """Milliseconds per frame the live compositor spends (the face mesh as often as the gateway runs it), per blend.

    On a 640x480 synthetic talking head; the model's output is made once and reused, so only the
    compositing is timed. `extra_ms` is what the mouth blend adds over the lower-half paste.
    """
    from lipsync.training.data.synthetic.clip import render_talking_clip

    frames, wav, _ = render_talking_clip(HELD_OUT_SEED - 1, SENTENCES[0], size=(640, 480), fps=FPS, style="photo")
    item = Item("cost", "synthetic", frames, fit_audio(wav, len(frames)), own=True, still=False)
    track_inputs(item)
    idx = [i for i, r in enumerate(item.regions) if r is not None]
    windows = mel_windows(melspectrogram(item.wav), FPS, len(frames), mel_offset=backend.mel_offset)
    faces = np.stack([model_face_input(crop_face(frames[i], item.regions[i])) for i in idx])
    generated = backend.infer(windows[idx][:, None].astype(np.float32), faces)
    every = GatewayConfig().landmark_every  # what the live gateway does
    out = {"frames": len(idx), "frame_size": "640x480", "landmark_every": every}
    for blend in BLEND_MODES:
        best = float("inf")
        for _ in range(repeats):
            with Compositor(blend, landmark_every=every) as compositor:
                started = time.perf_counter()
                for j, i in enumerate(idx):
                    compositor.compose(frames[i], generated[j], item.regions[i])
                best = min(best, (time.perf_counter() - started) * 1000 / len(idx))
        out[f"{blend}_ms"] = round(best, 2)
    out["extra_ms"] = round(out["mouth_ms"] - out["lower_face_ms"], 2)
    return out


def load_models(extra: dict[str, Path] | None = None) -> dict[str, PyTorchBackend]:
    """shipped, previous (where its file exists), untrained, and any extra checkpoints by name."""
    import torch

    from lipsync.client.networks.wav2lip import Wav2Lip

    models = {"shipped": PyTorchBackend(DEFAULT_CHECKPOINT)}
    if PREVIOUS_CHECKPOINT.is_file():
        models["previous"] = PyTorchBackend(PREVIOUS_CHECKPOINT)
    torch.manual_seed(0)
    shipped = Wav2Lip.from_checkpoint(DEFAULT_CHECKPOINT)
    models["untrained"] = PyTorchBackend(model=Wav2Lip(shipped.config).eval())
    for name, path in (extra or {}).items():
        models[name] = PyTorchBackend(path)
    return models


def grid(items: list[Item], outputs: dict, models: list[str], path: Path) -> Path:
    """One row per item at its loudest frame: input | each model (mouth blend) | shipped lower_face."""
    columns = (
        [("input", None)]
        + [(f"{m} mouth", (m, "mouth")) for m in models]
        + [("shipped lower_face", ("shipped", "lower_face"))]
    )
    rows = []
    for item in items:
        envelope = quality.speech_envelope(item.wav, len(item.frames), FPS)
        faces = [i for i, r in enumerate(item.regions) if r is not None]
        if not faces:
            continue
        k = max(faces, key=lambda i: envelope[i])
        r = item.regions[k]
        m = int(0.15 * r.width)
        y1, y2 = max(r.y1 - m, 0), min(r.y2 + m, item.frames[k].shape[0])
        x1, x2 = max(r.x1 - m, 0), min(r.x2 + m, item.frames[k].shape[1])
        tiles = []
        for label, key in columns:
            image = item.frames[k] if key is None else outputs[(key[0], key[1], item.name)][k]
            tile = cv2.resize(image[y1:y2, x1:x2], (224, 224), interpolation=cv2.INTER_AREA)
            cv2.rectangle(tile, (0, 0), (224, 18), (0, 0, 0), -1)
            cv2.putText(tile, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.hstack(tiles))
    sheet = np.vstack(rows)
    banner = np.zeros((22, sheet.shape[1], 3), np.uint8)
    text = "SYNTHETIC: lip-synced outputs (all columns but 'input') are generated by a model"
    cv2.putText(banner, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 200, 255), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack([banner, sheet]))
    return path


def summarise(runs: list[dict]) -> dict:
    """Means per (model, blend, kind, own/dubbed) over items."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        key = f"{run['model']}/{run['blend']}/{run['kind']}/{'own' if run['own'] else 'dubbed'}"
        groups.setdefault(key, []).append(run["figures"])
    out = {}
    for key, figs in groups.items():
        out[key] = {
            name: float(np.nanmean([f[name] for f in figs if name in f]))
            for name in figs[0]
            if isinstance(figs[0][name], (int, float))
        }
    return out


def run_benchmark(
    clips: int,
    real_seconds: float,
    quick: bool,
    out: Path,
    plot_path: Path | None,
    extra_models: dict[str, Path] | None = None,
) -> dict:
    started = time.perf_counter()
    items = make_material(clips, real_seconds)
    for item in tqdm(items, desc="track inputs", leave=False):
        track_inputs(item)
    models = load_models(extra_models)
    scorer = load_expert()
    runs, outputs = [], {}
    jobs = [(m, b, it) for m in models for b in BLEND_MODES for it in items]
    for model, blend, item in tqdm(jobs, desc="quality"):
        frames, supports = lip_sync(models[model], item, blend)
        outputs[(model, blend, item.name)] = frames
        runs.append(
            {
                "model": model,
                "blend": blend,
                "item": item.name,
                "kind": item.kind,
                "own": item.own,
                "figures": measure(item, frames, supports, scorer),
            }
        )
    cost = compositing_cost(models["shipped"], repeats=1 if quick else 3)
    report = {
        "benchmark": "quality",
        "machine": describe_machine(),
        "quick": quick,
        "command": " ".join(["python -m lipsync.benchmarks.quality", *sys.argv[1:]]),
        "material": {
            "synthetic": f"{clips} held-out photo-style talking heads (population seed {HELD_OUT_SEED}), own speech"
            + (" and a neighbour's" if clips > 1 else ""),
            "real_still": "skimage.data.astronaut (public domain, NASA) dubbed with espeak-ng speech",
        },
        "models": {
            "shipped": str(DEFAULT_CHECKPOINT.relative_to(DEFAULT_CHECKPOINT.parents[2])),
            "previous": str(PREVIOUS_CHECKPOINT.relative_to(DEFAULT_CHECKPOINT.parents[2]))
            if "previous" in models
            else None,
            "untrained": "the shipped network's shape, random weights (torch seed 0)",
            **{name: str(path) for name, path in (extra_models or {}).items()},
        },
        "inputs_reference": {item.name: input_reference(item) for item in items},
        "summary": summarise(runs),
        "live_compositing_ms_per_frame": cost,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    if plot_path is not None:
        shown = [it for it in items if it.own or it.kind == "real_still"]
        grid(shown, outputs, [m for m in ("untrained", "previous", "shipped") if m in models], plot_path)
    for backend in models.values():
        backend.close()
    return report


def print_table(report: dict) -> None:
    names = ("lower_face_psnr_db", "lower_face_ssim", "delta_e_skin", "sharpness_ratio", "changed_outside_mask",
             "sync_lip_vs_loudness", "lse_d", "lse_c")  # fmt: skip
    print(f"{'model/blend/material/speech':44s} " + " ".join(f"{n[:12]:>12s}" for n in names))
    for key, figs in report["summary"].items():
        print(f"{key:44s} " + " ".join(f"{figs.get(n, float('nan')):12.3f}" for n in names))
    own = {k: round(v["sync_lip_vs_loudness"], 3) for k, v in report["inputs_reference"].items() if v}
    print("the inputs' own lip opening vs the driving speech:", own)
    print("live compositing, ms per frame:", report["live_compositing_ms_per_frame"])
    print(report["machine"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync.benchmarks.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="held-out synthetic clips (default %(default)s)")
    parser.add_argument("--real-seconds", type=float, default=3.0, help="length of the dubbed real still")
    parser.add_argument("--quick", action="store_true", help="one clip, 1.2 s of the still: a check, not figures")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default benchmarks/results/...)")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=CHECKPOINT", help="also measure this generator"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.clips < 1 or args.real_seconds <= 0.5:
        parser.error("need --clips >= 1 and --real-seconds > 0.5")
    clips, seconds = (1, 1.2) if args.quick else (args.clips, args.real_seconds)
    out = args.out or RESULTS / ("quality_quick.json" if args.quick else "quality.json")
    plot_path = out.with_suffix(".png")
    extra = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not name or not path or not Path(path).is_file():
            parser.error(f"--model takes NAME=CHECKPOINT with an existing file, got {spec!r}")
        extra[name] = Path(path)
    report = run_benchmark(clips, seconds, args.quick, out, plot_path, extra)
    print_table(report)
    print(f"wrote {out} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
