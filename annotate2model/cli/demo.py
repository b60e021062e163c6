"""`a2m demo`: the whole loop on generated street signs, from an empty folder, offline."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from annotate2model.cli.context import state
from annotate2model.cli.render import JsonFlag, RichProgress, console, print_json

if TYPE_CHECKING:
    from annotate2model.judging.records import Comparison

app = typer.Typer()


@app.command()
def demo(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="A new folder for the demo's workspace and images.")
    ] = Path("a2m-demo"),
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

    Example: [bold]a2m demo ./a2m-demo --small[/]
    """
    from annotate2model.demo.tour import run_demo

    def step(message: str) -> None:
        if not as_json:
            console.print(f"[bold cyan]>[/] {escape(message)}", highlight=False)

    outcome = run_demo(
        path.expanduser().resolve(),
        state(ctx).env,
        small=small,
        on_step=step,
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
    root = escape(str(outcome.root))
    if outcome.again:
        console.print(
            f"The demo already ran in {root}: versions {_ids(s.versions)}, runs {_ids(s.runs)}; "
            f"its flags caught {s.caught} of the {s.wrong} deliberately wrong labels.",
            highlight=False,
        )
    elif outcome.comparison is not None:
        from annotate2model.cli.judging import _print_comparison

        console.print()
        _print_comparison(outcome.comparison)
    console.print()
    if s.report:
        console.print(f"Report: {escape(s.report)}", highlight=False, soft_wrap=True)
    console.print(
        f"Label Studio: [bold]{escape(outcome.url)}[/] (log in as [bold]{escape(outcome.admin)}"
        f"[/], password [bold]{escape(outcome.password)}[/]).",
        highlight=False,
        soft_wrap=True,
    )
    if s.tab:
        console.print(
            f"The {s.flagged} flagged task(s) wait in the tab [bold]{escape(s.tab)}[/] of project "
            f"{outcome.project}: {escape(s.tab_url)}",
            highlight=False,
            soft_wrap=True,
        )
    if not outcome.again:
        console.print(
            f"The flags caught [bold]{len(outcome.caught)} of the {len(outcome.wrong)}[/] "
            "deliberately wrong labels.",
            highlight=False,
        )
        missed = [w for w in outcome.wrong if w not in outcome.caught]
        if missed:
            names = ", ".join(escape(str(w.path.relative_to(outcome.root))) for w in missed)
            console.print(f"  Not flagged: {names}", highlight=False, soft_wrap=True)
        console.print(f"Done in {outcome.seconds / 60:.1f} min.")
    console.print(
        f"\nNext: [bold]cd {root}[/], then [bold]a2m runs[/], [bold]a2m flags[/]; relabel the "
        "flagged tasks in Label Studio and run [bold]a2m loop[/]; [bold]a2m studio down[/] stops "
        "the server."
        + (
            f" A fresh demo needs another folder: [bold]a2m demo {root}-2[/]."
            if outcome.again
            else ""
        ),
        highlight=False,
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
