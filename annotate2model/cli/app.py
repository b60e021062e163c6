"""The `a2m` application: the root options, the command groups, and the error boundary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from annotate2model import __version__
from annotate2model.cli import data, demo, studio, training, workspace
from annotate2model.cli.context import state
from annotate2model.cli.render import err_console
from annotate2model.errors import A2MError

app = typer.Typer(
    name="a2m",
    help="annotate2model: Label Studio annotations in, versioned datasets and classifiers out.",
    no_args_is_help=True,
    # Locals would print secrets such as the Label Studio token.
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"annotate2model {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    workspace_path: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            help="Workspace folder (default: A2M_HOME, else the nearest a2m.toml upwards).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """annotate2model: sync labels from Label Studio, version datasets, train classifiers."""
    state(ctx).workspace_flag = workspace_path


app.add_typer(workspace.app)
app.add_typer(data.app)
app.add_typer(training.app)
app.add_typer(studio.app)
app.add_typer(demo.app)


def main() -> None:
    """Console entry point: user-fixable errors become one message and exit code 1."""
    try:
        app()
    except A2MError as exc:
        if os.environ.get("A2M_TRACEBACK"):
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        sys.exit(exc.exit_code)
