"""The data commands through the CLI boundary: output, --json, clear errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from annotate2model.workspace import Workspace
from tests.conftest import make_image_folder, run_cli


def test_import_versions_show_diff_json(cli: CliRunner, tmp_path: Path) -> None:
    make_image_folder(tmp_path / "d", {"cat": 6, "dog": 4})
    code, out, _ = run_cli(cli, "import-folder", str(tmp_path / "d"), "--note", "first")
    assert code == 0 and "Version 1: 10 images" in out
    code, out, _ = run_cli(cli, "import-folder", str(tmp_path / "d"))
    assert code == 0 and "Nothing changed" in out
    make_image_folder(tmp_path / "d", {"bird": 2}, seed=5)
    run_cli(cli, "import-folder", str(tmp_path / "d"))

    code, out, _ = run_cli(cli, "versions", "--json")
    rows = json.loads(out)
    assert [r["number"] for r in rows] == [1, 2]
    assert rows[0]["note"] == "first" and rows[1]["parent"] == 1

    code, out, _ = run_cli(cli, "show", "2", "--json")
    summary = json.loads(out)
    assert summary["labels"] == ["bird", "cat", "dog"]
    assert sum(summary["counts"]["cat"].values()) == 6

    code, out, _ = run_cli(cli, "diff", "1", "2", "--json")
    diff = json.loads(out)
    assert diff["counts"] == {"added": 2, "removed": 0, "relabeled": 0}
    assert {r["label"] for r in diff["added"]} == {"bird"}

    code, out, _ = run_cli(cli, "diff", "1", "2")
    assert code == 0 and "+2 added" in out
    code, out, _ = run_cli(cli, "show")
    assert code == 0 and "Version 2" in out and "bird" in out
    code, out, _ = run_cli(cli, "versions")
    assert code == 0 and "Dataset versions" in out


def test_clear_errors(cli: CliRunner, tmp_path: Path) -> None:
    code, _, err = run_cli(cli, "show")
    assert code == 1 and "no dataset version yet" in err
    code, _, err = run_cli(cli, "show", "9")
    assert code == 1 and "no dataset version 9" in err
    code, _, err = run_cli(cli, "import-folder", str(tmp_path / "nope"))
    assert code == 1 and "does not exist" in err
    code, _, err = run_cli(cli, "diff", "x", "1")
    assert code == 1 and "not a version number" in err


def test_no_workspace_is_a_clear_error(tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(CliRunner(), "versions")
    assert code == 1 and "no workspace" in err and "a2m init" in err


def test_init_command(tmp_path: Path, monkeypatch: object) -> None:
    code, out, _ = run_cli(CliRunner(), "init", str(tmp_path / "new"))
    assert code == 0 and "Created" in out
    assert Workspace(tmp_path / "new").exists()
    code, out, _ = run_cli(CliRunner(), "init", str(tmp_path / "new"))
    assert code == 0 and "already" in out


def test_doctor_json(cli: CliRunner) -> None:
    code, out, _ = run_cli(cli, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out)}
    assert code == 1 and not checks["store"]["ok"] and "a2m init" in checks["store"]["fix"]
    run_cli(cli, "init")
    code, out, _ = run_cli(cli, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out)}
    assert checks["store"]["ok"] and checks["workspace"]["ok"]
    assert checks["torch"]["ok"]


def test_failed_commands_share_one_style(tmp_path: Path) -> None:
    """Every failure prints `error: ...` (and `hint: ...` when there is a fix), no traceback;
    exit status 1 when the command could not be done, 2 when the command line is wrong."""
    import os
    import subprocess
    import sys

    from annotate2model.workspace import init_workspace

    ws, _ = init_workspace(tmp_path / "ws")
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    env.update(A2M_HOME=str(ws.root), COLUMNS="300")

    def a2m(*args: str) -> tuple[int, list[str]]:
        proc = subprocess.run(
            [sys.executable, "-m", "annotate2model", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
        return proc.returncode, proc.stderr.splitlines()

    assert a2m("show", "9") == (
        1,
        ["error: there is no dataset version 9.", "hint: `a2m versions` lists them."],
    )
    code, lines = a2m("import-folder", str(tmp_path / "nope"))
    assert code == 1 and lines == [f"error: {tmp_path / 'nope'} does not exist."]
    code, lines = a2m("import-folder", str(tmp_path), "--splits", "sideways")
    assert code == 2 and len(lines) == 2
    assert lines[0].startswith("error: invalid value for '--splits'") and "sideways" in lines[0]
    assert lines[1].startswith("hint: `") and "import-folder --help` lists" in lines[1]
    code, lines = a2m("import-folder")
    assert code == 2 and lines[0].startswith("error: missing argument") and "hint:" in lines[1]
    code, lines = a2m("versions", "--no-such-flag")
    assert (code, lines[0]) == (2, "error: no such option: --no-such-flag")
