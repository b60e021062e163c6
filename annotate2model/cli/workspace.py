"""Workspace commands: `init`, `doctor`."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from annotate2model.cli.context import state
from annotate2model.cli.render import JsonFlag, console, print_json
from annotate2model.doctor import run_checks
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.workspace import init_workspace

app = typer.Typer()


@app.command()
def init(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Folder to make a workspace of (default: --workspace, A2M_HOME, else here)."
        ),
    ] = None,
) -> None:
    """Create a workspace (a2m.toml and .a2m/) and its store; harmless on an existing one.

    Example: [bold]a2m init ~/birds[/]
    """
    st = state(ctx)
    home = st.env.get("A2M_HOME")
    root = path or st.workspace_flag or (Path(home) if home else Path.cwd())
    ws, created = init_workspace(root)
    settings = load_settings(ws, st.env)
    store = Store.open(settings)
    revision = store.current_revision()
    store.close()
    verb = "Created" if created else "Workspace already at"
    console.print(f"{verb} [bold]{ws.root}[/] (store schema {revision}).")
    if created:
        console.print("Next: [bold]a2m import-folder DIR[/] or [bold]a2m studio up[/].")


@app.command()
def doctor(
    ctx: typer.Context,
    as_json: JsonFlag = False,
) -> None:
    """Check the environment: Python, torch and its devices, the store, Label Studio, weights.

    Example: [bold]a2m doctor --json[/]
    """
    st = state(ctx)
    checks = run_checks(st.settings_or_none())
    if as_json:
        print_json(checks)
    else:
        table = Table(title=f"a2m doctor ({platform.node()})")
        table.add_column("check")
        table.add_column("ok")
        table.add_column("detail")
        for check in checks:
            table.add_row(check.name, "[green]yes[/]" if check.ok else "[red]no[/]", check.detail)
        console.print(table)
    if not all(c.ok for c in checks if c.required):
        raise typer.Exit(1)
