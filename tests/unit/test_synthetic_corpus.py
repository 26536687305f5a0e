"""The synthetic talking-head corpus: speech timings, visemes, rendering, layout, splits, determinism."""

from __future__ import annotations

import hashlib
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from lipsync.training.data.synthetic import espeak
from lipsync.training.data.synthetic.espeak import EspeakNotFound, Voice

pytestmark = pytest.mark.unit


def _espeak_or_skip() -> None:
    try:
        espeak.Espeak.instance()
    except EspeakNotFound as exc:
        pytest.skip(f"espeak-ng is not installed: {exc}")


@pytest.fixture(scope="module")
def speech() -> espeak.Speech:
    _espeak_or_skip()
    return espeak.synthesize("Bob bought a map. Please be my baby, Pam!", Voice("en-us", "m3", 160, 50))


def test_missing_espeak_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(espeak.LIBRARY_ENV, "/nonexistent/libespeak-ng.so.1")
    with pytest.raises(EspeakNotFound, match=r"apt-get install -y espeak-ng libespeak-ng1"):
        espeak.Espeak()


def test_unknown_voice_is_named(speech) -> None:
    with pytest.raises(espeak.EspeakError, match="no voice 'xx-nowhere'"):
        espeak.synthesize("hello", Voice("xx-nowhere"))


def test_phoneme_events_are_ordered_and_cover_the_audio(speech) -> None:
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    starts = np.array([p.start for p in speech.phonemes])
    assert len(starts) > 20
    assert np.all(np.diff(starts) >= 0), "phoneme events must be in time order"
    assert starts[0] < 0.15 * espeak.SAMPLE_RATE
    assert starts[-1] > 0.8 * len(speech.audio), "the events must run to the end of the speech"
    assert starts[-1] <= len(speech.audio)
    # the audio is loud between the first and the last event, and the names are espeak's
    env = np.sqrt(np.convolve(speech.audio**2, np.ones(800) / 800, mode="same"))
    assert env[starts[0] : starts[-1]].max() > 0.05
    assert {"b", "p", "m"} <= {p.name for p in speech.phonemes}


def test_bilabials_close_the_lips_and_vowels_open_them(speech) -> None:
    from lipsync.training.data.synthetic.visemes import P, frame_track, mouth_openness, place_targets

    n = int(speech.duration * 25)
    track = frame_track(speech.phonemes, speech.duration, n)
    openness = mouth_openness(track)
    times = np.arange(n) / 25.0
    closures = [t for t in place_targets(speech.phonemes, speech.duration) if t.viseme.name == "PBM"]
    assert len(closures) >= 6
    for t in closures:
        k = int(np.argmin(np.abs(times - 0.5 * (t.start + t.end))))
        assert track[k, P["close"]] > 0.75, f"lips not closed for {t.phoneme!r} at frame {k}"
        assert openness[k] < 0.1
    assert openness.max() > 0.5, "open vowels must open the mouth"


def _frame_energy(audio: np.ndarray, n: int) -> np.ndarray:
    return np.array([np.sqrt(np.mean(audio[k * 640 : (k + 1) * 640] ** 2)) for k in range(n)])


def test_mouth_openness_follows_the_audio_in_time() -> None:
    _espeak_or_skip()
    from lipsync.training.data.synthetic.visemes import frame_track, mouth_openness

    text = "Many people walked along the beach, talking about boats and the open sea, and nobody was bored."
    s = espeak.synthesize(text, Voice("en-us", "", 150, 50))
    n = int(s.duration * 25)
    open_ = mouth_openness(frame_track(s.phonemes, s.duration, n))
    energy = _frame_energy(s.audio, n)

    def corr(lag: int) -> float:
        a, b = (open_[lag:], energy[: n - lag]) if lag >= 0 else (open_[:lag], energy[-lag:])
        return float(np.corrcoef(a, b)[0, 1])

    at_sync = max(corr(lag) for lag in (-1, 0, 1))
    assert at_sync > 0.45, f"openness and audio energy barely correlate: {at_sync:.2f}"
    # in sync beats out of sync: what a lip-sync expert has to learn
    assert at_sync > max(corr(lag) for lag in (-12, -8, 8, 12)) + 0.2


