"""The import direction: nothing on the serving side (client/, streaming/, export/, model_repository/)
imports the training package, and nothing reads outside the repository."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVING_FOLDERS = ("client", "streaming", "export", "model_repository")

pytestmark = pytest.mark.unit


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (function-local imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def serving_files() -> list[Path]:
    return sorted(p for folder in SERVING_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_the_walk_sees_the_serving_side() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in serving_files()}
    assert {"client/backends/pytorch.py", "model_repository/wav2lip_python/1/model.py", "export/cli.py"} <= files


def test_serving_never_imports_training() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in serving_files()
        for line, module in imported_modules(path)
        if module == "lipsync.training" or module.startswith(("lipsync.training.", "training"))
    ]
    assert not offenders, "serving imports training:\n" + "\n".join(offenders)


def test_the_walk_would_catch_a_training_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from lipsync.training.losses import x\n")
    assert (2, "lipsync.training.losses") in imported_modules(sample)


def test_only_the_project_namespace_is_imported() -> None:
    # Generic top-level names (client, streaming, ...) would collide in site-packages.
    bare = ("client", "streaming", "export", "benchmarks", "training")
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in sorted(ROOT.glob("[!.]*/**/*.py"))
        if ".venv" not in path.parts
        for line, module in imported_modules(path)
        if module.split(".")[0] in bare
    ]
    assert not offenders, "\n".join(offenders)


def test_no_code_reads_outside_the_repository() -> None:
    # A folder beside the checkout is not in a user's clone: no path may be built from one.
    outside = "/ " + '"sha' + 'red"'
    offenders = [
        f"{path.relative_to(ROOT)}"
        for path in sorted(ROOT.glob("[!.]*/**/*.py"))
        if ".venv" not in path.parts and path.name != "test_layout.py" and outside in path.read_text()
    ]
    assert not offenders
