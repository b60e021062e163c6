"""The `a2m` application: the root options, the command groups, and the error boundary."""

from __future__ import annotations

import atexit
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from annotate2model import __version__
from annotate2model.cli.commands import LazyGroup
from annotate2model.cli.context import skip_final_collection, state
from annotate2model.cli.render import err_console
from annotate2model.errors import USAGE_EXIT_CODE, A2MError

app = typer.Typer(
    name="a2m",
    help="annotate2model: Label Studio annotations in, versioned datasets and classifiers out.",
    no_args_is_help=True,
    # Locals would print secrets such as the Label Studio token.
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
    # Each command's module (cli/workspace, data, training, studio, demo) loads when named.
    cls=LazyGroup,
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


def _fail(message: str, hint: str | None, exit_code: int) -> NoReturn:
    """The one way a failed command ends: `error: ...`, maybe `hint: ...`, then the exit status."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[bold]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)
    sys.exit(exit_code)


def _sentence_case(message: str) -> str:
    """click says "No such option"; our messages start in lower case, as after "error:"."""
    return message[:1].lower() + message[1:] if message[1:2].islower() else message


def _click_exceptions() -> ModuleType:
    """The module of the click exceptions typer raises (typer >= 0.2x carries its own click)."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def main() -> None:
    """Console entry point; failures are reported by the rule in `annotate2model.errors`."""
    atexit.unregister(skip_final_collection)
    atexit.register(skip_final_collection)
    clicks = _click_exceptions()
    try:
        # standalone_mode=False: click hands usage errors to us instead of drawing its own panel.
        result = app(standalone_mode=False)
    except A2MError as exc:
        if os.environ.get("A2M_TRACEBACK"):
            raise
        _fail(exc.message, exc.hint, exc.exit_code)
    except getattr(clicks, "NoArgsIsHelpError", ()) as exc:
        # `a2m` (or a group) alone: the help is the answer; the exit status says nothing ran.
        exc.show()
        sys.exit(USAGE_EXIT_CODE)
    except clicks.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "a2m"
        hint = f"`{command} --help` lists the arguments and options."
        _fail(_sentence_case(exc.format_message()), hint, USAGE_EXIT_CODE)
    except clicks.ClickException as exc:
        _fail(_sentence_case(exc.format_message()), None, exc.exit_code)
    except typer.Abort:
        _fail("aborted.", None, 1)
    # A typer.Exit (or Ctrl-C, which typer turns into exit status 130) comes back as a number.
    sys.exit(result if isinstance(result, int) else 0)
