"""The README documents every command, and every command's help carries an example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main

from annotate2model.cli.app import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def all_commands() -> dict[str, Any]:
    """Command name -> click command, sub-commands as "group name" (e.g. "studio up")."""
    root: Any = typer.main.get_command(app)
    found: dict[str, Any] = {}
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):
            for sub_name, sub in cmd.commands.items():
                found[f"{name} {sub_name}"] = sub
        else:
            found[name] = cmd
    return found


def test_every_command_is_in_the_readme() -> None:
    missing = [name for name in all_commands() if f"a2m {name}" not in README]
    assert missing == []


def test_every_command_has_an_example() -> None:
    missing = [name for name, cmd in all_commands().items() if "Example:" not in (cmd.help or "")]
    assert missing == []


def test_readme_has_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "bash tests/run.sh" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "tests/run.sh" in ci
