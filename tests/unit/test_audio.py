"""lipsync.client.audio: the mel spectrogram against an independent librosa computation of the original
pipeline, the per-frame window indexing against inference.py's loop, resampling, and decoding of
real files written here with PyAV."""

from __future__ import annotations

import fractions
import math

import av
import librosa
import numpy as np
import pytest
from scipy import signal

from lipsync.client import audio
from lipsync.client.audio import AudioError

pytestmark = pytest.mark.unit

SR = 16_000
# Measured: max |ours - librosa| is ~2e-7 (float32 rounding of the output); 1e-5 leaves room for BLAS
# differences while still catching a symmetric instead of periodic Hann window (~1e-3).
MEL_TOLERANCE = 1e-5


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced harmonics with a gliding pitch, a log chirp, noise bursts and digital silence, float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = 150 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30)) * np.abs(np.sin(2 * np.pi * 2.5 * t)) ** 0.5
    chirp = signal.chirp(t, 200, t[-1], 7000, method="logarithmic")
    noise = rng.standard_normal(n) * (np.sin(2 * np.pi * 3 * t) > 0.3)
    x = np.empty(n)
    cut = (np.array([0.3, 0.4, 0.6, 0.8]) * n).astype(int)
    x[: cut[0]] = voiced[: cut[0]]
    x[cut[0] : cut[1]] = 0.0  # digital silence: the mel floor (-4)
    x[cut[1] : cut[2]] = chirp[cut[1] : cut[2]]
    x[cut[2] : cut[3]] = 0.3 * noise[cut[2] : cut[3]]
    x[cut[3] :] = voiced[cut[3] :] + 0.5 * chirp[cut[3] :]  # energy right up to the last sample
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def librosa_reference_mel(wav: np.ndarray, pad_mode: str) -> np.ndarray:
    """The documented pipeline (reference section 4.2) written with librosa, independently of client.audio."""
    y = signal.lfilter([1, -0.97], [1], wav)
    spec = np.abs(
        librosa.stft(y, n_fft=800, hop_length=200, win_length=800, window="hann", center=True, pad_mode=pad_mode)
    )
    mel = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600) @ spec
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def original_chunks(mel: np.ndarray, fps: float) -> np.ndarray:
    """inference.py's loop, verbatim in structure."""
    mel_chunks = []
    mel_idx_multiplier = 80.0 / fps
    i = 0
    while 1:
        start_idx = int(i * mel_idx_multiplier)
        if start_idx + 16 > len(mel[0]):
            mel_chunks.append(mel[:, len(mel[0]) - 16 :])
            break
        mel_chunks.append(mel[:, start_idx : start_idx + 16])
        i += 1
    return np.stack(mel_chunks)


def peak_hz(x: np.ndarray, sr: int = SR) -> float:
    n_fft = 4 * sr  # 0.25 Hz bins
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size), n_fft))
    return float(np.argmax(spectrum) * sr / n_fft)


def level_db(x: np.ndarray, hz: float, sr: int = SR) -> float:
    """Level of the component at hz relative to a full-scale sine, from a Hann-windowed FFT."""
    n_fft = 4 * sr
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size), n_fft)) / (np.hanning(x.size).sum() / 2)
    k = round(hz * n_fft / sr)
    return float(20 * np.log10(spectrum[k - 8 : k + 9].max() + 1e-12))


# ----------------------------------------------------------------------------- mel spectrogram


