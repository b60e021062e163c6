"""The `a2m` application: the root options, the command groups, and the error boundary."""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
from typing import Annotated, Any, NoReturn

import typer
import typer.core
from rich.text import Text

from annotate2model import __version__
from annotate2model.cli.commands import COMMANDS, LazyGroup
from annotate2model.cli.context import (
    WITHOUT_WORKSPACE,
    WorkspaceOption,
    add_workspace_option,
    skip_final_collection,
)
from annotate2model.cli.render import err_console, print_wrapped
from annotate2model.errors import USAGE_EXIT_CODE, A2MError

# Printed after an unexpected failure, in place of the traceback.
TRACEBACK_HINT = "run with A2M_TRACEBACK=1 for the traceback"


class RootGroup(LazyGroup):
    """`a2m` itself: each command, loaded on demand, also takes -w after its name."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None and cmd_name not in WITHOUT_WORKSPACE:
            add_workspace_option(command)
        return command


app = typer.Typer(
    name="a2m",
    help="annotate2model: Label Studio annotations in, versioned datasets and classifiers out.",
    no_args_is_help=True,
    # Locals would print secrets such as the Label Studio token.
    pretty_exceptions_show_locals=False,
    add_completion=True,
    rich_markup_mode="rich",
    # Each command's module (cli/workspace, data, training, studio, demo) loads when named.
    cls=RootGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"annotate2model {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    workspace: WorkspaceOption = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """annotate2model: sync labels from Label Studio, version datasets, train classifiers."""
    # WorkspaceOption's callback has kept -w; each command also takes it after its name.


def _fail(message: str, hint: str | None, exit_code: int) -> NoReturn:
    """The one way a failed command ends: `error: ...`, maybe `hint: ...`, then the exit status."""
    # Under torchrun every rank may fail alike: the others name themselves, rank 0 gives the hint.
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    label = "error:" if rank == "0" else f"error (rank {rank}):"
    # Wrapped between words at the terminal's width, never inside a path or a `command`.
    print_wrapped(err_console, Text(label, style="bold red"), message)
    if hint and rank == "0":
        print_wrapped(err_console, Text("hint:", style="bold"), runnable(hint))
    sys.exit(exit_code)


# `a2m` where a hint names a command: at the start of a code span or the text, or after a space.
_A2M = re.compile(r"(?:(?<=`)|(?<=^)|(?<=\s))a2m(?= )")


def runnable(hint: str) -> str:
    """`hint` with each `a2m ...` command as it runs from this shell: the full path of this
    install's script when PATH finds no `a2m` or another one (a virtual environment not
    activated), so that a command copied from a hint runs as printed."""
    from annotate2model.demo.invoke import a2m_command

    command = a2m_command()
    return hint if command == "a2m" else _A2M.sub(lambda _: command, hint)


def _sentence_case(message: str) -> str:
    """click says "No such option"; our messages start in lower case, as after "error:"."""
    return message[:1].lower() + message[1:] if message[1:2].islower() else message


def _command_name(args: list[str]) -> str:
    """`a2m versions` for messages: the first argument that names a command."""
    name = next((a for a in args if a in COMMANDS), None)
    return f"a2m {name}" if name else "a2m"


def _refused(exc: typer.TyperException) -> NoReturn:
    """An error of typer's own: a command line it cannot parse (exit 2, with a hint), or other."""
    message = _sentence_case(exc.format_message())
    if exc.exit_code != USAGE_EXIT_CODE:
        _fail(message, None, exc.exit_code)
    # typer exports neither UsageError nor NoArgsIsHelpError (its click is private): it tells the
    # latter by its name too (rich_utils.rich_format_error).
    if type(exc).__name__ == "NoArgsIsHelpError":
        # `a2m` (or a group) alone: typer has printed the help, the answer; the exit status says
        # nothing ran.
        if message.strip():
            typer.echo(exc.format_message(), err=True)
        sys.exit(USAGE_EXIT_CODE)
    # Usage errors carry the context, but not all (an option missing its value): name the command.
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else _command_name(sys.argv[1:])
    _fail(message, f"`{command} --help` lists the arguments and options.", USAGE_EXIT_CODE)


def _unexpected(exc: BaseException) -> NoReturn:
    """A failure nobody foresaw (a bug, a full disk, a locked database): one line, no traceback."""
    # SQLAlchemy and some OSErrors carry several lines (the SQL, a link): the first says it.
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    what = type(exc).__name__ + (f": {detail}" if detail else "")
    _fail(f"{_command_name(sys.argv[1:])} failed: {what} ({TRACEBACK_HINT}).", None, 1)


def _log_to_stderr(debug: bool) -> None:
    """The package's log lines go to stderr: warnings always (a fast path that fell back says
    so), and with A2M_DEBUG=1 every debug line too (why each fallback was taken)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("a2m %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("annotate2model")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


def main() -> None:
    """Console entry point; failures are reported by the rule in `annotate2model.errors`."""
    atexit.unregister(skip_final_collection)
    atexit.register(skip_final_collection)
    _log_to_stderr(debug=bool(os.environ.get("A2M_DEBUG")))
    traceback_asked = bool(os.environ.get("A2M_TRACEBACK"))
    try:
        # standalone_mode=False: click hands usage errors to us instead of drawing its own panel.
        result = app(standalone_mode=False)
    except A2MError as exc:
        if traceback_asked:
            raise
        _fail(exc.message, exc.hint, exc.exit_code)
    except typer.TyperException as exc:
        _refused(exc)
    except typer.Abort:
        _fail("aborted.", None, 1)
    except KeyboardInterrupt:
        # Ctrl-C outside the command itself (typer turns one inside it into 130, below).
        _interrupted()
    except Exception as exc:
        if traceback_asked:
            raise
        _unexpected(exc)
    if result == INTERRUPTED_EXIT_CODE:
        _interrupted()
    # A typer.Exit comes back as a number.
    sys.exit(result if isinstance(result, int) else 0)


# Exit status after Ctrl-C: 128 + SIGINT, typer's and the shells' convention.
INTERRUPTED_EXIT_CODE = 130


def _interrupted() -> NoReturn:
    err_console.print("interrupted.", highlight=False)
    sys.exit(INTERRUPTED_EXIT_CODE)
