"""Generates a synthetic corpus in the preprocessed LRS2 layout.

    <root>/<identity>/<clip>/{0..n-1}.jpg + audio.wav   face crops (BGR JPEG) and 16 kHz mono PCM16
    <root>/filelists/{train,val,test}.txt                 one `<identity>/<clip>` per line
    <root>/manifest.json                                  the resolved config, seed, splits, summary
    <root>/clips.jsonl                                    one line per clip: text, voice, detector hits

Identities and voice variants are split into disjoint train/val/test pools, so test speakers (faces
and voices) are never seen in training. Every clip depends only on (seed, clip index): the corpus is
the same for a seed whatever the number of workers, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import wave
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .clip import ClipRenderer, prepare_speech
from .config import CorpusConfig
from .detector import ClipBoxes, face_crop
from .espeak import SAMPLE_RATE, Espeak, Voice, list_variants, synthesize
from .identity import sample_identity
from .renderer import sample_scene
from .text import LANGUAGE_WEIGHTS, LANGUAGES, sentence

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Variants that do not sound like a person talking (effects, robots).
EXCLUDED_VARIANTS = frozenset({"Demonic", "UniRobot", "anikaRobot", "announcer", "croak"})
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClipSpec:
    index: int
    split: str
    identity: int
    voice: Voice
    language: str
    text: str
    seed: int

    @property
    def group(self) -> str:
        return f"id{self.identity:05d}"

    @property
    def clip_id(self) -> str:
        return f"{self.index:05d}"

    @property
    def rel_path(self) -> str:
        return f"{self.group}/{self.clip_id}"


def _split_pool(items: list, fractions: tuple[float, float, float], rng: np.random.Generator) -> dict[str, list]:
    """Shuffle `items` and cut them into disjoint train/val/test pools, each non-empty when asked for."""
    order = [items[i] for i in rng.permutation(len(items))]
    n = len(order)
    n_val = max(1, round(fractions[1] * n)) if fractions[1] > 0 else 0
    n_test = max(1, round(fractions[2] * n)) if fractions[2] > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} items cannot be split {fractions} with at least one in each split")
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def voice_variants() -> list[str]:
    """espeak variants used as speaker timbres, plus '' (the language's own voice)."""
    return [""] + [v for v in list_variants() if v not in EXCLUDED_VARIANTS]


def plan_corpus(cfg: CorpusConfig, variants: list[str] | None = None) -> tuple[list[ClipSpec], dict]:
    """Every clip's split, identity, voice and text, decided from the seed alone."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xC0]))
    variants = sorted(voice_variants() if variants is None else variants)
    if len(variants) < 3:
        raise RuntimeError(f"espeak-ng has too few voice variants ({variants}); is espeak-ng-data installed?")
    id_pools = _split_pool(list(range(cfg.identities)), cfg.split, rng)
    # the language's own voice ("") stays in training: test voices are all variants unseen there
    var_pools = _split_pool([v for v in variants if v], cfg.split, rng)
    if "" in variants:
        var_pools["train"] = [""] + var_pools["train"]
    n_val = round(cfg.split[1] * cfg.clips)
    n_test = round(cfg.split[2] * cfg.clips)
    labels = np.array(["train"] * (cfg.clips - n_val - n_test) + ["val"] * n_val + ["test"] * n_test)
    labels = labels[rng.permutation(cfg.clips)]
    langs = list(cfg.languages)
    weights = np.array([LANGUAGE_WEIGHTS[lang] for lang in langs])
    weights /= weights.sum()
    specs = []
    for i, split in enumerate(labels):
        r = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xC1, i]))
        lang = str(r.choice(langs, p=weights))
        rate = int(r.integers(130, 230))
        target = r.uniform(cfg.min_seconds, cfg.max_seconds) - 0.4
        n_words = max(2, int(round(target * rate / 60.0 * 0.9)))
        voice = Voice(
            language=LANGUAGES[lang],
            variant=str(r.choice(var_pools[split])),
            rate=rate,
            pitch=int(r.integers(20, 81)),
            pitch_range=int(r.integers(25, 91)),
        )
        specs.append(
            ClipSpec(
                index=i,
                split=str(split),
                identity=int(r.choice(id_pools[split])),
                voice=voice,
                language=lang,
                text=sentence(r, lang, n_words),
                seed=int(r.integers(2**31)),
            )
        )
    pools = {
        "identities": {k: sorted(v) for k, v in id_pools.items()},
        "voice_variants": {k: sorted(v) for k, v in var_pools.items()},
    }
    return specs, pools


# ---- one clip, in a worker


_worker: dict = {}


def _init_worker(boxes: str, fps: float) -> None:
    cv2.setNumThreads(1)
    Espeak.instance()
    _worker["boxes"] = ClipBoxes(boxes, fps)


def write_wav(path: str, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def render_clip(spec: ClipSpec, cfg: CorpusConfig, out_dir: str) -> dict:
    """Synthesize, render and write one clip into out_dir; returns its clips.jsonl record."""
    if "boxes" not in _worker:
        _init_worker(cfg.boxes, cfg.fps)
    boxes: ClipBoxes = _worker["boxes"]
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xC2, spec.index]))
    speech = synthesize(spec.text, spec.voice)
    clip_speech = prepare_speech(speech, rng, cfg.fps, cfg.max_seconds)
    scene = sample_scene(rng, (cfg.frame_size, cfg.frame_size), style=cfg.style)
    identity = sample_identity(cfg.seed, spec.identity, cfg.style)
    clip = ClipRenderer(identity, scene, clip_speech, spec.seed)
    os.makedirs(out_dir, exist_ok=True)
    hits = 0
    params = [cv2.IMWRITE_JPEG_QUALITY, cfg.crop_jpeg_quality]
    boxes.start_clip()
    for k, fr in enumerate(clip):
        box, detected = boxes.box(fr.image, fr.box, k / cfg.fps)
        hits += detected
        ok, buf = cv2.imencode(".jpg", face_crop(fr.image, box, cfg.crop_size), params)
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for frame {k} of clip {spec.rel_path}")
        with open(os.path.join(out_dir, f"{k}.jpg"), "wb") as f:
            f.write(buf.tobytes())
    write_wav(os.path.join(out_dir, "audio.wav"), clip_speech.audio)
    return {
        "clip": spec.rel_path,
        "split": spec.split,
        "identity": spec.group,
        "voice": spec.voice.name,
        "language": spec.language,
        "rate": spec.voice.rate,
        "pitch": spec.voice.pitch,
        "text": spec.text,
        "frames": clip_speech.n_frames,
        "seconds": round(clip_speech.duration, 3),
        "phonemes": len(clip_speech.phonemes),
        "boxes": boxes.source,
        "detected_frames": hits,
    }


def _clip_task(args: tuple[ClipSpec, CorpusConfig]) -> dict:
    spec, cfg = args
    final = os.path.join(cfg.root, spec.group, spec.clip_id)
    record_path = os.path.join(final, ".record.json")
    if os.path.exists(record_path):  # finished by an earlier run
        with open(record_path) as f:
            return json.load(f)
    tmp = os.path.join(cfg.root, spec.group, f".{spec.clip_id}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    record = render_clip(spec, cfg, tmp)
    with open(os.path.join(tmp, ".record.json"), "w") as f:
        json.dump(record, f)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return record


# ---- the corpus


def generate_corpus(cfg: CorpusConfig, progress: bool = True) -> dict:
    """Write the whole corpus; returns the summary stored in manifest.json."""
    from tqdm import tqdm

    Espeak.instance()  # fail early, with the install hint, when espeak-ng is missing
    specs, pools = plan_corpus(cfg)
    os.makedirs(cfg.root, exist_ok=True)
    t0 = time.perf_counter()
    tasks = [(s, cfg) for s in specs]
    records: list[dict] = [{}] * len(specs)
    bar = tqdm(total=len(specs), unit="clip", desc="corpus", disable=not progress, dynamic_ncols=True)
    if cfg.workers == 1:
        for i, task in enumerate(tasks):
            records[i] = _clip_task(task)
            bar.update()
    else:
        ctx = mp.get_context("spawn")  # mediapipe and libespeak-ng hold threads and globals
        with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg.boxes, cfg.fps)) as pool:
            for rec in pool.imap_unordered(_clip_task, tasks, chunksize=1):
                records[int(rec["clip"].rsplit("/", 1)[1])] = rec
                bar.update()
    bar.close()
    elapsed = time.perf_counter() - t0
    write_filelists(cfg.root, specs)
    with open(os.path.join(cfg.root, "clips.jsonl"), "w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    frames = sum(r["frames"] for r in records)
    detected = sum(r["detected_frames"] for r in records)
    summary = {
        "clips": len(records),
        "frames": frames,
        "hours": round(sum(r["seconds"] for r in records) / 3600, 4),
        "seconds_to_generate": round(elapsed, 2),
        "clips_per_second": round(len(records) / elapsed, 3) if elapsed > 0 else None,
        "boxes": sorted({r["boxes"] for r in records}),
        "detected_fraction": round(detected / frames, 4) if frames else None,
        "per_split": {s: sum(1 for r in records if r["split"] == s) for s in SPLITS},
    }
    manifest = {
        "format": "lrs2-preprocessed",
        "format_version": FORMAT_VERSION,
        "generator": "lipsync.training.data.synthetic",
        "config": asdict(cfg),
        "sample_rate": SAMPLE_RATE,
        "espeak_native_rate": Espeak.instance().native_rate,
        "pools": pools,
        "summary": summary,
    }
    with open(os.path.join(cfg.root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
    log.info("wrote %d clips (%d frames) to %s in %.1f s", len(records), frames, cfg.root, elapsed)
    return summary


def write_filelists_for_finished(cfg: CorpusConfig) -> dict[str, int]:
    """Filelists for the clips an interrupted run finished, so training can start on a partial corpus.

    Resuming the full run later rewrites them for the whole corpus.
    """
    specs, _ = plan_corpus(cfg)
    done = [s for s in specs if os.path.exists(os.path.join(cfg.root, s.group, s.clip_id, ".record.json"))]
    write_filelists(cfg.root, done)
    return {split: sum(1 for s in done if s.split == split) for split in SPLITS}


def write_filelists(root: str, specs: list[ClipSpec]) -> None:
    os.makedirs(os.path.join(root, "filelists"), exist_ok=True)
    for split in SPLITS:
        lines = [s.rel_path for s in specs if s.split == split]
        with open(os.path.join(root, "filelists", f"{split}.txt"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
