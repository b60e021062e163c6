"""`a2m compare` before there is anything to compare (issue 25): the hint leads to the step that
works first, never to `a2m train --version N` for a version that does not exist."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import make_image_folder, run_cli


def test_compare_in_an_empty_workspace_hints_the_first_step(cli: CliRunner) -> None:
    for args in (["compare", "--versions", "1,2"], ["compare"]):
        code, out, err = run_cli(cli, *args)
        assert code != 0 and out == ""
        assert "no dataset version yet" in err, err
        assert "a2m import-folder DIR" in err and "a2m sync" in err, err
        assert "--version 1" not in err, err


def test_compare_of_a_missing_version_names_the_existing_ones(
    cli: CliRunner, tmp_path: Path
) -> None:
    folder = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    code, _, err = run_cli(cli, "import-folder", str(folder))
    assert code == 0, err
    code, _, err = run_cli(cli, "compare", "--versions", "1,2")
    assert code != 0
    assert "there is no dataset version 2 (versions: 1)" in err, err
    assert "a2m train --version 2" not in err, err
    # Version 1 exists but has no run: training on it is the step that works.
    code, _, err = run_cli(cli, "compare", "--versions", "1")
    assert code != 0
    assert "a2m train --version 1" in err, err
