"""LSE-D / LSE-C (syncnet_python's offset search) and its MFCC front end, on inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipsync.training.lse import (
    MFCC_NUMCEP,
    calc_pdist,
    lse_scores,
    mel_filterbank,
    mfcc,
    to_int16_scale,
    window_count,
)

pytestmark = pytest.mark.unit


def reference_calc_pdist(feat1: torch.Tensor, feat2: torch.Tensor, vshift: int) -> torch.Tensor:
    """syncnet_python's calc_pdist, transcribed loop for loop."""
    win_size = vshift * 2 + 1
    feat2p = F.pad(feat2, (0, 0, vshift, vshift))
    dists = []
    for i in range(len(feat1)):
        dists.append(F.pairwise_distance(feat1[[i], :].repeat(win_size, 1), feat2p[i : i + win_size, :]))
    return torch.stack(dists)


def unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=1)


def test_calc_pdist_equals_the_reference_loop_including_padding() -> None:
    g = torch.Generator().manual_seed(0)
    video, audio = torch.randn(23, 7, generator=g), torch.randn(23, 7, generator=g)
    for vshift in (1, 5, 15):
        ours = calc_pdist(video, audio, vshift)
        assert ours.shape == (23, 2 * vshift + 1)
        torch.testing.assert_close(ours, reference_calc_pdist(video, audio, vshift), rtol=0, atol=1e-6)
    # Row 0, offset -15 looks at padding only: the distance to the zero vector (+eps) is the norm.
    d = calc_pdist(video, audio, 15)
    torch.testing.assert_close(d[0, 0], (video[0] + 1e-6).norm(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("delay", [-7, -3, 0, 2, 11])
def test_offset_search_finds_a_known_shift(delay: int) -> None:
    n = 80
    video = unit_vectors(n, 32, seed=1)
    noise = unit_vectors(n, 32, seed=2)
    # audio window j shows what video window j - delay shows (audio delayed by `delay` windows)
    audio = torch.stack([video[j - delay] if 0 <= j - delay < n else noise[j] for j in range(n)])
    result = lse_scores(video, audio, vshift=15)
    assert result.offset == -delay  # syncnet_python's sign convention
    # at the true offset every matched pair has distance ~0; only padding/noise pairs add to the mean
    matched = n - abs(delay)
    expected_min = reference_calc_pdist(video, audio, 15)[:, 15 + delay].mean().item()
    assert result.lse_d == pytest.approx(expected_min, abs=1e-5)
    assert result.lse_d < 0.2 * (n - matched + 1)
    assert result.lse_c == pytest.approx(float(np.median(result.mean_dists)) - result.lse_d, abs=1e-6)
    assert result.lse_c > 0.5
    assert len(result.mean_dists) == 31


def test_unrelated_embeddings_have_no_confident_offset() -> None:
    video, audio = unit_vectors(200, 64, seed=3), unit_vectors(200, 64, seed=4)
    synced = lse_scores(video, video.clone())
    unrelated = lse_scores(video, audio)
    assert synced.offset == 0 and synced.lse_d < 1e-3
    assert unrelated.lse_d > synced.lse_d + 0.5
    assert unrelated.lse_c < synced.lse_c


def test_lse_is_min_and_median_minus_min_of_the_mean_distances() -> None:
    g = torch.Generator().manual_seed(5)
    video, audio = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    mdist = reference_calc_pdist(video, audio, 15).mean(dim=0)
    result = lse_scores(video, audio, vshift=15)
    assert result.lse_d == pytest.approx(mdist.min().item(), abs=1e-6)
    assert result.lse_c == pytest.approx((mdist.median() - mdist.min()).item(), abs=1e-6)
    assert result.offset == 15 - int(mdist.argmin())
    assert result.dist_at_zero == pytest.approx(mdist[15].item(), abs=1e-6)


def test_lse_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="no windows"):
        lse_scores(torch.zeros(0, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="must both be"):
        calc_pdist(torch.zeros(3, 4), torch.zeros(4, 4))


def test_window_count_matches_syncnet_instance() -> None:
    # min(#frames, floor(len/640)) - 5
    assert window_count(100, 100 * 640) == 95
    assert window_count(100, 50 * 640 + 639) == 45
    assert window_count(4, 10_000) == 0


def test_mfcc_shape_rate_and_energy_column() -> None:
    rng = np.random.default_rng(0)
    wav = to_int16_scale(rng.uniform(-0.3, 0.3, 16_000))
    feat = mfcc(wav)
    # 25 ms windows every 10 ms: 1 + ceil((16000 - 400) / 160) frames, 13 coefficients
    assert feat.shape == (1 + int(np.ceil((16_000 - 400) / 160)), MFCC_NUMCEP)
    assert np.isfinite(feat).all()
    # c0 is the log of the frame energy of the pre-emphasised, |rfft_512|^2/512 spectrum
    x = np.append(wav[0], wav[1:] - 0.97 * wav[:-1])
    frame0 = x[:400]
    energy = np.sum(np.abs(np.fft.rfft(frame0, 512)) ** 2 / 512)
    assert feat[0, 0] == pytest.approx(np.log(energy), rel=1e-9)
    # louder audio shifts only c0 (log energy); the other coefficients see a constant log offset, which
    # the orthonormal DCT puts into c0 alone
    louder = mfcc(wav * 4)
    np.testing.assert_allclose(louder[:, 1:], feat[:, 1:], atol=1e-6)
    np.testing.assert_allclose(louder[:, 0], feat[:, 0] + np.log(16), atol=1e-9)


def test_mel_filterbank_is_triangles_on_fft_bins() -> None:
    fb = mel_filterbank()
    assert fb.shape == (26, 257)
    assert fb.min() >= 0 and fb.max() <= 1
    assert (fb.max(axis=1) > 0.5).all()  # every filter has a peak
    assert fb[:, 0].sum() == 0  # lowfreq 0 -> the first filter starts at bin 0 with weight 0


def test_mfcc_equals_python_speech_features_when_installed() -> None:
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(1)
    for n in (300, 401, 12_345, 16_000):
        wav = np.round(rng.standard_normal(n) * 3000).astype(np.int16)
        np.testing.assert_allclose(mfcc(wav), psf.mfcc(wav, 16000), rtol=1e-10, atol=1e-8)
