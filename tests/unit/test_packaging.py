"""`pip install .` puts exactly one top-level import name, `lipsync`, into site-packages, and every
module of the project's folders is in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGED_FOLDERS = ("client", "streaming", "training", "export", "benchmarks")

pytestmark = [pytest.mark.unit, pytest.mark.slow]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # No build isolation: setuptools is already in the environment, and nothing is fetched.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
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