def _still_face(seed: int = 4):
    from lipsync.training.data.synthetic.identity import sample_identity
    from lipsync.training.data.synthetic.renderer import Camera, Face, pose_track, sample_scene

    scene = sample_scene(np.random.default_rng(seed), (256, 256), still=True)
    face = Face(sample_identity(seed, 1), scene)
    camera = Camera(face, scene, seed)
    pose = pose_track(scene, 1, 25, 2 * face.lay.a)[0]
    return face, camera, pose


def test_mouth_region_changes_with_visemes_and_the_upper_face_does_not() -> None:
    from lipsync.training.data.synthetic.visemes import VISEMES

    face, camera, pose = _still_face()
    frames = {
        v: camera.compose(face.canvas(np.array(VISEMES[v].target, np.float32)), pose, camera_effects=False)
        for v in ("rest", "PBM", "AA", "EE", "OO", "FV")
    }
    lm = camera.landmarks(pose)
    mouth_y = int(lm["mouth"][1])
    nose_y = int(lm["nose"][1])
    x0, x1 = int(lm["right_eye"][0]) - 10, int(lm["left_eye"][0]) + 10
    for v, img in frames.items():
        upper = np.abs(img[: nose_y - 4].astype(int) - frames["rest"][: nose_y - 4].astype(int))
        assert upper.max() == 0, f"{v} changed the upper face"
    mouth = slice(mouth_y - 12, mouth_y + 30)

    def diff(a: str, b: str) -> float:
        return float(np.abs(frames[a][mouth, x0:x1].astype(int) - frames[b][mouth, x0:x1].astype(int)).mean())

    assert diff("AA", "PBM") > 8
    assert diff("EE", "OO") > 2
    assert diff("FV", "PBM") > 1

    def dark(v: str) -> int:  # pixels of the open mouth: much darker than the lips around them
        grey = frames[v][mouth, x0:x1].mean(axis=2)
        return int((grey < 0.45 * np.median(grey)).sum())

    assert dark("AA") > 40 and dark("PBM") < 5 and dark("rest") < 5


def test_rendered_mouth_opens_with_the_speech() -> None:
    """Dark open-mouth pixels in the rendered frames follow the viseme track and the audio energy."""
    _espeak_or_skip()
    from lipsync.training.data.synthetic.clip import ClipRenderer, prepare_speech
    from lipsync.training.data.synthetic.identity import sample_identity
    from lipsync.training.data.synthetic.renderer import sample_scene
    from lipsync.training.data.synthetic.visemes import mouth_openness

    rng = np.random.default_rng(2)
    speech = prepare_speech(espeak.synthesize("Wow, a big apple pie!", Voice("en-us", "f2", 150)), rng, noise=False)
    clip = ClipRenderer(sample_identity(2, 2), sample_scene(rng, (256, 256), still=True), speech, 2)
    lm = clip.camera.landmarks(clip.poses[0])
    mx, my = (int(v) for v in lm["mouth"])
    dark = []
    for k in range(len(clip)):
        roi = clip.frame(k, camera_effects=False).image[my - 10 : my + 30, mx - 30 : mx + 30].mean(axis=2)
        dark.append(int((roi < 0.45 * np.median(roi)).sum()))
    dark = np.array(dark, float)
    openness = mouth_openness(clip.track)
    assert np.corrcoef(dark, openness)[0, 1] > 0.8
    assert np.corrcoef(dark, _frame_energy(speech.audio, len(clip)))[0, 1] > 0.4


