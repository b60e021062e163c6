"""Workspace commands: `init`, `doctor`."""

from __future__ import annotations

import platform
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.text import Text

from annotate2model.cli.context import state
from annotate2model.cli.render import (
    COMMAND,
    JsonFlag,
    console,
    err_console,
    print_json,
    print_wrapped,
    to_jsonable,
)
from annotate2model.doctor import Check, failed, run_checks
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
    # Each check shows as soon as it is known, and a spinner says what the doctor waits on (torch
    # and the network take seconds); with --json the spinner is on stderr, on a terminal only.
    spinner_on = err_console if as_json else console
    if not as_json:
        console.print(f"[bold]a2m doctor[/] ({escape(platform.node())})", highlight=False)
    with ExitStack() as stack:
        spinner = (
            stack.enter_context(spinner_on.status("checking", spinner="dots"))
            if spinner_on.is_terminal
            else None
        )

        def started(what: str) -> None:
            if spinner is not None:
                spinner.update(f"{what}...")

        checks = run_checks(
            settings,
            workspace_problem=problem,
            started=started,
            done=None if as_json else _print_check,
        )
    if as_json:
        print_json([{**to_jsonable(check), "ok": check.ok} for check in checks])
    if failed(checks):
        raise typer.Exit(1)


def _print_check(check: Check) -> None:
    """`ok   name: detail`, then `     fix: ...` for a problem: wrapped between words at the
    terminal's width, so that a path (the weights' file, the workspace) is never split."""
    status, style = _STATUS[check.status]
    lead = Text.assemble((status.ljust(_INDENT), style), (f"{check.name}:", "bold"))
    print_wrapped(console, lead, check.detail, indent=_INDENT)
    if check.fix:
        print_wrapped(
            console, Text.assemble(" " * _INDENT, ("fix:", "bold")), check.fix, keep=COMMAND
        )


# Columns before a check's detail: its status, padded ("warn ").
_INDENT = 5
_STATUS = {"ok": ("ok", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "bold red")}
