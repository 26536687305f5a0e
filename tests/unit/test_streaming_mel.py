"""lipsync.client.streaming_mel: the streaming mel and resampler give the offline numbers for any chunking,
as soon as the samples a column needs have arrived, in bounded memory."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from scipy import signal

from lipsync.client import audio
from lipsync.client.audio import AudioError
from lipsync.client.streaming_mel import StreamingMel, StreamingResampler

pytestmark = pytest.mark.unit

SR = 16_000
TOLERANCE = 1e-5  # the guarantee; measured: bit-identical (max difference 0.0) on this machine


def speech_like(n: int, seed: int = 0) -> np.ndarray:
    """Pitch-gliding harmonics, a chirp, noise bursts and digital silence, float32 in [-0.9, 0.9]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(150 + 60 * np.sin(2 * np.pi * 0.7 * t)) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 20)) * np.abs(np.sin(2 * np.pi * 2.5 * t))
    x += signal.chirp(t, 200, max(t[-1], 1e-3), 7000) * (np.sin(2 * np.pi * 0.9 * t) > 0)
    x += 0.3 * rng.standard_normal(n) * (np.sin(2 * np.pi * 3 * t) > 0.5)
    x[n // 3 : n // 3 + n // 10] = 0.0
    x[0] = 0.5  # energy at the very first sample, where the pad modes differ
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def chunk_sizes(kind: str, total: int, rng: np.random.Generator) -> list[int]:
    if kind == "one-sample":
        return [1] * total
    if kind == "huge":
        return [total]
    if kind == "20ms":
        return [320] * (total // 320) + [total % 320]
    sizes = []  # "random": 1..5000 with some 1s and a few large
    while sum(sizes) < total:
        sizes.append(int(rng.choice([1, 37, int(rng.integers(1, 5000)), int(rng.integers(5000, 20000))])))
    return sizes


def final_columns(received: int, pad_mode: str) -> int:
    """The documented rule: column t is final once samples up to t*200 + 400 are in (401 for reflect's t=0)."""
    if received < 400 or (pad_mode == "reflect" and received < 401):
        return 0
    return (received - 400) // 200 + 1


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize(
    ("kind", "n"), [("random", 2 * SR + 77), ("huge", 2 * SR + 77), ("20ms", 2 * SR), ("one-sample", 5_013)]
)
def test_streaming_windows_equal_offline(pad_mode, kind, n):
    wav = speech_like(n, seed=n)
    offline = audio.melspectrogram(wav, pad_mode=pad_mode)
    stream = StreamingMel(history_seconds=10.0, pad_mode=pad_mode)
    received, checked = 0, 0
    for size in chunk_sizes(kind, n, np.random.default_rng(1)):
        before = stream.columns_ready
        chunk = wav[received : received + size]
        new = stream.push(chunk)
        received += chunk.size
        assert stream.samples_received == received
        assert stream.columns_ready == before + new == final_columns(received, pad_mode)
        # Every window that just became final is already the offline one.
        for start in range(max(0, before - 15), stream.columns_ready - 15):
            assert np.abs(stream.window(start) - offline[:, start : start + 16]).max() <= TOLERANCE
            checked += 1
        assert stream.window(max(0, stream.columns_ready - 15)) is None  # the next one waits for more audio
    stream.end_input()
    assert stream.columns_ready == offline.shape[1] == 1 + n // 200
    for fps in (25, 29.97, 60):
        expected = audio.mel_windows(offline, fps)
        clamped = audio.mel_windows(offline, fps, n_frames=len(expected) + 3)
        for i in range(len(clamped)):
            assert np.abs(stream.window_for_frame(i, fps) - clamped[i]).max() <= TOLERANCE
    assert checked > 0 or n < 3_400


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_streaming_equals_offline_at_edge_lengths(pad_mode):
    # Lengths around the pad width and the hop, where the left and right pads meet or reflect twice.
    for n in [1, 2, 150, 399, 400, 401, 599, 600, 601, 799, 800, 801, 1_000, 3_400, 3_599, 3_600, 3_601]:
        wav = speech_like(n, seed=n)
        offline = audio.melspectrogram(wav, pad_mode=pad_mode)
        for size in (1, 200, 320, n) if n <= 1_000 else (200, 320, n):
            stream = StreamingMel(pad_mode=pad_mode)
            for i in range(0, n, size):
                stream.push(wav[i : i + size])
            stream.end_input()
            assert stream.columns_ready == offline.shape[1]
            expected = audio.mel_windows(offline, 25, n_frames=12)
            for i in range(12):
                assert np.abs(stream.window_for_frame(i, 25) - expected[i]).max() <= TOLERANCE, (n, size, i)


def test_column_is_final_at_centre_plus_half_window():
    wav = speech_like(4_000)
    stream = StreamingMel()
    assert stream.push(wav[:399]) == 0
    assert stream.push(wav[399:400]) == 1  # column 0 reads samples [-400, 400)
    assert stream.push(wav[400:599]) == 0
    assert stream.push(wav[599:600]) == 1  # column 1 reads [-200, 600)
    assert StreamingMel.samples_needed_for_window(0) == 3_400  # columns 0..15
    stream.push(wav[600:3_399])
    assert stream.window(0) is None
    stream.push(wav[3_399:3_400])
    assert stream.window(0) is not None

    reflect = StreamingMel(pad_mode="reflect")
    assert reflect.push(wav[:400]) == 0  # reflect padding of column 0 mirrors samples 1..400
    assert reflect.push(wav[400:401]) == 1


def test_history_is_a_bounded_ring():
    wav = speech_like(30 * SR, seed=7)
    offline = audio.melspectrogram(wav)
    stream = StreamingMel(history_seconds=1.0)
    assert stream.history_columns == 80
    for i in range(0, wav.size, 320):
        stream.push(wav[i : i + 320])
        assert stream.buffered_samples <= 800 + 320  # samples held for columns not yet final
    assert stream.columns_ready == final_columns(wav.size, "constant") > 2_000
    oldest = stream.oldest_column
    assert oldest == stream.columns_ready - 80
    for start in (oldest, stream.columns_ready - 16):
        assert np.abs(stream.window(start) - offline[:, start : start + 16]).max() <= TOLERANCE
    with pytest.raises(ValueError, match=rf"window start column {oldest - 1} .* oldest kept column is {oldest}"):
        stream.window(oldest - 1)
    with pytest.raises(ValueError):
        stream.window(-1)
    with pytest.raises(ValueError, match="history_seconds"):
        StreamingMel(history_seconds=0.1)  # less than one 16-column window


def test_huge_chunk_larger_than_history():
    wav = speech_like(5 * SR, seed=2)
    stream = StreamingMel(history_seconds=0.5)
    stream.push(wav)
    stream.end_input()
    offline = audio.melspectrogram(wav)
    last = offline.shape[1] - 16
    assert np.abs(stream.window(last) - offline[:, last:]).max() <= TOLERANCE
    with pytest.raises(ValueError, match="older than the kept history"):
        stream.window(0)


def test_end_of_stream_short_audio_and_reset():
    wav = speech_like(1_000, seed=3)  # 6 columns: shorter than one window
    stream = StreamingMel()
    stream.push(wav)
    assert stream.window_for_frame(0, 25) is None  # nothing final yet: the right pad is pending
    assert stream.end_input() == 6 - final_columns(1_000, "constant")
    assert stream.end_input() == 0
    expected = audio.mel_windows(audio.melspectrogram(wav), 25)
    assert np.abs(stream.window_for_frame(0, 25) - expected[0]).max() <= TOLERANCE
    assert (stream.window_for_frame(7, 25)[:, 6:] == -4.0).all()
    with pytest.raises(RuntimeError, match="end_input"):
        stream.push(wav)
    stream.reset()
    assert (stream.samples_received, stream.columns_ready, stream.ended) == (0, 0, False)
    stream.push(wav)
    stream.end_input()
    assert np.abs(stream.window_for_frame(0, 25) - expected[0]).max() <= TOLERANCE
    empty = StreamingMel()
    assert empty.end_input() == 0 and empty.window_for_frame(0, 25) is None


def test_bad_chunks_are_refused_without_changing_state():
    wav = speech_like(8_000, seed=4)
    stream = StreamingMel()
    stream.push(wav[:3_000])
    bad = wav[3_000:3_500].copy()
    bad[17] = np.nan
    with pytest.raises(ValueError, match="NaN at sample 17"):
        stream.push(bad)
    with pytest.raises(ValueError, match="float"):
        stream.push((wav[3_000:3_500] * 32767).astype(np.int16))
    with pytest.raises(ValueError, match="1-D"):
        stream.push(np.zeros((2, 100), np.float32))
    assert stream.samples_received == 3_000
    stream.push(wav[3_000:])  # as if the bad chunk had been dropped
    stream.end_input()
    offline = audio.melspectrogram(wav)
    assert np.abs(stream.window(offline.shape[1] - 16) - offline[:, -16:]).max() <= TOLERANCE


# ----------------------------------------------------------------------------- resampler


@pytest.mark.parametrize("rate", [8_000, 11_025, 16_000, 22_050, 44_100, 48_000, 96_000])
def test_resampler_equals_offline_for_any_chunking(rate):
    rng = np.random.default_rng(rate)
    n = int(0.8 * rate)
    x = np.stack([np.sin(2 * np.pi * 440 * np.arange(n) / rate), 0.3 * rng.standard_normal(n)], axis=1)
    pcm = np.round(x * 16_000).astype(np.int16)
    offline = audio.to_mono_16k(pcm, rate)
    for sizes in ([1] * 2_000 + [n - 2_000], chunk_sizes("random", n, rng)):
        resampler = StreamingResampler(rate, channels=2)
        pieces, fed = [], 0
        for size in sizes:
            pieces.append(resampler.push(pcm[fed : fed + size]))
            fed += size
        pieces.append(resampler.flush())
        streamed = np.concatenate(pieces)
        assert streamed.dtype == np.float32 and streamed.size == offline.size
        assert np.abs(streamed - offline).max() <= 1e-6  # edges included; measured 0.0


def test_resampler_webrtc_frames_and_latency():
    rate, frame = 48_000, 960
    x = np.round(np.stack([speech_like(2 * rate, 5), speech_like(2 * rate, 6)], axis=1) * 32767).astype(np.int16)
    offline = audio.to_mono_16k(x, rate)
    resampler = StreamingResampler(rate, channels=2)
    pieces = []
    for i in range(0, x.shape[0], frame):
        packed = x[i : i + frame].reshape(1, -1)  # PyAV's s16 packed layout: (1, 2 * 960), interleaved
        pieces.append(resampler.push(packed))
        # Output lags the input only by the filter's look-ahead (64 zero crossings = 4 ms = 64 samples).
        assert resampler.samples_in // 3 - resampler.samples_out <= 65
    pieces.append(resampler.flush())
    assert np.abs(np.concatenate(pieces) - offline).max() <= 1e-6
    assert resampler.samples_in == resampler.samples_out == 0  # flush starts a new stream


def test_resampler_push_frame_any_format():
    rate = 48_000
    x = np.stack([speech_like(rate, 8), speech_like(rate, 9)], axis=1).astype(np.float32)
    offline = audio.to_mono_16k(x, rate)
    for fmt in ("s16", "fltp"):
        resampler = StreamingResampler(rate, channels=2)
        pieces = []
        for i in range(0, rate, 960):
            chunk = x[i : i + 960]
            data = np.round(chunk * 32767).astype(np.int16).reshape(1, -1) if fmt == "s16" else chunk.T.copy()
            f = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
            f.sample_rate, f.pts, f.time_base = rate, i, fractions.Fraction(1, rate)
            pieces.append(resampler.push_frame(f))
        pieces.append(resampler.flush())
        assert np.abs(np.concatenate(pieces) - offline).max() <= (1e-4 if fmt == "s16" else 1e-6)
    with pytest.raises(AudioError, match="44100"):
        f = av.AudioFrame.from_ndarray(np.zeros((2, 960), np.float32), format="fltp", layout="stereo")
        f.sample_rate = 44_100
        StreamingResampler(rate, channels=2).push_frame(f)


def test_resampler_validation():
    with pytest.raises(AudioError, match="44100.5"):
        StreamingResampler(44_100.5)
    with pytest.raises(AudioError, match="channels"):
        StreamingResampler(48_000, channels=0)
    stereo = StreamingResampler(48_000, channels=2)
    with pytest.raises(AudioError, match="multiple of 2"):
        stereo.push(np.zeros(961, np.int16))
    with pytest.raises(AudioError, match=r"\(960, 3\)"):
        stereo.push(np.zeros((960, 3), np.int16))
    with pytest.raises(AudioError, match="NaN"):
        StreamingResampler(48_000).push(np.array([0.0, np.nan]))
