"""Every page of `a2m ... --help` reads whole in an 80-column terminal (issue 25): no line wider
than the terminal, no description cut to "…", and `a2m train --help` in panels, not one table
of 150 lines."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from annotate2model.cli.app import app
from tests.conftest import run_cli


def _help_pages() -> list[list[str]]:
    """The argument lists of every command and sub-command, found from the app itself (so a new
    command or group is checked without being named here)."""
    root: Any = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="a2m")
    pages: list[list[str]] = [[]]
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        pages.append([name])
        if hasattr(cmd, "list_commands"):
            sub_ctx = typer.Context(cmd, info_name=name, parent=ctx)
            pages += [[name, sub] for sub in cmd.list_commands(sub_ctx)]
    return pages


PAGES = _help_pages()


def test_the_pages_include_groups_sub_commands() -> None:
    assert ["train"] in PAGES and ["studio", "up"] in PAGES and len(PAGES) > 25


@pytest.fixture
def at_80(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    return CliRunner()


@pytest.mark.parametrize("args", PAGES, ids=lambda args: " ".join(args) or "a2m")
def test_help_fits_80_columns(at_80: CliRunner, args: list[str]) -> None:
    code, out, err = run_cli(at_80, *args, "--help")
    assert code == 0, err
    assert "Usage:" in out
    shown = f"a2m {' '.join(args)} --help:\n{out}"
    assert "…" not in out, shown
    wide = [line for line in out.splitlines() if len(line) > 80]
    assert not wide, shown


def test_train_help_is_in_panels(at_80: CliRunner) -> None:
    _, out, _ = run_cli(at_80, "train", "--help")
    panels = [line for line in out.splitlines() if line.startswith("╭─ ")]
    assert len(panels) >= 4, out
    assert any("Fine-tuning" in p for p in panels)
    assert len(out.splitlines()) < 100, out
