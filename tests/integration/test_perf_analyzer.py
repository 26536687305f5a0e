"""Triton's perf_analyzer (the tritonclient wheel's binary) against a real tritonserver, at concurrency 1.

A short window is enough to show that the binary starts (libb64, libcudart from the CUDA runtime wheel),
that the served model takes the real inputs written for it, and that its CSV report parses.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lipsync.benchmarks import perf_analyzer
from lipsync.client import contract

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def perf_analyzer_version() -> str:
    try:
        return perf_analyzer.version()
    except perf_analyzer.PerfAnalyzerUnavailable as exc:
        pytest.skip(f"perf_analyzer cannot run here: {exc}")


def test_input_data_holds_real_inputs_of_the_contract(tmp_path: Path) -> None:
    path = perf_analyzer.write_input_data(tmp_path / "input.json", samples=3)
    steps = json.loads(path.read_text())["data"]
    assert len(steps) == 3
    for spec in contract.INPUTS:
        values = [np.frombuffer(base64.b64decode(s[spec.name]["b64"]), "<f4") for s in steps]
        assert all(v.size == int(np.prod(spec.shape)) for v in values)
        assert all(np.isfinite(v).all() for v in values)  # random bytes would not be (NaN as floats)
        assert len({v.tobytes() for v in values}) > 1  # several frames, not one repeated


def test_perf_analyzer_measures_the_served_model(perf_analyzer_version: str, triton_server, tmp_path: Path) -> None:
    plan = replace(perf_analyzer.DEFAULT_PLAN, concurrency=(1,), window_ms=1000, max_trials=3, input_samples=4)
    shown: list[str] = []
    points, commands = perf_analyzer.sweep(
        triton_server.grpc_url, plan, tmp_path, log=lambda _: None, echo=shown.append
    )
    (point,) = points
    assert point.model == contract.EMBEDDED_MODEL and point.concurrency == 1
    assert point.throughput_per_s > 0
    assert 0 < point.latency_ms["p50"] <= point.latency_ms["p90"] <= point.latency_ms["p99"]
    assert point.server_ms["compute_infer"] > 0 and point.server_ms["queue"] >= 0
    assert point.mean_batch == pytest.approx(1.0)  # one request in flight: nothing to batch
    assert "Request concurrency: 1" in "\n".join(shown) and "p99 latency" in "\n".join(shown)
    assert "-i" in commands[0] and commands[0][commands[0].index("-i") + 1] == "grpc"
    print(perf_analyzer_version, perf_analyzer.table(points), sep="\n")
