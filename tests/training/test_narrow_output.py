"""`a2m predict` and `a2m evaluate` read at 80 columns: whole `a2m` processes writing to a pipe."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from annotate2model.cli.render import RichProgress
from annotate2model.store import Store
from annotate2model.training.runs import runner
from annotate2model.workspace import Workspace
from tests.training.conftest import small_config

pytestmark = pytest.mark.training

LONG_NAME = "IMG_20240101_123456_a_long_camera_file_name.png"


def _a2m(workspace: Workspace, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "TERM"))},
        "A2M_HOME": str(workspace.root),
        "COLUMNS": "80",
    }
    return subprocess.run(
        [sys.executable, "-m", "annotate2model", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_and_evaluate_at_80_columns(
    workspace: Workspace, store: Store, version1: Path, weights: Path, tmp_path: Path
) -> None:
    run = runner.train(store, small_config(weights, epochs=1)).run
    folder = tmp_path / "photos" / "a folder with a long name" / "and more"
    folder.mkdir(parents=True)
    ant = sorted((version1 / "val" / "ants").iterdir())[0]
    (folder / LONG_NAME).write_bytes(ant.read_bytes())
    (tmp_path / "photos" / "b.png").write_bytes(ant.read_bytes())
    (tmp_path / "photos" / "notes.jpg").write_text("not a picture")

    proc = _a2m(workspace, tmp_path, "predict", str(run.id), "photos")
    assert proc.returncode == 1, proc.stderr  # notes.jpg cannot be predicted
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 80 and "…" not in line for line in lines), proc.stdout
    header = next(line for line in lines if "prediction" in line)
    # A 2-class model: the likeliest label, then the other one; no third column.
    assert header.split() == ["image", "prediction", "then"]
    # The long file name whole on its row (with its labels), its folder on the next line.
    row = next(i for i, line in enumerate(lines) if LONG_NAME in line)
    assert lines[row].split()[0] == LONG_NAME and lines[row].split()[1] in ("ants", "bees")
    assert lines[row + 1].strip() == "photos/a folder with a long name/and more/"
    # A short path stays whole on one line; a failed input says why under its name.
    assert any(line.split()[0] == "photos/b.png" for line in lines if line.strip())
    failed = next(i for i, line in enumerate(lines) if "photos/notes.jpg" in line)
    assert lines[failed].split()[1] == "failed" and "image" in lines[failed + 1]

    proc = _a2m(workspace, tmp_path, "evaluate", str(run.id))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 80 and "…" not in line for line in lines), proc.stdout
    assert "Confusion matrix (rows: true class, columns: predicted):" in lines


def _epoch(progress: RichProgress) -> None:
    progress.begin("Epoch 12/20", total=15)
    for _ in range(15):
        progress.advance(1, status="loss 0.415 acc 0.833")
    progress.note("task 12 of project 3, /data/b.png skipped: truncated file")
    progress.advance(0, status="loss 0.415 acc 0.833 val_loss 1.130 val_acc 0.429")
    progress.end()


def test_progress_on_an_80_column_terminal_keeps_counts_whole() -> None:
    out = io.StringIO()
    _epoch(RichProgress(Console(file=out, force_terminal=True, width=80, color_system=None)))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    # The last frame drawn: the counts and the whole status, no cell cut to an ellipsis (they
    # were "2… … 0…" when the status was long); the warning on a line of its own above.
    final = text.split("\r")[-1].strip()
    assert final.startswith("Epoch 12/20") and " 15/15 " in final and "…" not in final
    assert final.endswith("val_loss 1.130 val_acc 0.429")
    drawn = re.split(r"[\r\n]", text)
    assert "warning: task 12 of project 3, /data/b.png skipped: truncated file" in drawn


def test_progress_without_a_terminal_is_plain_lines() -> None:
    out = io.StringIO()
    _epoch(RichProgress(Console(file=out, force_terminal=False, width=80)))
    first, second = out.getvalue().splitlines()
    assert first == "warning: task 12 of project 3, /data/b.png skipped: truncated file"
    assert re.fullmatch(
        r"Epoch 12/20: 15/15 in \d\.\d s, loss 0\.415 acc 0\.833 val_loss 1\.130 val_acc 0\.429",
        second,
    )