def test_splits_keep_identities_and_voices_apart() -> None:
    from lipsync.training.data.synthetic.corpus import CorpusConfig, plan_corpus

    variants = [""] + [f"v{i}" for i in range(40)]
    specs, pools = plan_corpus(
        CorpusConfig(root="unused", clips=400, identities=60, seed=7, split=(0.8, 0.1, 0.1)), variants
    )
    by = {s: [c for c in specs if c.split == s] for s in ("train", "val", "test")}
    assert all(by[s] for s in by) and sum(map(len, by.values())) == 400
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not {c.identity for c in by[a]} & {c.identity for c in by[b]}, f"{a} and {b} share identities"
        assert not {c.voice.variant for c in by[a]} & {c.voice.variant for c in by[b]}, f"{a} and {b} share voices"
        assert not set(pools["identities"][a]) & set(pools["identities"][b])
    assert len({c.identity for c in by["train"]}) > 30
    assert len({c.voice.name for c in specs}) > 60
    assert len({c.voice.language for c in specs}) >= 10
    assert len({c.voice.rate for c in specs}) > 20 and len({c.voice.pitch for c in specs}) > 20
    again, _ = plan_corpus(
        CorpusConfig(root="elsewhere", clips=400, identities=60, seed=7, split=(0.8, 0.1, 0.1)), variants
    )
    assert again == specs


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_corpus_layout_and_determinism(tmp_path: Path) -> None:
    _espeak_or_skip()
    from lipsync.training.data.synthetic.corpus import CorpusConfig, generate_corpus

    def make(root: Path, workers: int = 1) -> dict:
        cfg = CorpusConfig(
            root=str(root),
            clips=3,
            identities=6,
            seed=11,
            split=(0.34, 0.33, 0.33),
            min_seconds=1.0,
            max_seconds=1.4,
            frame_size=160,
            workers=workers,
        )
        return generate_corpus(cfg, progress=False)

    summary = make(tmp_path / "a")
    assert summary["clips"] == 3 and summary["boxes"] == ["lipsync.client.face_tracking"]
    assert summary["detected_fraction"] > 0.8
    root = tmp_path / "a"
    lists = {s: (root / "filelists" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert sorted(sum(lists.values(), [])) == sorted(str(p.relative_to(root)) for p in root.glob("id*/*"))
    assert all(len(v) == 1 for v in lists.values())
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 11 and manifest["sample_rate"] == 16000
    for rel in sum(lists.values(), []):
        clip = root / rel
        jpgs = sorted(int(p.stem) for p in clip.glob("*.jpg"))
        assert jpgs == list(range(len(jpgs))) and len(jpgs) >= 25
        import cv2

        assert cv2.imread(str(clip / "0.jpg")).shape == (96, 96, 3)
        with wave.open(str(clip / "audio.wav")) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
            assert w.getnframes() == len(jpgs) * 640, "audio must last exactly as long as the frames"
    # the same seed gives the same bytes, whatever the number of workers
    make(tmp_path / "b", workers=2)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")


def test_render_talking_clip_full_frames() -> None:
    _espeak_or_skip()
    from lipsync.training.data.synthetic import render_talking_clip

    frames, audio, boxes = render_talking_clip(3, "Hi, Bob.", size=(320, 240))
    assert len(frames) == len(boxes) and len(frames) >= 10
    assert frames[0].shape == (240, 320, 3) and frames[0].dtype == np.uint8
    assert audio.dtype == np.float32 and len(audio) == len(frames) * 640
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
    again, audio2, _ = render_talking_clip(3, "Hi, Bob.", size=(320, 240))
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True)) and np.array_equal(audio, audio2)


def test_blazeface_finds_rendered_faces_where_the_renderer_says() -> None:
    from lipsync.client.face_tracking import FaceBox, MediaPipeFaceDetector
    from lipsync.training.data.synthetic.detector import to_detector_convention
    from lipsync.training.data.synthetic.identity import sample_identity
    from lipsync.training.data.synthetic.renderer import Camera, Face, pose_track, sample_scene
    from lipsync.training.data.synthetic.visemes import VISEMES

    found, ious = 0, []
    names = list(VISEMES)
    with MediaPipeFaceDetector() as det:
        for i in range(16):
            rng = np.random.default_rng(1000 + i)
            scene = sample_scene(rng, (256, 256))
            face = Face(sample_identity(5, i), scene)
            camera = Camera(face, scene, i)
            pose = pose_track(scene, 1, 25, 2 * face.lay.a)[0]
            image = camera.compose(face.canvas(np.array(VISEMES[names[i % len(names)]].target, np.float32)), pose)
            box = det.detect(image)
            if box is not None:
                found += 1
                ious.append(box.iou(to_detector_convention(camera.face_box(pose))))
    assert found >= 14, f"BlazeFace found only {found} of 16 rendered faces"
    assert np.median(ious) > 0.7, f"detector and renderer disagree on where the face is: IoU {np.median(ious):.2f}"
    assert isinstance(to_detector_convention((0, 0, 10, 10)), FaceBox)
