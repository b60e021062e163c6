"""Which module defines each `a2m` command, so that a command line imports only what it names.

`a2m sync` has no use for torch, Pillow or the training code, and should not wait for them to
load; `a2m --help`, which lists every command, imports every module. tests/test_startup.py checks
this table against the commands the modules define, and what a no-change sync loads.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import Any

import typer.main
from typer.core import TyperGroup

# Command name -> its module under annotate2model.cli, in the order `a2m --help` lists them.
COMMANDS: dict[str, str] = {
    "init": "workspace",
    "doctor": "workspace",
    "store": "storage",
    "import-folder": "data",
    "versions": "data",
    "show": "data",
    "diff": "data",
    "train": "training",
    "runs": "training",
    "evaluate": "training",
    "predict": "training",
    "ensemble": "training",
    "compare": "judging",
    "curve": "judging",
    "report": "report",
    "connect": "studio",
    "collect": "studio",
    "sync": "studio",
    "flag": "review",
    "unflag": "review",
    "flags": "review",
    "label-next": "review",
    "loop": "loop",
    "studio": "studio",
    "demo": "demo",
    "serve": "serve",
    "connect-backend": "serve",
    "export": "serve",
}


class _LazyCommands(MutableMapping[str, Any]):
    """Name -> click command; a name of COMMANDS loads its module on first access only."""

    def __init__(self, eager: MutableMapping[str, Any]) -> None:
        self._loaded: dict[str, Any] = dict(eager)

    def _load(self, module: str) -> None:
        app = importlib.import_module(f"annotate2model.cli.{module}").app
        for name, command in typer.main.get_group(app).commands.items():
            self._loaded.setdefault(name, command)

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded and name in COMMANDS:
            self._load(COMMANDS[name])
        return self._loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (name for name in self._loaded if name not in COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS) + sum(1 for name in self._loaded if name not in COMMANDS)


class LazyGroup(TyperGroup):
    """The root group (`typer.Typer(cls=LazyGroup)`): commands come from COMMANDS on demand."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _LazyCommands(self.commands)
