"""Streaming versions of the audio front end for live calls: a stateful resampler for incoming
WebRTC audio and a mel spectrogram fed in chunks of any size, kept in a bounded ring.

Both give the same numbers as the offline functions in client.audio on the same samples
(resample / to_mono_16k, melspectrogram + mel_windows), which the unit tests check chunk by chunk.
"""

from __future__ import annotations

import math
import operator

import av
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lipsync.client.audio import (
    HOP_SIZE,
    MAX_CHANNELS,
    N_FFT,
    PREEMPHASIS,
    SILENCE_VALUE,
    AudioError,
    check_finite,
    check_pad_mode,
    check_rate,
    clip_to_float32,
    columns_from_padded,
    downmix,
    frame_to_mono,
    mel_window_start,
    pad_to_window,
    resampling_filter,
)
from lipsync.client.contract import MEL_BINS, MEL_FRAMES_PER_SECOND, MEL_WINDOW_FRAMES, SAMPLE_RATE

__all__ = ["StreamingMel", "StreamingResampler"]

_PAD = N_FFT // 2  # the centred STFT reaches 400 samples either side of column t's centre t*200
_OUTPUTS_PER_BLOCK = 4096  # bounds the (outputs x taps) gather of one resampling step
_MAX_GROUPED_PHASES = 8  # up to this many polyphase branches, resample branch by branch


