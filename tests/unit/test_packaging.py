"""`pip install .` puts exactly one top-level import name, `lipsync`, into site-packages, and every
module of the project's folders is in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGED_FOLDERS = ("client", "streaming", "training", "export", "benchmarks")
# Top-level folders that are not source (a training/data package must still be copied).
TOP_LEVEL_NOT_SOURCE = {
    ".git",
    ".venv",
    "build",
    "results",
    "runs",
    "data",
    "artifacts",
    ".pytest_cache",
    ".ruff_cache",
}


def _not_source(folder: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skipped |= TOP_LEVEL_NOT_SOURCE & set(names)
    return skipped


pytestmark = [pytest.mark.unit, pytest.mark.slow]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # Build from a clean copy: setuptools reuses an in-tree build/ folder, whose stale files once hid
    # a package-data pattern that matched nothing on a fresh clone.
    source = build / "source"
    shutil.copytree(ROOT, source, ignore=_not_source)
    # No build isolation: setuptools is already in the environment, and nothing is fetched.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(build), "TMPDIR": str(build)},
        timeout=600,
    )
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_one_top_level_name(wheel_names: list[str]) -> None:
    top = {name.split("/")[0] for name in wheel_names if ".dist-info/" not in name}
    assert top == {"lipsync"}


def test_every_module_is_packaged(wheel_names: list[str]) -> None:
    want = {
        f"lipsync/{path.relative_to(ROOT).as_posix()}"
        for folder in PACKAGED_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    missing = sorted(want - set(wheel_names))
    assert not missing, f"modules left out of the wheel (add their package to pyproject.toml): {missing}"


def test_shipped_weights_and_web_page_are_packaged(wheel_names: list[str]) -> None:
    assert "lipsync/training/weights/wav2lip_cpu.pt" in wheel_names
    assert "lipsync/streaming/static/index.html" in wheel_names
