"""`a2m predict` on files and folders: every bad input reported, the rest predicted, exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.store import Store
from tests.conftest import run_cli

pytestmark = [pytest.mark.training]


def test_predict_takes_folders_reports_each_bad_input_and_fails(
    cli: CliRunner, store: Store, version1: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(cli, "train", "--weights", "none", "--image-size", "32", "--epochs", "1")
    assert code == 0, err
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    ants = sorted((version1 / "val" / "ants").iterdir())
    (photos / "a.png").write_bytes(ants[0].read_bytes())
    (photos / "more" / "b.png").write_bytes(ants[1].read_bytes())
    (photos / "notes.txt").write_text("not a picture")
    (photos / ".hidden.png").write_bytes(ants[2].read_bytes())
    single = sorted((version1 / "val" / "bees").iterdir())[0]

    code, out, _ = run_cli(
        cli, "predict", "1", str(photos), str(single), str(tmp_path / "gone.jpg"), "--json"
    )
    rows = {Path(r["path"]).name: r for r in json.loads(out)}
    # One row per input file, hidden files left out; a failure does not stop the others.
    assert sorted(rows) == ["a.png", "b.png", single.name, "gone.jpg", "notes.txt"]
    assert code == 1
    for name in ("a.png", "b.png", single.name):
        top = rows[name]["top"]
        assert "error" not in rows[name] and len(top) == 2  # a 2-class model: two labels at most
        assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)
    assert rows["gone.jpg"]["error"] == "no such file" and rows["gone.jpg"]["top"] == []
    assert "image" in rows["notes.txt"]["error"] and rows["notes.txt"]["top"] == []

    code, out, err = run_cli(cli, "predict", "1", str(photos / "a.png"), str(photos / "notes.txt"))
    assert code == 1 and "a.png" in out and "1 of 2 input(s) could not be predicted" in err
    code, out, _ = run_cli(cli, "predict", "1", str(photos / "a.png"))
    assert code == 0 and "#3" not in out
