"""What `a2m` loads: a command line imports the module of its command and what that needs, no more.

Start-up is most of what a user waits for in a quick command (a no-change `a2m sync` is a second
or less), so these tests run real `a2m` processes and look at `sys.modules` when they exit.
tests/labelstudio/test_ls_startup.py does the same for a no-change sync against a real server.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import typer.main

from annotate2model.cli.commands import COMMANDS
from annotate2model.store import Store
from annotate2model.workspace import Workspace

# Runs the CLI as the `a2m` script does; at exit (after the command) writes the loaded modules.
_LOADED = """\
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from annotate2model.cli.app import main
sys.argv = ["a2m", *sys.argv[2:]]
main()
"""

# Never needed outside training.
TRAINING = ("torch", "torchvision", "numpy", "safetensors", "annotate2model.training")


def run_a2m(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """(modules loaded by the end, the finished process) of `a2m args...` in a fresh process."""
    out = tmp_path / "modules.json"
    out.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED, str(out), *args],
        env={**clean, **(env or {})},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(out.read_text())), proc


def loaded_of(modules: set[str], packages: Iterable[str]) -> list[str]:
    """The modules of `packages` (a package or any module below it) that were loaded."""
    return sorted(m for m in modules for p in packages if m == p or m.startswith(p + "."))


def test_the_command_table_names_every_command_once() -> None:
    """COMMANDS (what the root group loads on demand) matches the commands each module defines."""
    defined: dict[str, str] = {}
    for module in sorted(set(COMMANDS.values())):
        app = importlib.import_module(f"annotate2model.cli.{module}").app
        for name in typer.main.get_group(app).commands:
            assert name not in defined, f"{name} is defined by {defined[name]} and {module}"
            defined[name] = module
    assert defined == COMMANDS


def test_version_loads_no_command_and_no_store(tmp_path: Path) -> None:
    modules, proc = run_a2m(tmp_path, "--version")
    assert proc.stdout.startswith("annotate2model ")
    commands = [f"annotate2model.cli.{m}" for m in set(COMMANDS.values())]
    assert loaded_of(modules, [*commands, "sqlalchemy", "httpx", "PIL", *TRAINING]) == []


def test_sync_help_loads_nothing_of_training_or_the_store(tmp_path: Path) -> None:
    """The Label Studio commands' module loads no store: `a2m sync` sends its first requests
    before SQLAlchemy loads (tests/labelstudio/test_ls_head_start.py)."""
    modules, proc = run_a2m(tmp_path, "sync", "--help")
    assert "--policy" in proc.stdout
    assert "annotate2model.cli.studio" in modules
    others = ["annotate2model.cli.training", "annotate2model.cli.data", "annotate2model.cli.demo"]
    store = ["sqlalchemy", "annotate2model.store.db", "annotate2model.store.models"]
    assert loaded_of(modules, [*others, *store, "PIL", "alembic", *TRAINING]) == []


def test_a_store_command_loads_no_label_studio_and_no_migrations(
    tmp_path: Path, workspace: Workspace, store: Store
) -> None:
    """On a store already at the current schema (the `store` fixture opened it)."""
    modules, proc = run_a2m(tmp_path, "versions", "--json", env={"A2M_HOME": str(workspace.root)})
    assert json.loads(proc.stdout) == []
    assert "sqlalchemy" in modules
    unused = ["annotate2model.labelstudio", "httpx", "PIL", "alembic", *TRAINING]
    assert loaded_of(modules, unused) == []
