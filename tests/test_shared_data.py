"""The CI rule for ../shared: missing data or weights fail under CI=true and skip elsewhere.

Each check runs pytest in a child process on a small test file that asks for the real fixtures,
with A2M_SHARED_DIR pointing at an empty folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench._shared import DEFAULT_SHARED, ENV_VAR, shared_dir

ROOT = Path(__file__).resolve().parents[1]

NEEDS_SHARED = """
import pytest

def test_needs_weights(scenes_weights):
    assert scenes_weights.is_file()

def test_needs_hymenoptera(hymenoptera):
    assert hymenoptera.is_dir()

@pytest.mark.gpu
def test_needs_a_gpu():
    import torch
    assert torch.cuda.is_available()
"""


def run_child(tmp_path: Path, ci: str | None) -> tuple[int, str]:
    test_file = tmp_path / "test_needs_shared.py"
    test_file.write_text(NEEDS_SHARED)
    empty = tmp_path / "empty-shared"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    env[ENV_VAR] = str(empty)
    if ci is not None:
        env["CI"] = ci
    # The project's conftest as a plugin: the child uses the very fixtures the suite uses.
    config = ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            *config,
            "-rA",
            "-vv",
            str(test_file),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_missing_shared_data_fails_under_ci(tmp_path: Path) -> None:
    code, out = run_child(tmp_path, ci="true")
    assert code == 1, out
    # A fixture that fails reports the test as an error: not passed, not skipped.
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    assert any("::test_needs_weights" in line for line in failed), out
    assert any("::test_needs_hymenoptera" in line for line in failed), out
    # The message names what is missing, where it was looked for, and the variable.
    assert "the ResNet-18 scenes weights is missing" in out, out
    assert "the hymenoptera data set is missing" in out, out
    assert str(tmp_path / "empty-shared" / "weights" / "resnet18-scenes.pth") in out
    assert ENV_VAR in out and "CI=true" in out
    # No CUDA is the one reason a test may still skip under CI.
    assert ("1 skipped" in out and "no CUDA device" in out) or "1 passed" in out, out


@pytest.mark.slow
def test_missing_shared_data_skips_outside_ci(tmp_path: Path) -> None:
    code, out = run_child(tmp_path, ci=None)
    assert code == 0, out
    assert "failed" not in out, out
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert any("the ResNet-18 scenes weights is missing" in line for line in skipped), out
    assert any("the hymenoptera data set is missing" in line for line in skipped), out
    assert ENV_VAR in out


def test_shared_dir_is_beside_the_project_or_from_the_variable(tmp_path: Path) -> None:
    assert shared_dir({}) == DEFAULT_SHARED == ROOT.parent / "shared"
    assert shared_dir({ENV_VAR: str(tmp_path)}) == tmp_path.resolve()
    assert shared_dir({ENV_VAR: "  "}) == DEFAULT_SHARED


def test_no_machine_paths_in_the_project() -> None:
    """Nothing names where this machine keeps things: ../shared comes from bench/_shared.py."""
    # Spelled in parts so that this file does not match itself.
    needles = ["/" + top + "/" for top in ("work", "root", "home", "Users")]
    offenders = []
    for folder in ("annotate2model", "bench", "tests", "migrations", "docker", ".ci"):
        for path in sorted((ROOT / folder).rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in (".pyc", ".db", ".sqlite", ".png", ".jpg"):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in needles if n in text]
    for name in ("README.md", "pyproject.toml"):
        text = (ROOT / name).read_text(encoding="utf-8")
        offenders += [f"{name}: {n}" for n in needles if n in text]
    assert offenders == []
