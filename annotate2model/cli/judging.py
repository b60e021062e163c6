"""Judging commands: `compare` (runs of several versions on the same unseen images) and `curve`.

`compare` reads predictions the ledger already holds, so it usually imports no torch; `curve`
trains, and imports torch only once it starts.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from annotate2model.cli.context import TrackOption, state
from annotate2model.cli.render import (
    JsonFlag,
    RichProgress,
    console,
    err_console,
    listing,
    print_json,
    score,
    to_jsonable,
)
from annotate2model.errors import NotFoundError
from annotate2model.judging.records import Comparison, LearningCurve
from annotate2model.store import Store

app = typer.Typer()

# How many changed images `compare` lists per pair (all of them are in --json).
SHOWN_CHANGES = 5


@app.command("compare")
def compare_cmd(
    ctx: typer.Context,
    versions: Annotated[
        str | None,
        typer.Option(help="Versions to compare (the latest succeeded run of each): 3,4,5."),
    ] = None,
    runs: Annotated[str | None, typer.Option(help="Exactly these runs: 12,15.")] = None,
    test_of: Annotated[
        str | None,
        typer.Option(
            "--test-of",
            help="Judge every run on this version's test split (default: every image of the "
            "newest version that no compared run trained on or chose its epoch on).",
        ),
    ] = None,
    shared: Annotated[
        bool,
        typer.Option(
            "--shared",
            help="Judge only on the test images all compared versions share (fewer images).",
        ),
    ] = False,
    plots: Annotated[
        bool, typer.Option("--plots/--no-plots", help="Write accuracy-vs-images/time PNGs.")
    ] = True,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the table as CSV.")] = False,
    track: TrackOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare runs of dataset versions on the SAME images: accuracy with a 95% (Wilson)
    interval, macro F1, size and time, and whether the difference is real (McNemar).

    Without options: the latest succeeded run of every version that has one, judged on every
    image of the newest version that none of them trained on or chose its epoch on.

    Example: [bold]a2m compare --versions 3,4[/]
    """
    from annotate2model.judging.compare import compare, parse_ids

    if versions is not None and runs is not None:
        raise typer.BadParameter("give --versions or --runs, not both.")
    if as_csv and as_json:
        raise typer.BadParameter("give --csv or --json, not both.")
    if shared and test_of is not None:
        raise typer.BadParameter("give --test-of or --shared, not both.")
    store = state(ctx).store()
    numbers = parse_ids(versions, "version")
    if runs is None:
        _check_versions_exist(store, numbers)
    result = compare(
        store,
        versions=numbers,
        runs=parse_ids(runs, "run"),
        test_of=test_of,
        shared=shared,
        progress=RichProgress(),
    )
    written: list[Path] = []
    if plots:
        written = _compare_plots(store.settings.workspace.reports_dir / result.name, result)
    if as_json:
        print_json({**to_jsonable(result), "plots": [str(p) for p in written]})
        return
    if as_csv:
        _print_csv(result)
        return
    _print_comparison(result)
    for path in written:
        console.print(f"Plot: {path}")


# The first steps of an empty workspace, for a hint that leads to the one that works first.
FIRST_VERSION = "make one with `a2m import-folder DIR` or `a2m sync`, then `a2m train`."


def _check_versions_exist(store: Store, numbers: list[int] | None) -> None:
    """Refuse a comparison of versions that do not exist with a hint that can be followed: a
    hint to train on a missing version would only fail again."""
    from annotate2model.store import versions as store_versions

    with store.read() as session:
        known = [v.number for v in store_versions.list_versions(session)]
    if not known:
        raise NotFoundError(
            "the store holds no dataset version yet: nothing to compare.", hint=FIRST_VERSION
        )
    missing = [n for n in numbers or [] if n not in known]
    if missing:
        names = " or ".join(map(str, missing))
        raise NotFoundError(
            f"there is no dataset version {names} (versions: {', '.join(map(str, known))}).",
            hint="compare versions that exist, or make a new one with `a2m import-folder DIR` or "
            "`a2m sync`.",
        )


def _compare_plots(out: Path, result: Comparison) -> list[Path]:
    from annotate2model.judging import plots

    return [
        plots.accuracy_vs_images_plot(result, out / "accuracy_vs_images.png"),
        plots.accuracy_vs_time_plot(result, out / "accuracy_vs_time.png"),
    ]


def _print_csv(result: Comparison) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(
        [
            "run",
            "version",
            "train",
            "val",
            "test",
            "balance",
            "backbone",
            "mode",
            "val_accuracy",
            "common_accuracy",
            "interval_low",
            "interval_high",
            "common_macro_f1",
            "common_n",
            "wall_seconds",
            "images_per_second",
            "device",
        ]
    )
    for r in result.rows:
        writer.writerow(
            [
                r.run,
                r.version,
                r.counts.get("train", 0),
                r.counts.get("val", 0),
                r.counts.get("test", 0),
                " ".join(f"{k}:{v}" for k, v in r.balance.items()),
                r.backbone,
                r.mode,
                r.val_accuracy if r.val_accuracy is not None else "",
                r.accuracy,
                r.interval.low,
                r.interval.high,
                r.macro_f1 if r.macro_f1 is not None else "",
                len(result.test_set.images),
                r.wall_seconds if r.wall_seconds is not None else "",
                r.images_per_second if r.images_per_second is not None else "",
                r.device or "",
            ]
        )


