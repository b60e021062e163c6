"""`a2m demo`: the whole loop on generated street signs, from an empty folder, offline."""

from __future__ import annotations

import shlex
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from annotate2model.cli.context import state
from annotate2model.cli.render import JsonFlag, RichProgress, console, err_console, print_json

if TYPE_CHECKING:
    from annotate2model.judging.records import Comparison

app = typer.Typer()


# The demo's own lines fit this many columns (fewer on a narrower terminal); a word longer than
# that (a path, a URL) stays whole on a line of its own rather than being cut.
WIDTH = 80


@app.command()
def demo(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(
            help="A new folder for the demo's workspace and images (default: ~/a2m-demo).",
            show_default=False,
        ),
    ] = None,
    small: Annotated[
        bool,
        typer.Option("--small", help="200 images instead of 400: a quicker run (CI runs it)."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the whole loop on generated street signs: Label Studio, two dataset versions, two
    trained runs, their comparison, and the doubtful labels flagged back into Label Studio.

    Needs no network: without ImageNet weights, probes learn on a random network's features.

    Label Studio keeps running for a look at the flagged tasks; `a2m studio down` stops it.

    Example: [bold]a2m demo ~/a2m-demo --small[/]
    """
    from annotate2model.demo.invoke import a2m_command
    from annotate2model.demo.tour import default_folder, run_demo

    root = (path if path is not None else default_folder()).expanduser().resolve()
    a2m = a2m_command()

    def step(message: str) -> None:
        if not as_json:
            say(message, first="> ", rest="  ")

    def waiting(message: str) -> None:
        # Only without a terminal: on one, the live line below says the same.
        if not as_json and not err_console.is_terminal:
            say(message, first="  ", rest="  ")

    if not as_json:
        say(
            f"The demo's workspace: {root}"
            + ("" if path is not None else f" ({a2m} demo DIR puts it elsewhere)")
            + "."
        )
    outcome = run_demo(
        root,
        state(ctx).env,
        small=small,
        on_step=step,
        on_wait=waiting,
        progress=None if as_json else RichProgress(),
    )
    s = outcome.state
    if as_json:
        print_json(
            {
                **asdict(s),
                "root": str(outcome.root),
                "again": outcome.again,
                "url": outcome.url,
                "admin": outcome.admin,
                "project": outcome.project,
                "offline": outcome.offline_reason,
                "wrong_labels": [str(w.path.relative_to(outcome.root)) for w in outcome.wrong],
                "caught_labels": [str(w.path.relative_to(outcome.root)) for w in outcome.caught],
                "comparison": _comparison_json(outcome.comparison),
                "seconds": round(outcome.seconds, 1),
            }
        )
        return
    if outcome.again:
        say(
            f"The demo already ran in {outcome.root}: versions {_ids(s.versions)}, runs "
            f"{_ids(s.runs)}; its flags caught {s.caught} of the {s.wrong} deliberately wrong "
            "labels."
        )
    elif outcome.comparison is not None:
        from annotate2model.cli.judging import _print_comparison

        console.print()
        _print_comparison(outcome.comparison)
    console.print()
    if s.report:
        say(f"Report: {s.report}")
    say(f"Label Studio: {outcome.url} (log in as {outcome.admin}, password {outcome.password}).")
    if s.tab:
        say(
            f"The {s.flagged} flagged task(s) wait in the tab {s.tab!r} of project "
            f"{outcome.project}: {s.tab_url}"
        )
    if not outcome.again:
        say(
            f"The flags caught {len(outcome.caught)} of the {len(outcome.wrong)} deliberately "
            "wrong labels."
        )
        missed = [w for w in outcome.wrong if w not in outcome.caught]
        if missed:
            say("Not flagged:", first="  ")
            for w in missed:
                say(str(w.path.relative_to(outcome.root)), first="    ")
        say(f"Done in {outcome.seconds / 60:.1f} min.")
    console.print()
    for line in next_lines(a2m, outcome.root, again=outcome.again):
        say(line)


def next_lines(a2m: str, root: Path, *, again: bool, width: int = WIDTH) -> list[str]:
    """What to run after the demo, one whole command a line, each as a shell runs it: its `#`
    comment after it when every such line fits `width`, else on a line of its own above it."""
    here = shlex.quote(str(root))
    commands = [
        (f"cd {here}", ""),
        (f"{a2m} runs", "every run: version, accuracy, flag precision"),
        (f"{a2m} flags", "the flagged images, why, and what became of them"),
        (f"{a2m} loop", "after relabeling in Label Studio: the next turn"),
        (f"{a2m} studio down", "stops Label Studio"),
    ]
    column = max(len(c) for c, _ in commands[1:]) + 4
    beside = all(column + 2 + len(comment) <= width for _, comment in commands)
    lines = ["Next (Label Studio keeps running for a look at the flagged tasks):"]
    for command, comment in commands:
        if comment and beside:
            lines.append(f"{'  ' + command:<{column}}# {comment}")
            continue
        if comment:
            lines.append(f"  # {comment}")
        lines.append(f"  {command}")
    if again:
        lines += [
            "A fresh demo needs another folder:",
            f"  {a2m} demo {shlex.quote(str(root) + '-2')}",
        ]
    return lines


def say(text: str, *, first: str = "", rest: str = "") -> None:
    """Print `text` wrapped to WIDTH columns (or the terminal's, when narrower) at spaces only:
    a path, a URL or a number is never cut in two."""
    width = min(console.width, WIDTH)
    console.print(
        fill(text, width, first=first, rest=rest), markup=False, highlight=False, soft_wrap=True
    )


def fill(text: str, width: int, *, first: str = "", rest: str = "") -> str:
    return textwrap.fill(
        text,
        width,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _comparison_json(comparison: Comparison | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    return {
        "test_set": comparison.test_set.description,
        "rows": [
            {
                "run": r.run,
                "version": r.version,
                "accuracy": r.accuracy,
                "low": r.interval.low,
                "high": r.interval.high,
                "common_images": len(comparison.test_set.images),
            }
            for r in comparison.rows
        ],
        "pairs": [p.sentence for p in comparison.pairs],
    }


def _ids(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers) or "none"
