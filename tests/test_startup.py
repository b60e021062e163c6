"""The root command group loads each command's module on demand (cli/commands.py): its table
names every command once, as the command modules define them."""

from __future__ import annotations

import importlib

import typer.main

from annotate2model.cli.commands import COMMANDS


def test_the_command_table_names_every_command_once() -> None:
    """COMMANDS (what the root group loads on demand) matches the commands each module defines."""
    defined: dict[str, str] = {}
    for module in sorted(set(COMMANDS.values())):
        app = importlib.import_module(f"annotate2model.cli.{module}").app
        for name in typer.main.get_group(app).commands:
            assert name not in defined, f"{name} is defined by {defined[name]} and {module}"
            defined[name] = module
    assert defined == COMMANDS
