"""Workspace commands: `init`, `doctor`."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from annotate2model.cli.context import state
from annotate2model.cli.render import JsonFlag, console, listing, print_json, to_jsonable
from annotate2model.doctor import failed, run_checks
from annotate2model.errors import A2MError
from annotate2model.settings import Settings, load_settings
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
    """Check what this machine and workspace can do, each problem with the command that fixes it:
    Python, torch and its devices, pretrained weights (cached, downloadable or offline), the
    workspace and its schema, Label Studio (contacted, token checked), free disk. Exits 1 when a
    required check fails.

    Example: [bold]a2m doctor --json[/]
    """
    st = state(ctx)
    problem: A2MError | None = None
    try:
        settings: Settings | None = st.settings()
    except A2MError as exc:
        settings, problem = None, exc
    checks = run_checks(settings, workspace_problem=problem)
    if as_json:
        print_json([{**to_jsonable(check), "ok": check.ok} for check in checks])
    else:
        table = listing(f"a2m doctor ({platform.node()})")
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("detail", overflow="fold")
        for check in checks:
            detail = escape(check.detail)
            if check.fix:
                detail += f"\n[bold]fix:[/] {escape(check.fix)}"
            table.add_row(check.name, _STATUS[check.status], detail)
        console.print(table)
    if failed(checks):
        raise typer.Exit(1)


_STATUS = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}
