"""Rich rendering shared by all commands: console, tables, JSON output, progress bars."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import textwrap
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

# The one `--json` flag of every listing: machine-readable output on stdout, nothing else on it.
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print JSON (on stdout, nothing else) instead of text.")
]
# `a2m flag` and `a2m loop`: send again what a person confirmed.
RecheckConfirmedFlag = Annotated[
    bool,
    typer.Option(
        "--recheck-confirmed",
        help="Also flag tasks whose label a person confirmed after a flag from a run on the "
        "same features (kept back by default).",
    ),
]


# A `code span`, or an `a2m ...` command written without backticks (up to a comma, semicolon or
# parenthesis): each stays on one line when a message is wrapped.
CODE_SPAN = re.compile(r"`[^`\n]*`")
COMMAND = re.compile(r"\ba2m [^,;()`\n]*[^,;()`\s]")


def wrap_words(
    text: str, width: int | None, first: int | None = None, keep: re.Pattern[str] | None = None
) -> list[str]:
    """`text` in lines of at most `width` characters (textwrap's, broken only at spaces): a path
    or a URL is never split (one longer than the line gets a line of its own, whole, and the
    terminal folds it without a line break, so it still copies whole), nor is a `code span` or
    what `keep` matches. Its own line breaks stay. `first`: the first line's width, when a label
    takes part of it. `width` None: each paragraph on one line, as logs and pipes want it."""
    if width is None:
        return text.split("\n")
    # Spaces inside what stays whole stand in as NUL while textwrap splits at the others.
    for pattern in (CODE_SPAN, keep):
        if pattern is not None:
            text = pattern.sub(lambda m: m.group().replace(" ", "\0"), text)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        # The first line's shorter room is a placeholder indent, taken off again below.
        lead = "\1" * (width - first) if first is not None and not lines and first < width else ""
        wrapped = textwrap.wrap(
            paragraph,
            width,
            initial_indent=lead,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [""]
        wrapped[0] = wrapped[0].removeprefix(lead)
        if lead and first is not None and len(wrapped[0]) > first:
            # A path too long for what the label leaves goes whole to the next line.
            wrapped.insert(0, "")
        lines += wrapped
    return [line.replace("\0", " ") for line in lines]


def print_wrapped(
    target: Console,
    lead: Text,
    text: str,
    indent: int | None = None,
    keep: re.Pattern[str] | None = None,
) -> None:
    """`lead` (a label such as "error:") then `text`, wrapped at the terminal's width with the
    lines after the first indented under the text; on anything but a terminal, unwrapped."""
    indent = len(lead.plain) + 1 if indent is None else indent
    width = max(20, target.width - indent) if target.is_terminal else None
    first = max(10, target.width - len(lead.plain) - 1) if target.is_terminal else None
    for i, line in enumerate(wrap_words(text, width, first, keep)):
        head = Text.assemble(lead, " ") if i == 0 else Text(" " * indent)
        target.print(head + Text(line), highlight=False, soft_wrap=True)


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> None:
    """Machine-readable output on stdout, nothing else on it."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def listing(title: str | None = None, **options: Any) -> Table:
    """A listing's table: a rule under the header and two spaces between columns, so that a
    table of short cells reads whole at 80 columns (give such cells `no_wrap=True`)."""
    return Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, **options)


# Characters of an image's SHA-256 shown beside its name (--json has the whole hash).
HASH_SHOWN = 10


def task_url(labelstudio_url: str, project: int, task: int | str) -> str:
    """A task's page in Label Studio's Data Manager (the task opened beside the list)."""
    return f"{labelstudio_url}/projects/{project}/data?task={task}"


def image_cell(
    sha: str, name: str | None, tasks: Sequence[tuple[int, int]], labelstudio_url: str | None
) -> str:
    """How a person finds an image again: `task 17 (x.png)`, `x.png`, else the short hash.

    `tasks`: (project, task id) pairs, the first one shown. It is a terminal link to the task's
    page when the workspace knows Label Studio's address.
    """
    if not tasks:
        return escape(name) if name else sha[:HASH_SHOWN]
    project, task = tasks[0]
    handle = f"task {task}"
    if labelstudio_url:
        handle = f"[link={task_url(labelstudio_url, project, task)}]{handle}[/link]"
    if len(tasks) > 1:
        handle += f" (+{len(tasks) - 1} more)"
    return f"{handle} ({escape(name)})" if name else handle


def print_task_links(projects: Iterable[int], labelstudio_url: str | None) -> None:
    """Under a table of images: where their tasks open in Label Studio (one line per project)."""
    for project in sorted(set(projects)) if labelstudio_url else []:
        assert labelstudio_url is not None
        console.print(
            f"Tasks open in Label Studio at {task_url(labelstudio_url, project, 'ID')}",
            highlight=False,
            soft_wrap=True,
        )


def when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


def score(value: Any) -> str:
    """An accuracy, F1 or loss as a table cell: three decimals, "-" when there is none."""
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


class RichProgress:
    """The CLI's implementation of annotate2model.progress.Progress (drawn on stderr).

    On a terminal, a live bar per stage whose counts never shrink to an ellipsis (the status text
    wraps instead, at 80 columns too). Anywhere else (a pipe, a log file, CI) nothing is redrawn:
    one plain line per finished stage, and warnings as they come.
    """

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or err_console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        # Without a terminal: [description, total, completed, status, start time] of the stage.
        self._plain: list[Any] | None = None

    def begin(self, description: str, total: float | None = None) -> None:
        self.end()
        if not self._console.is_terminal:
            self._plain = [description, total, 0.0, "", time.perf_counter()]
            return
        narrow = self._console.width < 100

        def fixed() -> Column:
            return Column(no_wrap=True)

        columns: list[Any] = [
            SpinnerColumn(),
            TextColumn("[bold]{task.description}", table_column=fixed()),
        ]
        if total is not None:
            columns += [
                BarColumn(bar_width=12 if narrow else 40),
                MofNCompleteColumn(table_column=fixed()),
                TimeElapsedColumn(table_column=fixed()),
            ]
            if not narrow:
                columns.append(TimeRemainingColumn(table_column=fixed()))
        else:
            columns += [TimeElapsedColumn(table_column=fixed())]
        columns.append(TextColumn("{task.fields[status]}"))
        self._progress = Progress(*columns, console=self._console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, status="")

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        if self._plain is not None:
            self._plain[2] += amount
            if status is not None:
                self._plain[3] = status
            return
        if self._progress is None or self._task is None:
            return
        if status is None:
            self._progress.advance(self._task, amount)
        else:
            self._progress.update(self._task, advance=amount, status=status)

    def end(self) -> None:
        if self._plain is not None:
            description, total, done, status, started = self._plain
            self._plain = None
            count = f"{done:g}/{total:g} " if total is not None else ""
            line = f"{description}: {count}in {time.perf_counter() - started:.1f} s"
            self._console.print(escape(line + (f", {status}" if status else "")), highlight=False)
        if self._progress is not None:
            self._progress.stop()
        self._progress = None
        self._task = None

    def note(self, message: str) -> None:
        target = self._progress.console if self._progress is not None else self._console
        target.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)
