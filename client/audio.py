"""Audio front end of the original Wav2Lip: loading, resampling to 16 kHz mono, the 80-bin mel
spectrogram and the per-video-frame 80x16 mel windows (docs/network-facts.md, section 4).

Runtime dependencies are numpy, scipy and PyAV only; the mel filterbank is written out here
(librosa is used by the tests as the independent reference, never at run time).

Resampling: a polyphase FIR (scipy.signal.resample_poly) with a fixed long Kaiser-windowed sinc
filter close to librosa 0.7's default ``kaiser_best`` resampler (64 zero crossings, Kaiser beta
14.77, roll-off 0.9476), rather than PyAV's ``av.AudioResampler``, because
- the original pipeline resampled with librosa's kaiser_best, so this stays close to what the
  released checkpoints saw in training;
- the very same filter is run sample-exactly by ``client.streaming_mel.StreamingResampler``, so
  live audio cut into WebRTC frames resamples to the same samples (to float rounding) as the
  offline file (swresample's output depends on its internal buffering and default short filter);
- channels are downmixed by the plain mean, like librosa's ``to_mono`` (swresample would apply
  its own rematrixing coefficients).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from lipsync.client.contract import MEL_BINS, MEL_FRAMES_PER_SECOND, MEL_WINDOW_FRAMES, SAMPLE_RATE, check_mel_offset

__all__ = [
    "MEL_BINS",
    "MEL_FRAMES_PER_SECOND",
    "MEL_WINDOW_FRAMES",
    "SAMPLE_RATE",
    "AudioError",
    "frame_count_for_audio",
    "load_audio",
    "mel_basis",
    "mel_window_start",
    "mel_windows",
    "melspectrogram",
    "resample",
    "to_mono_16k",
]

logger = logging.getLogger(__name__)

# hparams.py of the original (reference section 4.1).
N_FFT = 800
HOP_SIZE = 200
WIN_SIZE = 800
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
PAD_MODES = ("constant", "reflect")
# Value of a normalised mel bin in digital silence: the floor of the dB scale maps to -4.
SILENCE_VALUE = -MAX_ABS_VALUE

# Rates the resampler accepts; outside this range a "rate" is almost surely a bug (e.g. seconds).
MIN_RATE = 1_000
MAX_RATE = 1_000_000
MAX_CHANNELS = 64
# Long inputs are turned into mel columns in blocks so memory stays bounded (~26 MB per block).
_COLUMNS_PER_BLOCK = 4096

# The STFT window: librosa's get_window('hann', 800, fftbins=True), i.e. the periodic Hann.
_WINDOW = signal.get_window("hann", WIN_SIZE, fftbins=True).astype(np.float64)
# The original's dB floor, written exactly as in its audio.py (_amp_to_db); ~1e-5.
_MIN_LEVEL = np.exp(MIN_LEVEL_DB / 20 * np.log(10))


class AudioError(ValueError):
    """Audio that cannot be used: an unreadable file, no audio stream, empty or non-finite audio,
    a bad sample rate or shape. The message names the file or the bad value."""


# ----------------------------------------------------------------------------- mel filterbank


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = freq / f_sp
    high = freq >= min_log_hz
    mel[high] = min_log_mel + np.log(freq[high] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    freq = f_sp * mel
    high = mel >= min_log_mel
    freq[high] = min_log_hz * np.exp(logstep * (mel[high] - min_log_mel))
    return freq


@functools.cache
def mel_basis() -> np.ndarray:
    """The (80, 401) mel filterbank of the original: Slaney mel scale (htk=False), triangles with
    Slaney area normalisation (each filter scaled by 2 / its bandwidth in Hz), fmin 55, fmax 7600.

    Stored as float32 like librosa's ``filters.mel`` default dtype, which the original used.
    Computed once; the returned array is read-only.
    """
    n_bins = 1 + N_FFT // 2
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, n_bins)
    mel_points = np.linspace(_hz_to_mel(np.array([FMIN]))[0], _hz_to_mel(np.array([FMAX]))[0], MEL_BINS + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    basis = weights.astype(np.float32)
    basis.setflags(write=False)
    return basis


@functools.cache
def _mel_basis_f64() -> np.ndarray:
    # The float32 values promoted once: the same float64 product np.dot(float32 basis, float64 spectrum)
    # forms in the original, without converting the basis on every call (the streaming hot path).
    return mel_basis().astype(np.float64)


# ----------------------------------------------------------------------------- mel spectrogram


def check_finite(wav: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(wav)):
        bad = np.flatnonzero(~np.isfinite(wav))
        kind = "NaN" if np.isnan(wav[bad[0]]) else "infinite"
        # The original raised "Mel contains nan! Using a TTS voice? Add a small epsilon noise..." only
        # after computing the mel; we refuse the samples up front and say where the problem is.
        raise AudioError(
            f"{what} contains {bad.size} non-finite sample(s) (first: {kind} at sample {bad[0]}); "
            "a TTS or DSP stage upstream produced invalid audio, the mel spectrogram would be NaN"
        )


def preemphasis(wav: np.ndarray) -> np.ndarray:
    """y[n] = x[n] - 0.97 x[n-1], y[0] = x[0], in float64 (as scipy's lfilter in the original)."""
    return signal.lfilter([1.0, -PREEMPHASIS], [1.0], np.asarray(wav, dtype=np.float64))


def columns_from_padded(padded: np.ndarray) -> np.ndarray:
    """Normalised mel columns of an already padded, pre-emphasised float64 signal.

    Column j covers padded[j*200 : j*200+800]; returns (80, 1 + (len-800)//200) float32. This is the
    one place the STFT -> |.| -> mel -> dB -> normalise chain is written; the streaming mel calls it on
    its own padded segments so both give the same numbers.
    """
    n_cols = 1 + (padded.shape[0] - N_FFT) // HOP_SIZE
    out = np.empty((MEL_BINS, max(n_cols, 0)), dtype=np.float32)
    if n_cols <= 0:
        return out
    frames = sliding_window_view(padded, N_FFT)[::HOP_SIZE]
    basis = _mel_basis_f64()
    for a in range(0, n_cols, _COLUMNS_PER_BLOCK):
        b = min(n_cols, a + _COLUMNS_PER_BLOCK)
        magnitude = np.abs(np.fft.rfft(frames[a:b] * _WINDOW, axis=1))  # (n, 401): magnitude, not power
        mel = basis @ magnitude.T
        db = 20 * np.log10(np.maximum(_MIN_LEVEL, mel)) - REF_LEVEL_DB
        out[:, a:b] = np.clip(
            (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE,
            -MAX_ABS_VALUE,
            MAX_ABS_VALUE,
        )
    return out


def check_pad_mode(pad_mode: str) -> None:
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")


def melspectrogram(wav: np.ndarray, pad_mode: str = "constant") -> np.ndarray:
    """The original ``audio.melspectrogram``: (80, 1 + len(wav)//200) float32 in [-4, 4].

    ``wav`` is 16 kHz mono audio in [-1, 1]. Pipeline: pre-emphasis 0.97; STFT with n_fft 800,
    hop 200, periodic Hann window of 800, centred (400 samples padded on each side); magnitude;
    Slaney mel filterbank (80 bins, 55-7600 Hz); 20*log10(max(1e-5, mel)) - 20; then
    clip(8 * (S + 100) / 100 - 4, -4, 4).

    ``pad_mode`` is the centre padding of the STFT. The default "constant" (zeros) is librosa >= 0.9
    behaviour; "reflect" is librosa <= 0.8, which the original repository pinned (0.7.0). The two
    differ only in the first and last two columns.
    """
    check_pad_mode(pad_mode)
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError(f"melspectrogram expects 1-D mono samples, got shape {wav.shape}")
    if wav.size == 0:
        raise AudioError("melspectrogram got empty audio (0 samples)")
    check_finite(wav, "audio")
    emphasised = preemphasis(wav)
    return columns_from_padded(np.pad(emphasised, N_FFT // 2, mode=pad_mode))


# ----------------------------------------------------------------------------- windows per video frame


def _check_fps(fps: float) -> float:
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return fps


def mel_window_start(frame_index: int, fps: float) -> int:
    """First mel column of video frame ``frame_index``'s window: ``int(i * (80./fps))`` as in inference.py."""
    if frame_index < 0:
        raise ValueError(f"frame_index must be >= 0, got {frame_index}")
    return int(frame_index * (float(MEL_FRAMES_PER_SECOND) / _check_fps(fps)))


def _window_count(n_columns: int, fps: float) -> int:
    """How many windows inference.py's loop emits for a mel of ``n_columns`` (>= 16) columns.

    The loop appends window i while start(i) + 16 <= T, then appends the last window once and stops,
    so the count is 1 + (the first i with start(i) > T - 16). start(i) is non-decreasing in i, so a
    closed-form guess is corrected by stepping with the exact float formula.
    """
    limit = n_columns - MEL_WINDOW_FRAMES
    i = max(0, int(limit * fps / MEL_FRAMES_PER_SECOND) - 1)
    while i > 0 and mel_window_start(i - 1, fps) > limit:
        i -= 1
    while mel_window_start(i, fps) <= limit:
        i += 1
    return i + 1


def pad_to_window(mel: np.ndarray) -> np.ndarray:
    """Mel shorter than one window (16 columns, 200 ms) padded on the right with silence (-4).

    The original cannot handle such audio (mel[:, T-16:] with T < 16 is narrower than 16 columns
    and breaks the model's reshape); padding with the value of digital silence keeps the speech
    where it is and says "nothing more is said".
    """
    if mel.shape[1] >= MEL_WINDOW_FRAMES:
        return mel
    pad = np.full((mel.shape[0], MEL_WINDOW_FRAMES - mel.shape[1]), SILENCE_VALUE, dtype=mel.dtype)
    return np.concatenate([mel, pad], axis=1)


def mel_windows(mel: np.ndarray, fps: float, n_frames: int | None = None, mel_offset: int = 0) -> np.ndarray:
    """The (N, 80, 16) mel window of each video frame, following inference.py's chunking.

    Window i is mel[:, s:s+16] with s = int(i * 80/fps) + mel_offset. Without ``n_frames`` the windows
    stop like the original: the first window that would run past the end is replaced by mel[:, T-16:]
    and is the last one. With ``n_frames`` exactly that many windows are returned, every start past the
    end clamped to T-16 (so the first windows are identical to the default ones). A mel shorter than 16
    columns is first padded on the right with silence (-4), see ``pad_to_window``.

    ``mel_offset`` (contract.lookahead_ms) is the alignment a low-look-ahead model was trained with: a
    negative offset moves each window back in time, and the columns before the start of the audio are
    silence, as the live path hears before anyone speaks. The frame count does not depend on it.
    """
    fps = _check_fps(fps)
    mel_offset = check_mel_offset(mel_offset)
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[0] != MEL_BINS or mel.shape[1] == 0:
        raise ValueError(f"mel must have shape ({MEL_BINS}, T) with T >= 1, got {mel.shape}")
    mel = pad_to_window(mel)
    if n_frames is None:
        n_frames = _window_count(mel.shape[1], fps)
    elif n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if mel_offset:
        silence = np.full((mel.shape[0], -mel_offset), SILENCE_VALUE, dtype=mel.dtype)
        mel = np.concatenate([silence, mel], axis=1)  # window i now starts at int(i * 80/fps) of this array
    n_columns = mel.shape[1]
    # float64 i * (80./fps) truncated is bit-identical to Python's int(i * (80./fps)) for i >= 0.
    starts = (np.arange(n_frames, dtype=np.float64) * (float(MEL_FRAMES_PER_SECOND) / fps)).astype(np.int64)
    np.minimum(starts, n_columns - MEL_WINDOW_FRAMES, out=starts)
    windows = sliding_window_view(mel, MEL_WINDOW_FRAMES, axis=1)  # (80, T-15, 16) view
    return np.ascontiguousarray(windows[:, starts].transpose(1, 0, 2))


def frame_count_for_audio(num_samples: int, fps: float) -> int:
    """Number of windows ``mel_windows(melspectrogram(wav), fps)`` gives for ``num_samples`` 16 kHz samples."""
    fps = _check_fps(fps)
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    n_columns = max(1 + num_samples // HOP_SIZE, MEL_WINDOW_FRAMES)
    return _window_count(n_columns, fps)


# ----------------------------------------------------------------------------- resampling


def check_rate(sample_rate: float, what: str = "sample rate") -> int:
    """Validate a sample rate and return it as int; raise AudioError naming the bad value."""
    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        raise AudioError(f"{what} must be a number in Hz, got {sample_rate!r}") from None
    if not math.isfinite(rate) or rate != int(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{what} must be a whole number of Hz in [{MIN_RATE}, {MAX_RATE}], got {sample_rate!r}")
    return int(rate)


def _integer_scale(dtype: np.dtype) -> tuple[float, float]:
    info = np.iinfo(dtype)
    if info.min == 0:  # unsigned PCM (u8): silence is mid-scale
        half = (int(info.max) + 1) / 2
        return half, half
    return 0.0, float(-int(info.min))


def to_float(samples: np.ndarray) -> np.ndarray:
    """PCM samples of any integer or float dtype -> float64 in the [-1, 1] convention."""
    samples = np.asarray(samples)
    if samples.dtype.kind in "iu":
        offset, scale = _integer_scale(samples.dtype)
        return (samples.astype(np.float64) - offset) / scale
    if samples.dtype.kind == "f":
        return samples.astype(np.float64, copy=False)
    raise AudioError(f"audio samples must be integer PCM or float, got dtype {samples.dtype}")


@functools.cache
def resampling_filter(in_rate: int, out_rate: int) -> tuple[int, int, np.ndarray]:
    """(up, down, h): the polyphase ratio and the FIR low-pass shared by offline and streaming resampling.

    A Kaiser-windowed sinc like librosa's kaiser_best: 64 zero crossings per side at the lower of the
    two rates, beta 14.77, cutoff at 0.9476 of the lower Nyquist. ``h`` has unity gain at DC; both
    users apply ``h * up`` (the gain the zero-stuffed upsampled signal needs), as resample_poly does.
    """
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    if up == down == 1:
        return 1, 1, np.ones(1)
    max_rate = max(up, down)
    half_len = 64 * max_rate
    h = signal.firwin(2 * half_len + 1, 0.9475937167399596 / max_rate, window=("kaiser", 14.769656459379492))
    h.setflags(write=False)
    return up, down, h


def resample(samples: np.ndarray, in_rate: int, out_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Offline resampling of 1-D float samples (float64 result, length ceil(n * out/in))."""
    in_rate, out_rate = check_rate(in_rate), check_rate(out_rate, "output sample rate")
    x = np.asarray(samples, dtype=np.float64)
    up, down, h = resampling_filter(in_rate, out_rate)
    if up == down == 1:
        return x.copy()
    return signal.resample_poly(x, up, down, window=h)  # resample_poly applies h * up itself


def downmix(samples: np.ndarray, channels_axis: int | None = None) -> np.ndarray:
    """(n,) or multi-channel PCM -> float64 mono (plain mean of the channels, like librosa.to_mono)."""
    samples = np.asarray(samples)
    if samples.ndim == 1:
        return to_float(samples)
    if samples.ndim != 2:
        raise AudioError(f"audio must have shape (n,) or (n, channels), got {samples.shape}")
    axis = 1 if channels_axis is None else channels_axis
    if axis not in (0, 1, -1, -2):
        raise AudioError(f"channels_axis must be 0 or 1 for 2-D audio, got {channels_axis}")
    n_channels = samples.shape[axis]
    if not 1 <= n_channels <= MAX_CHANNELS:
        hint = " (is it (channels, n)? pass channels_axis=0)" if channels_axis is None else ""
        raise AudioError(f"audio of shape {samples.shape} has {n_channels} channels on axis {axis}{hint}")
    return to_float(samples).mean(axis=axis)


def clip_to_float32(mono: np.ndarray) -> np.ndarray:
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def to_mono_16k(samples: np.ndarray, sample_rate: int, channels_axis: int | None = None) -> np.ndarray:
    """In-memory audio -> float32 16 kHz mono in [-1, 1].

    ``samples``: int16/int32/uint8 PCM or float, shape (n,) or (n, channels) (or (channels, n) with
    ``channels_axis=0``), at any whole sample rate. Channels are averaged, then resampled with the
    module's polyphase filter; the result has ceil(n * 16000 / sample_rate) samples and is clipped
    to [-1, 1] (a full-scale input can overshoot slightly after the low-pass).
    """
    rate = check_rate(sample_rate)
    mono = downmix(samples, channels_axis)
    if mono.size == 0:
        raise AudioError(f"empty audio (shape {np.shape(samples)})")
    check_finite(mono, "audio")
    return clip_to_float32(resample(mono, rate, SAMPLE_RATE))


# ----------------------------------------------------------------------------- decoding files


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """One decoded PyAV audio frame (any sample format, packed or planar) -> float64 mono."""
    data = frame.to_ndarray()
    n_channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: (1, n * channels), interleaved
        data = data.reshape(-1, n_channels).T
    return to_float(data).mean(axis=0)


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 mono in [-1, 1]
    corrupt_packets: int  # packets that would not decode, each replaced by silence of its length
    concealed_s: float


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file PyAV reads (wav, mp3, aac/m4a, ogg/opus, flac, the
    audio track of a video) -> float32 mono in [-1, 1] at ``sample_rate``. See decode_audio."""
    return decode_audio(path, sample_rate).samples


def decode_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> DecodedAudio:
    """The audio of a file, with a count of the corrupt packets that were concealed.

    Channels are averaged per decoded frame; the result is resampled with ``resample``. Encoder
    priming is trimmed where the container says so (mp3 LAME tags, mp4 edit lists); a start offset of
    the audio track relative to a video track is not applied here. A packet that does not decode is
    replaced by silence of its length, so everything after it keeps its time (lip sync depends on
    it), and counted. Raises AudioError, naming the file, when it cannot be opened, has no audio
    stream or decodes to no samples.
    """
    path = Path(path)
    out_rate = check_rate(sample_rate, "output sample rate")
    pieces: list[np.ndarray] = []
    in_rate = None
    corrupt, concealed, last_samples = 0, 0, 0
    if path.is_file() and path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream (streams: {[s.type for s in container.streams]})")
            stream = container.streams.audio[0]
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    corrupt += 1
                    seconds = float(packet.duration * stream.time_base) if packet.duration and stream.time_base else 0
                    rate = in_rate or stream.rate or out_rate
                    gap = int(round(seconds * rate)) if seconds else last_samples
                    pieces.append(np.zeros(gap, np.float32))
                    concealed += gap
                    continue
                for frame in frames:
                    if in_rate is None:
                        in_rate = frame.sample_rate
                    elif frame.sample_rate != in_rate:
                        raise AudioError(
                            f"{path}: sample rate changes mid-stream ({in_rate} -> {frame.sample_rate} Hz)"
                        )
                    pieces.append(frame_to_mono(frame))
                    last_samples = frame.samples
    except (av.FFmpegError, OSError) as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from exc
    mono = np.concatenate(pieces) if pieces else np.zeros(0)
    if mono.size == concealed:  # nothing real decoded
        raise AudioError(f"{path}: the audio stream decodes to no samples ({corrupt} corrupt packets)")
    check_finite(mono, str(path))
    rate = check_rate(in_rate, f"{path}: sample rate")
    if corrupt:
        logger.warning("%s: %d corrupt audio packets replaced by %.2f s of silence", path, corrupt, concealed / rate)
    logger.debug("decoded %s: %d samples at %d Hz", path, mono.size, in_rate)
    return DecodedAudio(clip_to_float32(resample(mono, rate, out_rate)), corrupt, concealed / rate)
