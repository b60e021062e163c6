"""`a2m report`: one self-contained HTML file (and its PNG plots) for a run or a comparison.

Reads the ledger and the images; imports no torch (a comparison may load it for runs whose
predictions on the common test images are not in the ledger yet).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from annotate2model.cli.context import TrackOption, state
from annotate2model.cli.render import JsonFlag, RichProgress, console, print_json

if TYPE_CHECKING:
    from annotate2model.judging.records import Comparison, LearningCurve
    from annotate2model.judging.report import ReportFiles
    from annotate2model.store import Store

app = typer.Typer()


@app.command("report")
def report_cmd(
    ctx: typer.Context,
    run: Annotated[
        str | None, typer.Argument(help="Run id (leave out with --compare).", show_default=False)
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Report a comparison of runs on common test images instead of one run.",
        ),
    ] = False,
    versions: Annotated[
        str | None,
        typer.Option(help="With --compare: versions (the latest succeeded run of each): 3,4."),
    ] = None,
    runs: Annotated[
        str | None, typer.Option(help="With --compare: exactly these runs: 12,15.")
    ] = None,
    test_of: Annotated[
        str | None,
        typer.Option(
            "--test-of",
            help="With --compare: judge every run on this version's test split (default: the "
            "test images all compared versions share).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="The HTML file to write (default: report.html in the run's folder, or under "
            ".a2m/reports/ for a comparison); the PNG plots go beside it.",
            show_default=False,
        ),
    ] = None,
    track: TrackOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Write one HTML file that opens offline: configuration, loss and accuracy per epoch,
    confusion matrix, per-class table and the misclassified images, worst first; or, with
    --compare, the comparison table, intervals, paired tests, plots and the learning curve.

    Example: [bold]a2m report 3[/]   or   [bold]a2m report --compare --versions 3,4[/]
    """
    if compare and run is not None:
        raise typer.BadParameter("give a RUN or --compare, not both.")
    if not compare and run is None:
        raise typer.BadParameter("give a RUN to report on, or --compare.")
    if not compare and (versions or runs or test_of):
        raise typer.BadParameter("--versions, --runs and --test-of go with --compare.")
    if versions is not None and runs is not None:
        raise typer.BadParameter("give --versions or --runs, not both.")
    store = state(ctx).store()
    if run is not None:
        from annotate2model.judging.report import run_report

        files = run_report(store, run, out=out)
        judged = [_run_id(store, run)]
        folder = "report"
    else:
        files, judged = _compare_report(store, versions, runs, test_of, out)
        folder = f"reports/{files.html.parent.name}"
    _mirror_report(store, judged, files, folder)
    if as_json:
        print_json({"html": files.html, "plots": files.plots})
        return
    console.print(f"Report: {files.html}", highlight=False, soft_wrap=True)
    for path in files.plots.values():
        console.print(f"Plot: {path}", highlight=False, soft_wrap=True)


def _run_id(store: Store, run: str) -> int:
    from annotate2model.store import runs as store_runs

    with store.read() as session:
        return store_runs.get_run(session, run).id


def _mirror_report(store: Store, runs: list[int], files: ReportFiles, folder: str) -> None:
    """The page and its plots attached to the MLflow runs they judge, when the workspace tracks
    runs there (tracking.py); a warning if that fails."""
    from annotate2model import tracking

    tracking.mirror(
        store.settings,
        "the report",
        RichProgress().note,
        lambda uri, experiment: tracking.log_files(
            uri, experiment, runs, [files.html, *files.plots.values()], folder
        ),
    )


def _compare_report(
    store: Store, versions: str | None, runs: str | None, test_of: str | None, out: Path | None
) -> tuple[ReportFiles, list[int]]:
    from annotate2model.judging.compare import compare, parse_ids
    from annotate2model.judging.report import compare_report
    from annotate2model.training.context import RunContext

    context = RunContext.from_store(store)
    comparison = compare(
        store,
        versions=parse_ids(versions, "version"),
        runs=parse_ids(runs, "run"),
        test_of=test_of,
        context=context,
        progress=RichProgress(),
    )
    if out is None:
        out = store.settings.workspace.reports_dir / comparison.name / "report.html"
    files = compare_report(comparison, _curve(store, comparison), out, context)
    return files, [row.run for row in comparison.rows]


def _curve(store: Store, comparison: Comparison) -> LearningCurve | None:
    """The newest learning curve of the newest compared version that has one."""
    from annotate2model.judging.curve import latest_curve

    for version in sorted({r.version for r in comparison.rows}, reverse=True):
        curve = latest_curve(store, version)
        if curve is not None:
            return curve
    return None
