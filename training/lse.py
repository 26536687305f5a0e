"""LSE-D / LSE-C as Wav2Lip's evaluation computes them with syncnet_python (reference 7.2), and syncnet_v2's MFCC front end."""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fftpack import dct

# python_speech_features.mfcc defaults, as called by SyncNetInstance: mfcc(audio, 16000)
MFCC_RATE = 16_000
MFCC_WINLEN = 0.025  # 400 samples
MFCC_WINSTEP = 0.01  # 160 samples: 100 MFCC frames per second, 4 per video frame at 25 fps
MFCC_NUMCEP = 13
MFCC_NFILT = 26
MFCC_NFFT = 512
MFCC_PREEMPH = 0.97
MFCC_CEPLIFTER = 22
MFCC_PER_VIDEO_FRAME = 4
MFCC_WINDOW = 20  # 0.2 s of MFCC columns per 5-frame video window
SAMPLES_PER_VIDEO_FRAME = 640  # 16 kHz / 25 fps
_EPS = np.finfo(float).eps


def _round_half_up(x: float) -> int:
    return int(decimal.Decimal(x).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _hz2mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595 * np.log10(1 + np.asarray(hz) / 700.0)


def _mel2hz(mel: np.ndarray) -> np.ndarray:
    return 700 * (10 ** (mel / 2595.0) - 1)


def mel_filterbank(nfilt: int = MFCC_NFILT, nfft: int = MFCC_NFFT, samplerate: int = MFCC_RATE) -> np.ndarray:
    """(nfilt, nfft//2+1) triangular filters on FFT bins floor((nfft+1)*f/sr), as `get_filterbanks`."""
    melpoints = np.linspace(_hz2mel(0.0), _hz2mel(samplerate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(melpoints) / samplerate)
    fbank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            fbank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            fbank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fbank


def mfcc(signal: np.ndarray, samplerate: int = MFCC_RATE) -> np.ndarray:
    """(num_frames, 13) MFCCs exactly as `python_speech_features.mfcc(signal, samplerate)` (version 0.6).

    Rectangular 25 ms frames every 10 ms (the last one zero-padded), pre-emphasis 0.97, power
    spectrum |rfft_512|^2 / 512, 26 mel filters, log, orthonormal DCT-II, lifter 22, and c0
    replaced by the log frame energy. syncnet_python feeds it int16 sample values.
    """
    sig = np.asarray(signal, dtype=np.float64).reshape(-1)
    sig = np.append(sig[0], sig[1:] - MFCC_PREEMPH * sig[:-1]) if sig.size else sig
    frame_len = _round_half_up(MFCC_WINLEN * samplerate)
    frame_step = _round_half_up(MFCC_WINSTEP * samplerate)
    n = len(sig)
    num_frames = 1 if n <= frame_len else 1 + math.ceil((n - frame_len) / frame_step)
    padded = np.concatenate([sig, np.zeros(int((num_frames - 1) * frame_step + frame_len) - n)])
    idx = np.arange(frame_len)[None, :] + (np.arange(num_frames) * frame_step)[:, None]
    frames = padded[idx]
    pspec = np.square(np.abs(np.fft.rfft(frames, MFCC_NFFT))) / MFCC_NFFT
    energy = np.sum(pspec, axis=1)
    energy = np.where(energy == 0, _EPS, energy)
    feat = pspec @ mel_filterbank(MFCC_NFILT, MFCC_NFFT, samplerate).T
    feat = np.where(feat == 0, _EPS, feat)
    feat = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :MFCC_NUMCEP]
    feat = feat * (1 + (MFCC_CEPLIFTER / 2.0) * np.sin(np.pi * np.arange(MFCC_NUMCEP) / MFCC_CEPLIFTER))
    feat[:, 0] = np.log(energy)
    return feat


def to_int16_scale(wav: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> the int16 values syncnet_python reads from its wav (as float64)."""
    return np.clip(np.round(np.asarray(wav, dtype=np.float64) * 32768.0), -32768, 32767)


def window_count(n_frames: int, n_samples: int) -> int:
    """Number of 5-frame windows SyncNetInstance scores: `min(#frames, floor(len/640)) - 5` (never below 0)."""
    return max(min(n_frames, n_samples // SAMPLES_PER_VIDEO_FRAME) - 5, 0)


def calc_pdist(video: torch.Tensor, audio: torch.Tensor, vshift: int = 15) -> torch.Tensor:
    """(N, 2*vshift+1) distances: row i holds ||v_i - a_{i+k-vshift}|| for k = 0..2*vshift, audio zero-padded.

    `F.pairwise_distance` (eps 1e-6), like syncnet_python's `calc_pdist`.
    """
    if video.shape != audio.shape or video.dim() != 2:
        raise ValueError(
            f"video and audio features must both be (N, D), got {tuple(video.shape)} and {tuple(audio.shape)}"
        )
    win = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))
    windows = padded.unfold(0, win, 1).transpose(1, 2)  # (N, win, D): windows[i, k] = padded[i + k]
    return F.pairwise_distance(
        video[:, None, :].expand_as(windows).reshape(-1, video.shape[1]), windows.reshape(-1, video.shape[1])
    ).view(-1, win)


@dataclass(frozen=True)
class LSEResult:
    """Scores of one clip: LSE-D (min mean distance), LSE-C (median - min), the offset found, all mean distances."""

    lse_d: float
    lse_c: float
    offset: int  # syncnet_python's sign: vshift - argmin; audio delayed by N frames gives -N
    mean_dists: tuple[float, ...]

    @property
    def dist_at_zero(self) -> float:
        return self.mean_dists[len(self.mean_dists) // 2]


def lse_scores(video: torch.Tensor, audio: torch.Tensor, vshift: int = 15) -> LSEResult:
    """LSE-D and LSE-C of one clip from per-window embeddings (SyncNetInstance.evaluate).

    Video window i (frames i..i+4) is compared with audio windows i-vshift..i+vshift (zero vectors
    past the ends); LSE-D is the smallest mean Euclidean distance over the offsets, LSE-C the
    median of the mean distances minus that minimum.
    """
    if video.shape[0] == 0:
        raise ValueError("no windows to score (the clip is shorter than 6 frames or its audio than 0.24 s)")
    mdist = calc_pdist(video.float(), audio.float(), vshift).mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return LSEResult(
        lse_d=float(minval),
        lse_c=float(conf),
        offset=vshift - int(minidx),
        mean_dists=tuple(float(d) for d in mdist),
    )