def _print_comparison(result: Comparison) -> None:
    console.print(f"Judged on {escape(result.test_set.description)}.")
    # What all rows share goes into the title, so the table fits 80 columns.
    models = sorted(
        {f"{r.backbone} {r.mode}" if r.kind == "train" else "ensemble" for r in result.rows}
    )
    devices = sorted({r.device or "-" for r in result.rows})
    shared = [m for m in (models, devices) if len(m) == 1]
    table = listing(
        "Comparison" + (f" ({escape(', '.join(m[0] for m in shared))})" if shared else ""),
        caption="images: train/val/test of the run's version; common: the images above",
    )
    table.add_column("run", justify="right", no_wrap=True)
    table.add_column("v", justify="right", no_wrap=True)
    table.add_column("images", justify="right", no_wrap=True)
    if len(models) > 1:
        table.add_column("model", overflow="fold")
    table.add_column("val acc", justify="right", no_wrap=True)
    table.add_column("common (95% CI)", justify="right", no_wrap=True)
    table.add_column("F1", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("img/s", justify="right", no_wrap=True)
    if len(devices) > 1:
        table.add_column("device", overflow="fold")
    for r in result.rows:
        cells = [
            str(r.run),
            str(r.version),
            f"{r.counts.get('train', 0)}/{r.counts.get('val', 0)}/{r.counts.get('test', 0)}",
        ]
        if len(models) > 1:
            cells.append(escape(f"{r.backbone} {r.mode}" if r.kind == "train" else "ensemble"))
        cells += [
            score(r.val_accuracy),
            f"{r.accuracy:.3f} ({r.interval.low:.2f}-{r.interval.high:.2f})",
            score(r.macro_f1),
            f"{r.wall_seconds:.1f}s" if r.wall_seconds is not None else "-",
            f"{r.images_per_second:.0f}" if r.images_per_second else "-",
        ]
        if len(devices) > 1:
            cells.append(escape(r.device or "-"))
        table.add_row(*cells)
    console.print(table)
    console.print(
        "Training images per class: "
        + "; ".join(
            f"run {r.run} " + ", ".join(f"{escape(k)} {v}" for k, v in r.balance.items())
            for r in result.rows
        )
    )
    for pair in result.pairs:
        console.print(escape(pair.sentence[:1].upper() + pair.sentence[1:]) + ".")
        deltas = ", ".join(f"{escape(c)} {d * 100:+.1f}" for c, d in pair.per_class_delta.items())
        console.print(f"  Per-class accuracy change (points): {deltas}")
        for kind, wanted in (("fixed", True), ("broken", False)):
            changed = [c for c in pair.changes if (c.after == c.label) == wanted]
            if not changed:
                continue
            shown = ", ".join(
                escape(
                    f"{c.name} ({c.label}; was {c.before})"
                    if wanted
                    else f"{c.name} ({c.label}; now {c.after})"
                )
                for c in changed[:SHOWN_CHANGES]
            )
            more = (
                f" and {len(changed) - SHOWN_CHANGES} more" if len(changed) > SHOWN_CHANGES else ""
            )
            console.print(f"  {kind.capitalize()}: {shown}{more}")
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")


@app.command("curve")
def curve_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Dataset version (number or latest).")] = "latest",
    fractions: Annotated[
        str | None,
        typer.Option(help="Shares of the training split to train on (default 0.1,0.25,0.5,1.0)."),
    ] = None,
    repeats: Annotated[
        int, typer.Option(help="Subsets (and seeds) per fraction, for the spread.")
    ] = 3,
    run: Annotated[
        str | None,
        typer.Option(
            help="Train this run's configuration (default: the version's latest succeeded run)."
        ),
    ] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the curve PNG.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Learning curve: the same configuration on nested, class-stratified subsets of the
    training split, judged on the same test images. Says whether more labels still pay: a rise
    counts only when it exceeds the spread of the repeats and of the judged images; otherwise
    "cannot tell yet".

    Example: [bold]a2m curve 4 --fractions 0.25,0.5,1.0 --repeats 3[/]
    """
    from annotate2model.cli.training import _torch_store

    store = _torch_store(ctx, None)
    from annotate2model.judging.curve import learning_curve, parse_fractions

    curve = learning_curve(
        store,
        version,
        fractions=parse_fractions(fractions),
        repeats=repeats,
        run_id=run,
        progress=RichProgress(),
    )
    written: list[Path] = []
    if plots:
        from annotate2model.judging import plots as plotting

        folder = store.settings.workspace.reports_dir
        written.append(
            plotting.learning_curve_plot(curve, folder / f"curve-v{curve.version}-{curve.id}.png")
        )
    if as_json:
        print_json({**to_jsonable(curve), "plots": [str(p) for p in written]})
        return
    _print_curve(curve)
    for path in written:
        console.print(f"Plot: {path}")


def _print_curve(curve: LearningCurve) -> None:
    console.print(
        f"Learning curve of version {curve.version}, judged on {escape(curve.test_description)}."
    )
    table = listing("Accuracy against training images")
    for col in ("fraction", "train images", "mean acc", "std", "min", "max"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in curve.summary:
        table.add_row(
            f"{s.fraction:.0%}",
            str(s.train_images),
            f"{s.mean:.3f}",
            f"{s.std:.3f}",
            f"{s.low:.3f}",
            f"{s.high:.3f}",
        )
    console.print(table)
    console.print(escape(curve.verdict))
    console.print(f"{len(curve.points)} models trained in {curve.seconds:.1f} s.")
