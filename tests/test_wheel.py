"""The built wheel carries the migrations: install it in a fresh venv and run `a2m init` there."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from annotate2model.store.db import SCHEMA_HEAD

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_wheel_installs_and_initialises(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("annotate2model-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "annotate2model/_migrations/env.py" in names
    # Every migration ships, up to the head the code expects.
    for revision in ("0001", SCHEMA_HEAD):
        assert any(n.startswith(f"annotate2model/_migrations/versions/{revision}") for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    target = next((env_dir / "lib").glob("python*/site-packages"))
    # The wheel itself goes into the fresh venv; its heavy dependencies (torch...) are borrowed
    # from the test environment by a .pth line placed after the venv's own site-packages.
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run([*pip, "install", "--no-deps", "--quiet", str(wheel)], check=True)
    (target / "zz_borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ws = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    where = subprocess.run(
        [str(python), "-c", "import annotate2model.store.db as d; print(d.migrations_dir())"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert where.stdout.strip().startswith(str(target)), where.stdout
    result = subprocess.run(
        [str(env_dir / "bin" / "a2m"), "init", str(ws)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"store schema {SCHEMA_HEAD}" in result.stdout
    assert (ws / ".a2m" / "store.db").is_file()
