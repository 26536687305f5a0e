"""The GPU benchmark end to end at CPU scale (`--device cpu --quick`): every section runs and reports real figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lipsync.benchmarks import gpu

pytestmark = [pytest.mark.unit, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One quick CPU run of the script's entry point (about a minute); the tests below read what it wrote.

    One PyTorch thread: on a busy 2-core machine two threads spin against each other and run 5-8x slower.
    """
    out = tmp_path_factory.mktemp("gpu_bench")
    threads = torch.get_num_threads()
    try:
        assert gpu.main(["--device", "cpu", "--quick", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    path = out / "gpu_cpu_quick.json"
    assert sorted(p.name for p in out.iterdir()) == ["gpu_cpu_quick.json", "gpu_cpu_quick.png"]
    return json.loads(path.read_text()), out


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_module_import_pulls_in_neither_mediapipe_nor_tritonclient() -> None:
    code = "import sys, lipsync.benchmarks.gpu; print(sorted(m for m in ('mediapipe', 'tritonclient') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_report_names_the_machine_and_every_section(run: tuple[dict, Path]) -> None:
    report, _ = run
    assert "cores usable" in report["machine"] and report["device"] == "cpu"
    assert report["torch"] and report["device_name"] and report["torch_threads"] == 1
    assert list(report["sections"]) == list(gpu.SECTIONS)
    for name, entry in report["sections"].items():
        assert entry["status"] in ("ok", "skipped"), (name, entry.get("error"), entry.get("traceback"))
        assert entry["seconds"] >= 0
    assert report["sections"]["compile"]["status"] == "skipped" and "--quick" in report["sections"]["compile"]["reason"]


def test_gpu_tests_are_run_and_skip_on_cpu(run: tuple[dict, Path]) -> None:
    entry = run[0]["sections"]["pytest_gpu"]
    assert entry["status"] == "ok" and entry["returncode"] == 0
    assert entry["skipped"] >= 1 and entry["passed"] == entry["failed"] == 0
    assert entry["deselected"] > 100  # every other test is deselected by the marker, not left uncollected


def test_every_generator_configuration_has_real_figures(run: tuple[dict, Path]) -> None:
    section = run[0]["sections"]["generator"]
    plan = gpu.make_plan("cpu", True, None, None)
    assert section["failed"] == []
    measured = {(r["width"], r["dtype"], r["mode"], r["batch"]) for r in section["rows"]}
    wanted = {(w, d, m, b) for w in plan.widths for d in plan.dtypes for m in plan.modes for b in plan.batches}
    assert measured == wanted and len(section["rows"]) == len(wanted)
    assert positive(section["peak"]["tflops"])
    for width in plan.widths:  # counted, not assumed: ~7.9 GFLOP x width^2
        flops = section["flops_per_frame"][str(width)]
        assert section["flops_source"][str(width)] == "torch.utils.flop_counter"
        assert 0.8 < flops / (7.9e9 * width**2) < 1.2, (width, flops)
    for row in section["rows"]:
        assert positive(row["p50_ms"]) and row["p99_ms"] >= row["p50_ms"], row
        assert positive(row["fps"]) and row["calls"] >= plan.min_calls, row
        assert 0 < row["share_of_peak"] <= 1.5, row


def test_backend_latency_and_session_estimate(run: tuple[dict, Path]) -> None:
    section = run[0]["sections"]["backend"]
    assert section["config"]["dtype"] == "fp32" and section["config"]["cuda_graphs"] is False
    assert positive(section["batch1"]["p50_ms"]) and section["batch1"]["p99_ms"] >= section["batch1"]["p50_ms"]
    assert section["in_process_batching"] is False and "no batching across callers" in section["batching_note"]
    assert [r["batch"] for r in section["batched"]] == list(gpu.make_plan("cpu", True, None, None).backend_batches)
    assert section["sessions_from_batched"]["sessions"] >= 0
    sweep = section["unbatched_callers"]
    assert sweep["points"] and sweep["points"][0]["sessions"] == 1 and positive(sweep["points"][0]["fps"])
    assert sweep["max_sessions"] == max([0] + [p["sessions"] for p in sweep["points"] if p["ok"]])


def test_training_reports_steps_per_second_or_why_not(run: tuple[dict, Path]) -> None:
    section = run[0]["sections"]["training"]
    if section["status"] == "skipped":
        assert section["reason"]
        return
    (trained,) = section["runs"]
    assert trained["ended"] == "finished" and trained["steps_logged"] == 6
    assert positive(trained["steps_per_s"])
    assert trained["frames_per_s"] == pytest.approx(trained["steps_per_s"] * trained["batch_size"] * 5, rel=1e-3)
    assert [step for step, _ in trained["loss_curve"]] == list(range(1, 7))
    assert all(positive(loss) for _, loss in trained["loss_curve"])
    assert positive(trained["speedup_vs_cpu"]["per_step"])


def test_plot_is_written(run: tuple[dict, Path]) -> None:
    png = run[1] / "gpu_cpu_quick.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_pytest_summary_parsing() -> None:
    counts = gpu.parse_pytest_counts("...\n1 passed, 3 skipped, 441 deselected, 2 errors in 6.69s\n")
    assert (counts["passed"], counts["skipped"], counts["deselected"], counts["errors"], counts["failed"]) == (
        1,
        3,
        441,
        2,
        0,
    )


def test_session_estimate_keeps_only_batches_within_the_budget() -> None:
    rows = [{"batch": 1, "p99_ms": 5.0, "fps": 200.0}, {"batch": 8, "p99_ms": 30.0, "fps": 1000.0},
            {"batch": 32, "p99_ms": 90.0, "fps": 4000.0}]  # fmt: skip
    assert gpu.sessions_from_batches(rows, 40.0) == {"sessions": 40, "batch": 8, "fps": 1000.0}
    assert gpu.sessions_from_batches(rows, 20.0)["batch"] == 1
    assert gpu.sessions_from_batches(rows, 1.0)["sessions"] == 0