class StreamingResampler:
    """Stateful polyphase resampler + downmix: chunks of any length in, float32 mono at ``out_rate`` out.

    Runs the same FIR as ``client.audio.resample`` (scipy's resample_poly) sample by sample, with the
    filter history kept across chunks, so there are no clicks at chunk borders and the concatenated
    output equals offline resampling of the whole signal up to float rounding. An output sample is
    emitted once all the input it depends on has arrived: the look-ahead is the filter's half length,
    64 periods of the lower rate (4 ms into 16 kHz, e.g. 192 input samples at 48 kHz; 8 ms from
    8 kHz). ``flush`` emits the rest as if
    the signal ended there (zeros after it, exactly like the offline resampler at the end of a file)
    and starts a new stream.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE, channels: int = 1) -> None:
        self.in_rate = check_rate(in_rate, "input sample rate")
        self.out_rate = check_rate(out_rate, "output sample rate")
        try:
            self.channels = operator.index(channels)
        except TypeError:
            self.channels = 0
        if isinstance(channels, bool) or not 1 <= self.channels <= MAX_CHANNELS:
            raise AudioError(f"channels must be an int in [1, {MAX_CHANNELS}], got {channels!r}")
        up, down, h = resampling_filter(self.in_rate, self.out_rate)
        self._up, self._down = up, down
        self._half_len = (h.size - 1) // 2
        n_taps = -(-h.size // up)  # taps per polyphase branch
        padded = np.zeros(n_taps * up)
        padded[: h.size] = h * up  # the exact array resample_poly convolves with
        # Output m = sum_k h[p + k*up] * x[i - k] with i = (m*down + half_len) // up, p its remainder.
        # Branch p's taps are stored reversed so they dot with the contiguous slice x[i-K+1 : i+1].
        self._branches = np.ascontiguousarray(padded.reshape(n_taps, up).T[:, ::-1])
        self._n_taps = n_taps
        self.reset()

    def reset(self) -> None:
        """Forget all input (a new stream starts with silence before it, like the offline resampler)."""
        # Mono input history; index 0 of _buf is absolute input sample _buf_start. It starts with
        # K-1 zeros so the first outputs see the zero history resample_poly assumes.
        self._buf = np.zeros(self._n_taps - 1)
        self._buf_start = -(self._n_taps - 1)
        self._n_in = 0
        self._n_out = 0

    @property
    def samples_in(self) -> int:
        """Input samples (per channel) received since the last reset/flush."""
        return self._n_in

    @property
    def samples_out(self) -> int:
        """Output samples emitted since the last reset/flush."""
        return self._n_out

    def _to_mono(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples)
        ch = self.channels
        if x.ndim == 2 and x.shape[0] == 1 and x.shape[1] % ch == 0 and x.shape[1] != ch:
            x = x.reshape(-1)  # PyAV's packed layout: (1, n * channels), interleaved
        if x.ndim == 1:
            if x.size % ch:
                raise AudioError(f"{x.size} interleaved samples is not a multiple of {ch} channels")
            x = x.reshape(-1, ch)
        if x.ndim != 2 or x.shape[1] != ch:
            raise AudioError(f"expected audio of shape (n,) interleaved or (n, {ch}), got {np.shape(samples)}")
        mono = downmix(x) if ch > 1 else downmix(x[:, 0])
        check_finite(mono, "audio chunk")
        return mono

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add a chunk (int16/int32/float PCM; (n,) interleaved, (n, channels), or PyAV's packed
        (1, n*channels)) and return the output samples that became computable (float32, maybe empty)."""
        mono = self._to_mono(samples)
        return self._feed(mono)

    def push_frame(self, frame: av.AudioFrame) -> np.ndarray:
        """Add one PyAV/aiortc audio frame (any sample format, packed or planar)."""
        if frame.sample_rate != self.in_rate:
            raise AudioError(f"frame sample rate {frame.sample_rate} Hz differs from the resampler's {self.in_rate} Hz")
        if frame.layout.nb_channels != self.channels:
            raise AudioError(f"frame has {frame.layout.nb_channels} channels, the resampler expects {self.channels}")
        mono = frame_to_mono(frame)
        check_finite(mono, "audio frame")
        return self._feed(mono)

    def flush(self) -> np.ndarray:
        """Emit the remaining output (the input is taken to end here) and start a new stream."""
        total = -(-self._n_in * self._up // self._down)  # ceil(n * up / down), resample_poly's length
        out = self._emit(total)
        self.reset()
        return out

    def _feed(self, mono: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, mono])
        self._n_in += mono.size
        # Output m needs input up to (m*down + half_len) // up.
        ready = max(0, (self._n_in * self._up - 1 - self._half_len) // self._down + 1)
        return self._emit(ready)

    def _emit(self, end: int) -> np.ndarray:
        if end <= self._n_out:
            return np.zeros(0, dtype=np.float32)
        up, down, k = self._up, self._down, self._n_taps
        m = np.arange(self._n_out, end, dtype=np.int64)
        pos = m * down + self._half_len
        first = pos // up - (k - 1) - self._buf_start  # buffer index of each output's oldest input
        phase = pos % up
        needed = int(first[-1]) + k
        if needed > self._buf.size:  # only at flush: the signal is zero after its end
            self._buf = np.concatenate([self._buf, np.zeros(needed - self._buf.size)])
        out = np.empty(m.size)
        if up <= _MAX_GROUPED_PHASES:
            # Outputs m and m+up use the same branch and inputs `down` apart: one product per branch
            # over a strided view of the buffer, no copy (48 kHz -> 16 kHz: up = 1). einsum, because
            # matmul cannot hand overlapping rows to BLAS and its fallback loop is twice as slow.
            windows = sliding_window_view(self._buf, k)
            for p in range(min(up, m.size)):
                rows = first[p::up]
                out[p::up] = np.einsum("mk,k->m", windows[rows[0] : rows[-1] + 1 : down], self._branches[phase[p]])
        else:  # many branches (44.1 kHz: up = 160): gather each output's inputs, in bounded blocks
            offsets = np.arange(k)
            for a in range(0, m.size, _OUTPUTS_PER_BLOCK):
                b = min(m.size, a + _OUTPUTS_PER_BLOCK)
                window = self._buf[first[a:b, None] + offsets]
                out[a:b] = np.einsum("mk,mk->m", window, self._branches[phase[a:b]])
        self._n_out = end
        # Keep only the history the next output needs.
        next_first = (end * down + self._half_len) // up - (k - 1)
        drop = next_first - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = next_first
        return clip_to_float32(out)


class StreamingMel:
    """The mel spectrogram of a live 16 kHz mono stream, pushed in chunks of any length.

    Column t covers samples [t*200 - 400, t*200 + 400) of the pre-emphasised signal; it becomes final
    once samples up to t*200 + 400 have been received (one more sample for column 0 with reflect
    padding), and at ``end_input`` the remaining columns are closed with the STFT's right pad. The
    pre-emphasis filter state carries across chunks, and the columns are computed by the same code as
    ``client.audio.melspectrogram``, so every window equals the offline one on the same samples.

    Columns are kept in a ring of ``history_seconds`` * 80 columns, indexed by their absolute
    column number since the start (or the last ``reset``); memory does not grow with call length.
    """

    def __init__(self, history_seconds: float = 10.0, pad_mode: str = "constant") -> None:
        check_pad_mode(pad_mode)
        history_seconds = float(history_seconds)
        capacity = round(history_seconds * MEL_FRAMES_PER_SECOND) if math.isfinite(history_seconds) else 0
        if capacity < MEL_WINDOW_FRAMES:
            raise ValueError(
                f"history_seconds must keep at least one {MEL_WINDOW_FRAMES}-column window "
                f"({MEL_WINDOW_FRAMES / MEL_FRAMES_PER_SECOND} s), got {history_seconds}"
            )
        self.pad_mode = pad_mode
        self.history_seconds = history_seconds
        self._ring = np.full((MEL_BINS, capacity), SILENCE_VALUE, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Start a new stream: column and sample counts go back to 0, the filter state is cleared."""
        self._y = np.zeros(0)  # pre-emphasised samples; _y[0] is absolute sample _y_start
        self._y_start = 0
        self._last = 0.0  # the last input sample, for the pre-emphasis across chunks
        self._received = 0
        self._ready = 0
        self._ended = False

    # -- counters -------------------------------------------------------------------------------

    @property
    def samples_received(self) -> int:
        return self._received

    @property
    def columns_ready(self) -> int:
        """Mel columns finalised since the start; column indices are absolute."""
        return self._ready

    @property
    def history_columns(self) -> int:
        """Capacity of the ring, in mel columns."""
        return self._ring.shape[1]

    @property
    def oldest_column(self) -> int:
        """The oldest column still in the history."""
        return max(0, self._ready - self.history_columns)

    @property
    def buffered_samples(self) -> int:
        """Samples held for columns not yet final (bounded by about 800 + the last chunk)."""
        return self._y.size

    @property
    def ended(self) -> bool:
        return self._ended

    @staticmethod
    def samples_needed_for_window(start: int) -> int:
        """Samples that must have been received before window ``start`` (columns start..start+15) is final."""
        return (start + MEL_WINDOW_FRAMES - 1) * HOP_SIZE + _PAD

    # -- input ----------------------------------------------------------------------------------

    def push(self, samples: np.ndarray) -> int:
        """Add float 16 kHz mono samples (any length); return how many columns became final."""
        x = np.asarray(samples)
        if x.ndim != 1 or x.dtype.kind != "f":
            raise ValueError(
                f"StreamingMel.push takes 1-D float 16 kHz mono samples, got shape {x.shape} dtype {x.dtype} "
                "(convert with client.audio.to_mono_16k or StreamingResampler)"
            )
        if self._ended:
            raise RuntimeError("StreamingMel.push after end_input(); call reset() to start a new stream")
        if x.size == 0:
            return 0
        check_finite(x, "audio chunk")  # before any state changes: the caller may drop the chunk
        # y[n] = x[n] - 0.97 x[n-1] across chunk borders; the same IEEE operations lfilter performs
        # offline (x[n] + (-0.97 * x[n-1])), without its per-call overhead.
        x = x.astype(np.float64)
        y = x.copy()
        y[0] -= PREEMPHASIS * self._last
        y[1:] -= PREEMPHASIS * x[:-1]
        self._last = x[-1]
        self._y = np.concatenate([self._y, y])
        self._received += x.size
        before = self._ready
        final = self._final_columns(self._received)
        if final > before:
            self._compute(before, final, at_end=False)
        keep_from = max(0, self._ready * HOP_SIZE - _PAD)  # the first sample the next column reads
        if keep_from > self._y_start:
            self._y = self._y[keep_from - self._y_start :]
            self._y_start = keep_from
        return self._ready - before

    def end_input(self) -> int:
        """The stream ended: close the remaining columns (T = 1 + samples // 200 in all); return how many."""
        if self._ended:
            return 0
        self._ended = True
        before = self._ready
        total = 1 + self._received // HOP_SIZE if self._received else 0
        if total > before:
            self._compute(before, total, at_end=True)
        return self._ready - before

    def _final_columns(self, received: int) -> int:
        if received < _PAD or (self.pad_mode == "reflect" and received <= _PAD):
            return 0  # reflect padding of column 0 mirrors samples 1..400, so it needs 401 samples
        return (received - _PAD) // HOP_SIZE + 1

    def _compute(self, t0: int, t1: int, at_end: bool) -> None:
        capacity = self.history_columns
        t0_kept = max(t0, t1 - capacity)  # columns that the ring would overwrite at once are skipped
        lo = t0_kept * HOP_SIZE - _PAD  # first sample column t0_kept reads (may be < 0: left pad)
        hi = (t1 - 1) * HOP_SIZE + _PAD  # one past the last sample column t1-1 reads
        # The segment is padded like np.pad pads the whole signal: a left pad only when it starts at
        # sample 0, a right pad only at the end. A reflect pad of 400 mirrors the same samples as on
        # the whole signal because the segment is longer than 400 (>= 401 samples before the first
        # column is final; >= 600 for the columns pending at the end); a shorter whole signal is
        # padded on both sides in one call, as offline.
        seg = self._y[max(0, lo) - self._y_start : min(self._received, hi) - self._y_start]
        left = _PAD if lo < 0 else 0
        right = _PAD if at_end else 0
        padded = np.pad(seg, (left, right), mode=self.pad_mode) if left or right else seg
        start = lo + left if lo < 0 else 0
        cols = columns_from_padded(padded[start : start + (t1 - t0_kept - 1) * HOP_SIZE + N_FFT])
        self._ring[:, np.arange(t0_kept, t1) % capacity] = cols
        self._ready = t1

    # -- output ---------------------------------------------------------------------------------

    def window(self, start: int) -> np.ndarray | None:
        """The (80, 16) window of absolute columns start..start+15, or None while they are not all final.

        Raises ValueError if ``start`` is older than the kept history.
        """
        start = operator.index(start)
        if start < 0:
            raise ValueError(f"window start must be >= 0, got {start}")
        oldest = self.oldest_column
        if start < oldest:
            raise ValueError(
                f"window start column {start} is older than the kept history: the oldest kept column is "
                f"{oldest} (history {self.history_columns} columns = {self.history_seconds} s)"
            )
        if start + MEL_WINDOW_FRAMES > self._ready:
            return None
        capacity = self.history_columns
        i = start % capacity
        if i + MEL_WINDOW_FRAMES <= capacity:
            return self._ring[:, i : i + MEL_WINDOW_FRAMES].copy()
        return self._ring[:, np.arange(i, i + MEL_WINDOW_FRAMES) % capacity]

    def window_for_frame(self, frame_index: int, fps: float) -> np.ndarray | None:
        """Video frame ``frame_index``'s window (start int(i * 80/fps)), or None while not final.

        After ``end_input`` it behaves like ``mel_windows(..., n_frames=...)``: starts past the end are
        clamped to the last full window, and a stream shorter than 16 columns is padded with -4.
        """
        start = mel_window_start(frame_index, fps)
        if self._ended:
            if self._ready == 0:
                return None
            if self._ready < MEL_WINDOW_FRAMES:  # fewer columns than the ring holds: no wrap
                return pad_to_window(self._ring[:, : self._ready].copy())
            start = min(start, self._ready - MEL_WINDOW_FRAMES)
        return self.window(start)
