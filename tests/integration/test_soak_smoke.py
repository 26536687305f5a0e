"""The soak benchmark end to end at a small scale: real tritonserver, gateway process and peers."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_soak_runs_restarts_triton_and_leaves_no_session_open(tmp_path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    from lipsync.benchmarks.soak import main

    out = tmp_path / "soak_smoke.json"
    assert main(["--minutes", "0.6", "--sessions", "1", "--session-s", "10", "--sample-s", "5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["sessions_completed"] >= 2, report["sessions_failed"]
    assert report["sessions_left_open"] == 0
    assert report["triton_restart"]["took_s"] > 0
    assert len(report["samples"]) >= 4 and all(s["gateway_rss_mb"] > 0 for s in report["samples"])
    assert report["av_offset_ms"]["first"] is not None and abs(report["av_offset_ms"]["first"]) < 200
    assert out.with_suffix(".png").stat().st_size > 10_000