def test_mel_filterbank_matches_librosa_slaney():
    ours = audio.mel_basis()
    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)  # htk=False, norm="slaney"
    assert ours.shape == ref.shape == (80, 401)
    assert np.abs(ours - ref).max() < 1e-6
    assert audio.mel_basis() is ours and not ours.flags.writeable  # computed once


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_melspectrogram_matches_librosa_pipeline(pad_mode):
    wav = speech_like(3.0)[: 3 * SR - 77]  # a length that is not a multiple of the hop
    mel = audio.melspectrogram(wav, pad_mode=pad_mode)
    ref = librosa_reference_mel(wav, pad_mode)
    assert mel.dtype == np.float32 and mel.shape == (80, 1 + wav.size // 200) == ref.shape
    assert np.abs(mel - ref).max() < MEL_TOLERANCE
    # The signal covers the whole scale: the floor (silence), loud bins, nothing outside [-4, 4].
    assert mel.min() == -4.0 and mel.max() > 1.0 and mel.max() <= 4.0


def test_pad_modes_differ_only_in_edge_columns():
    wav = speech_like(1.0, seed=3)
    constant = audio.melspectrogram(wav, pad_mode="constant")
    reflect = audio.melspectrogram(wav, pad_mode="reflect")
    t = np.arange(constant.shape[1])
    edge = (t * 200 - 400 < 0) | (t * 200 + 400 > wav.size)
    assert np.array_equal(constant[:, ~edge], reflect[:, ~edge])
    assert np.abs(constant[:, 0] - reflect[:, 0]).max() > 0.05
    assert np.abs(constant[:, -1] - reflect[:, -1]).max() > 0.05
    with pytest.raises(ValueError, match="pad_mode"):
        audio.melspectrogram(wav, pad_mode="edge")


@pytest.mark.parametrize("n", [1, 2, 199, 200, 201, 399, 400, 401, 801, 16_037])
def test_melspectrogram_length(n):
    wav = speech_like(1.1, seed=n)[:n]
    for pad_mode in ("constant", "reflect"):
        mel = audio.melspectrogram(wav, pad_mode=pad_mode)
        assert mel.shape == (80, 1 + n // 200)
        assert np.isfinite(mel).all()
    if n >= 800:
        assert np.abs(audio.melspectrogram(wav) - librosa_reference_mel(wav, "constant")).max() < MEL_TOLERANCE


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_melspectrogram_refuses_non_finite_audio(bad):
    wav = speech_like(0.5)
    wav[1234] = bad
    with pytest.raises(AudioError, match=r"(NaN|infinite) at sample 1234"):
        audio.melspectrogram(wav)
    with pytest.raises(ValueError):  # AudioError is a ValueError, like the original's "Mel contains nan"
        audio.melspectrogram(wav)


def test_melspectrogram_rejects_bad_shapes():
    with pytest.raises(AudioError, match="empty"):
        audio.melspectrogram(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match=r"\(2, 100\)"):
        audio.melspectrogram(np.zeros((2, 100), np.float32))


# ----------------------------------------------------------------------------- windows per video frame

FPS_VALUES = [25, 30, 29.97, 30000 / 1001, 60, 24, 23.976, 50, 12.5]


@pytest.mark.parametrize("fps", FPS_VALUES)
def test_mel_window_start_is_the_original_formula(fps):
    for i in range(0, 20_000, 7):
        assert audio.mel_window_start(i, fps) == int(i * (80.0 / fps))


@pytest.mark.parametrize("fps", FPS_VALUES)
@pytest.mark.parametrize("n_columns", [16, 17, 31, 100, 801, 1234])
def test_mel_windows_follow_inference_chunking(fps, n_columns):
    mel = np.random.default_rng(n_columns).uniform(-4, 4, (80, n_columns)).astype(np.float32)
    windows = audio.mel_windows(mel, fps)
    expected = original_chunks(mel, fps)
    assert windows.shape == expected.shape and windows.dtype == np.float32
    assert np.array_equal(windows, expected)
    samples = (n_columns - 1) * 200 + 123  # any sample count with this many columns
    assert audio.frame_count_for_audio(samples, fps) == len(expected)


def test_ten_second_example_from_the_reference():
    wav = speech_like(10.0)
    mel = audio.melspectrogram(wav)
    assert mel.shape == (80, 801)
    windows = audio.mel_windows(mel, 25)
    assert windows.shape == (247, 80, 16)
    assert audio.frame_count_for_audio(wav.size, 25) == 247
    assert np.array_equal(windows[245], mel[:, 784:800])  # int(245 * 3.2) = 784
    assert np.array_equal(windows[246], mel[:, 785:801])  # start 787 would run past: the last window


@pytest.mark.parametrize("fps", [25, 29.97, 60])
def test_frame_count_for_audio_matches_mel_windows(fps):
    for n in [1, 199, 200, 3_000, 3_199, 3_200, 3_201, 16_000, 16_199, 47_999, 160_000, 160_001]:
        n_columns = 1 + n // 200
        expected = len(original_chunks(np.zeros((80, max(16, n_columns))), fps))
        assert audio.frame_count_for_audio(n, fps) == expected, n


def test_mel_windows_with_n_frames_clamps_past_the_end():
    mel = np.random.default_rng(0).uniform(-4, 4, (80, 100)).astype(np.float32)
    default = audio.mel_windows(mel, 25)
    longer = audio.mel_windows(mel, 25, n_frames=len(default) + 10)
    assert np.array_equal(longer[: len(default)], default)
    assert all(np.array_equal(w, mel[:, 84:]) for w in longer[len(default) :])
    assert np.array_equal(audio.mel_windows(mel, 25, n_frames=5), default[:5])
    assert audio.mel_windows(mel, 25, n_frames=0).shape == (0, 80, 16)


def test_audio_shorter_than_one_window_is_padded_with_silence():
    wav = speech_like(0.5)[:1_000]  # T = 6 columns < 16
    mel = audio.melspectrogram(wav)
    windows = audio.mel_windows(mel, 25)
    # Padded to T = 16, the original loop gives window 0 and then (start 3 runs past) the last one again.
    assert windows.shape == (audio.frame_count_for_audio(wav.size, 25), 80, 16) == (2, 80, 16)
    assert np.array_equal(windows[:, :, :6], np.stack([mel, mel]))
    assert (windows[:, :, 6:] == -4.0).all()


def test_window_arguments_are_validated():
    with pytest.raises(ValueError, match="fps"):
        audio.mel_window_start(3, 0)
    with pytest.raises(ValueError, match="fps"):
        audio.mel_windows(np.zeros((80, 20)), float("nan"))
    with pytest.raises(ValueError, match=r"\(80, T\)"):
        audio.mel_windows(np.zeros((20, 80)), 25)


# ----------------------------------------------------------------------------- resampling in memory

RATES = [8_000, 11_025, 22_050, 44_100, 48_000, 96_000]


def tone(rate: int, seconds: float, hz: float, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


@pytest.mark.parametrize("rate", RATES)
def test_to_mono_16k_resamples_any_rate(rate):
    x = tone(rate, 1.5, 440.0) + tone(rate, 1.5, 3_000.0, 0.2)
    if rate >= 22_050:
        x += tone(rate, 1.5, 10_000.0, 0.2)  # above 8 kHz: must be filtered, not folded onto 6 kHz
    stereo = np.round(np.stack([x, x], axis=1) * 32767).astype(np.int16)
    out = audio.to_mono_16k(stereo, rate)
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.size == math.ceil(x.size * SR / rate)
    assert abs(peak_hz(out) - 440.0) < 1.0
    assert abs(level_db(out, 440.0) - 20 * np.log10(0.5)) < 0.1
    assert abs(level_db(out, 3_000.0) - 20 * np.log10(0.2)) < 0.1
    assert level_db(out, 6_000.0) < -80  # no alias of the 10 kHz tone
    # An independent resampler (soxr very-high quality) agrees away from the edges: measured <= 1.6e-7.
    ref = librosa.resample(stereo[:, 0] / 32768, orig_sr=rate, target_sr=SR, res_type="soxr_vhq")
    middle = slice(800, out.size - 800)
    assert np.abs(out[middle] - ref[middle]).max() < 1e-5


def test_to_mono_16k_dtypes_and_layouts():
    x = tone(48_000, 0.5, 1_000.0)
    reference = audio.to_mono_16k(x, 48_000)
    for pcm, tol in [
        (np.round(x * 32767).astype(np.int16), 1e-4),
        (np.round(x * 2**31 * 0.999).astype(np.int32), 2e-3),
        (x.astype(np.float32), 1e-6),
        (np.round(x * 127 + 128).astype(np.uint8), 1e-2),
    ]:
        assert np.abs(audio.to_mono_16k(pcm, 48_000) - reference).max() < tol, pcm.dtype
    stereo = np.stack([x, -x, 2 * x], axis=1)  # mean of the channels = 2x/3
    assert np.allclose(audio.to_mono_16k(stereo, 48_000), audio.to_mono_16k(2 * x / 3, 48_000), atol=1e-7)
    assert np.array_equal(audio.to_mono_16k(stereo.T, 48_000, channels_axis=0), audio.to_mono_16k(stereo, 48_000))
    assert np.array_equal(audio.to_mono_16k(x, 16_000), x.astype(np.float32))  # 16 kHz passes through
    loud = audio.to_mono_16k(np.sign(tone(44_100, 0.5, 100.0)), 44_100)  # square wave: Gibbs overshoot
    assert loud.max() <= 1.0 and loud.min() >= -1.0


@pytest.mark.parametrize("rate", [0, -16_000, 44_100.5, float("nan"), "fast", 10**7, None])
def test_to_mono_16k_rejects_bad_rates(rate):
    with pytest.raises(AudioError, match="sample rate") as info:
        audio.to_mono_16k(np.zeros(1000, np.float32), rate)
    assert repr(rate) in str(info.value)


def test_to_mono_16k_rejects_bad_shapes():
    with pytest.raises(AudioError, match=r"\(2, 3, 100\)"):
        audio.to_mono_16k(np.zeros((2, 3, 100)), 48_000)
    with pytest.raises(AudioError, match="channels_axis=0"):
        audio.to_mono_16k(np.zeros((2, 48_000)), 48_000)  # (channels, n) given as (n, channels)
    with pytest.raises(AudioError, match="empty"):
        audio.to_mono_16k(np.zeros((0, 2)), 48_000)
    with pytest.raises(AudioError, match="NaN at sample 5"):
        audio.to_mono_16k(np.where(np.arange(100) == 5, np.nan, 0.0), 48_000)
    with pytest.raises(AudioError, match="dtype"):
        audio.to_mono_16k(np.zeros(100, dtype=complex), 48_000)


# ----------------------------------------------------------------------------- decoding files


def write_audio(path, codec: str, rate: int, samples: np.ndarray, *, video: bool = False) -> None:
    """Encode (n, channels) float samples with PyAV; optionally with a 25 fps H.264 video track."""
    layout = "mono" if samples.shape[1] == 1 else "stereo"
    with av.open(str(path), "w") as container:
        if video:
            vstream = container.add_stream("libx264", rate=25)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 64, "yuv420p"
        astream = container.add_stream(codec, rate=rate, layout=layout)
        fmt = "s16" if codec in ("pcm_s16le", "flac") else "flt"
        data = samples if fmt == "flt" else np.round(samples * 32767)
        data = data.astype(np.int16 if fmt == "s16" else np.float32).reshape(1, -1)  # packed, interleaved
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, fractions.Fraction(1, rate)
        # pts 0 on the first frame makes the mp4 muxer write an edit list for the AAC priming.
        for packet in [*astream.encode(frame), *astream.encode(None)]:
            container.mux(packet)
        if video:
            for i in range(round(25 * samples.shape[0] / rate)):
                image = np.full((64, 64, 3), 8 * (i % 30), np.uint8)
                vframe = av.VideoFrame.from_ndarray(image, format="rgb24")
                vframe.pts = i
                for packet in vstream.encode(vframe):
                    container.mux(packet)
            for packet in vstream.encode(None):
                container.mux(packet)


# name, codec, rate, channels, tone Hz, codec frame size (samples at the file's rate), video track
FILES = [
    ("speech.wav", "pcm_s16le", 44_100, 2, 440.0, 1, False),
    ("speech.mp3", "libmp3lame", 48_000, 1, 1_000.0, 1152, False),
    ("speech.m4a", "aac", 48_000, 2, 660.0, 1024, False),
    ("speech.flac", "flac", 22_050, 1, 880.0, 1, False),
    ("speech.ogg", "libopus", 48_000, 1, 300.0, 960, False),
    ("talk.mp4", "aac", 44_100, 1, 500.0, 1024, True),
]
SECONDS = 1.3


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio_files")
    for name, codec, rate, channels, hz, _, video in FILES:
        x = tone(rate, SECONDS, hz)
        write_audio(folder / name, codec, rate, np.stack([x] * channels, axis=1), video=video)
    return folder


@pytest.mark.parametrize(("name", "codec", "rate", "channels", "hz", "frame_size", "video"), FILES)
def test_load_audio_decodes_files(media_dir, name, codec, rate, channels, hz, frame_size, video):
    out = audio.load_audio(media_dir / name)
    assert out.dtype == np.float32 and out.ndim == 1
    expected = math.ceil(SECONDS * rate) * SR / rate
    assert abs(out.size - expected) <= frame_size * SR / rate + 1, (out.size, expected)
    assert abs(peak_hz(out) - hz) < 1.0
    rms = np.sqrt(np.mean(out[SR // 10 : -SR // 10] ** 2))
    # Downmix (mean) and resampling keep the level; 0.6 dB of slack because LAME scales float input by 0.95.
    assert abs(20 * np.log10(rms / (0.5 / np.sqrt(2)))) < 0.6


def test_load_audio_other_output_rate(media_dir):
    out = audio.load_audio(media_dir / "speech.wav", sample_rate=22_050)
    assert out.size == math.ceil(math.ceil(SECONDS * 44_100) * 22_050 / 44_100)
    assert abs(peak_hz(out, 22_050) - 440.0) < 1.0


def test_load_audio_errors_name_the_file(tmp_path, media_dir):
    corrupt = tmp_path / "corrupt_take.m4a"
    corrupt.write_bytes(np.random.default_rng(0).bytes(20_000))
    empty = tmp_path / "empty_take.wav"
    empty.write_bytes(b"")
    silent_video = tmp_path / "no_sound.mp4"
    with av.open(str(silent_video), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    for path, what in [
        (corrupt, "cannot decode"),
        (empty, "empty"),
        (silent_video, "no audio stream"),
        (tmp_path / "missing.wav", "cannot decode"),
    ]:
        with pytest.raises(AudioError, match=what) as info:
            audio.load_audio(path)
        assert path.name in str(info.value)
    with pytest.raises(AudioError, match="sample rate"):
        audio.load_audio(media_dir / "speech.wav", sample_rate=0)
