"""The quality measures on known inputs, and the quality benchmark end to end at a small scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipsync.training import quality

pytestmark = pytest.mark.unit


def test_measures_on_known_images() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert quality.psnr(a, a) == float("inf")
    b = np.clip(a.astype(np.int16) + 5, 0, 255).astype(np.uint8)
    assert 33.0 < quality.psnr(a, b) < 35.0  # a shift of 5 levels: 20*log10(255/5) = 34.2 dB where unclipped
    assert quality.ssim(a, a) == pytest.approx(1.0)
    mask = np.ones(a.shape[:2], bool)
    assert quality.delta_e(a, a, mask) == 0.0
    grey, red = np.full((4, 4, 3), 128, np.uint8), np.zeros((4, 4, 3), np.uint8)
    red[..., 2] = 255
    assert quality.delta_e(grey, red, np.ones((4, 4), bool)) > 50
    flat, edges = np.full((20, 20, 3), 90, np.uint8), np.zeros((20, 20, 3), np.uint8)
    edges[:, ::2] = 255
    assert quality.sharpness(flat) == 0.0 < quality.sharpness(edges)


def test_best_lag_correlation_finds_the_offset() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=200)
    signal = np.roll(reference, 3) + 0.1 * rng.normal(size=200)  # signal[t] = reference[t - 3]
    r, lag = quality.best_lag_correlation(signal, reference)
    assert lag == 3 and r > 0.9
    signal[::5] = np.nan  # frames without landmarks are left out
    assert quality.best_lag_correlation(signal, reference)[1] == 3
    r_none, _ = quality.best_lag_correlation(rng.normal(size=200), reference)
    assert abs(r_none) < 0.3


@pytest.mark.slow
def test_quick_benchmark_reports_every_figure(tmp_path) -> None:
    from lipsync.benchmarks.quality import run_benchmark

    out = tmp_path / "quality_quick.json"
    report = run_benchmark(1, 1.2, True, out, tmp_path / "quality_quick.png")
    assert json.loads(out.read_text())["summary"] == report["summary"]
    assert (tmp_path / "quality_quick.png").stat().st_size > 10_000
    runs = {(r["model"], r["blend"], r["item"]): r["figures"] for r in report["runs"]}
    assert {m for m, _, _ in runs} >= {"shipped", "untrained"}
    for (model, blend, _item), figures in runs.items():
        assert figures["frames_measured"] == figures["frames"] > 20, (model, blend, figures)
        if blend == "mouth":  # the mouth-only paste leaves everything outside its mask as it was
            assert figures["changed_outside_mask_pixels"] == 0, (model, figures)
        else:  # the lower-half paste changes the cheeks and the chin's surroundings too
            assert figures["changed_outside_mask_pixels"] > 100, (model, figures)
        assert np.isfinite(figures["sync_lip_vs_loudness"]) and -1 <= figures["sync_lip_vs_loudness"] <= 1
        assert "lse_d" in figures
    own = ("synthetic0",)
    shipped, untrained = runs[("shipped", "mouth", own[0])], runs[("untrained", "lower_face", own[0])]
    # An untrained network pasted over the lower half ruins the face; the trained one re-driven by
    # the clip's own speech gives the clip back far more closely.
    assert shipped["lower_face_psnr_db"] > untrained["lower_face_psnr_db"] + 8, (shipped, untrained)
    assert shipped["delta_e_skin"] < untrained["delta_e_skin"] / 3
