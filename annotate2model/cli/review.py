"""Flag-back commands: `flag`, `unflag`, `flags`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from annotate2model.cli.context import state
from annotate2model.cli.render import (
    HASH_SHOWN,
    JsonFlag,
    RecheckConfirmedFlag,
    RichProgress,
    console,
    image_cell,
    listing,
    print_json,
    print_task_links,
    task_url,
    when,
)
from annotate2model.labelstudio import connection
from annotate2model.labelstudio.client import LabelStudioClient

if TYPE_CHECKING:
    from annotate2model.review.flagging import Evidence, FlagOutcome

app = typer.Typer()


def _connected(ctx: typer.Context) -> tuple[int, LabelStudioClient]:
    settings = state(ctx).settings()
    return connection.project_id(settings), connection.open_client(settings)


@app.command("flag")
def flag_cmd(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run id whose doubts go back to Label Studio.")],
    reasons: Annotated[
        str,
        typer.Option(
            help="Comma-separated: misclassified (val/test images predicted wrongly), "
            "label-issue (training labels that are probably wrong), uncertain (unlabeled "
            "tasks the run is least sure of)."
        ),
    ] = "misclassified,label-issue",
    max_count: Annotated[
        int | None, typer.Option("--max", help="Flag at most N tasks, most doubtful first.")
    ] = None,
    min_score: Annotated[
        float, typer.Option(help="Flag only doubts scoring at least S (0 to 1).")
    ] = 0.0,
    requeue: Annotated[
        bool,
        typer.Option(
            "--requeue",
            help="Also turn each flagged task's annotation into a draft, so it returns to the "
            "labeling queue with the old answer pre-filled.",
        ),
    ] = False,
    recheck_confirmed: RecheckConfirmedFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Send a run's doubts to Label Studio, into the project's review tab (a2m review).

    Example: [bold]a2m flag 3 --reasons label-issue --max 50 --requeue[/]
    """
    started = time.perf_counter()
    from annotate2model.review.flagging import flag_run, parse_reasons

    chosen = parse_reasons(reasons)
    if max_count is not None and max_count < 1:
        raise typer.BadParameter("--max must be at least 1.")
    store = state(ctx).store()
    project_id, client = _connected(ctx)
    with client:
        outcome = flag_run(
            store,
            client,
            project_id,
            run,
            reasons=chosen,
            max_count=max_count,
            min_score=min_score,
            requeue=requeue,
            recheck_confirmed=recheck_confirmed,
            progress=None if as_json else RichProgress(),
            on_evidence=None if as_json else print_evidence,
        )
    if as_json:
        print_json(outcome)
        return
    console.print(flag_summary(outcome, time.perf_counter() - started, requeued=requeue))
    for line in flag_notes(outcome):
        console.print(f"  {line}")


def flag_summary(outcome: FlagOutcome, seconds: float, *, requeued: bool = False) -> str:
    """What `a2m flag` did, each time with what it times: the push to Label Studio on its own, and
    `seconds`, the whole command (judging the run, finding label issues, the push)."""
    push = outcome.push
    found = ", ".join(f"{n} {reason}" for reason, n in outcome.found.items()) or "nothing"
    return (
        f"Run [bold]{outcome.run}[/]: flagged {outcome.flagged} task(s) ({found}) in project "
        f"{outcome.project}: {push.predictions_added} prediction(s) added, "
        f"{push.predictions_updated} updated"
        + (f", {len(push.requeued)} requeued" if requeued else "")
        + f". Sending them to Label Studio took {push.seconds:.1f} s; {seconds:.1f} s in all."
    )


def print_evidence(evidence: Evidence) -> None:
    """What the data say of the flags, printed before they are sent."""
    for line in evidence_lines(evidence):
        console.print(line)


def evidence_lines(evidence: Evidence) -> list[str]:
    lines = []
    if evidence.held_out_accuracy is not None:
        lines.append(
            f"Held-out accuracy {evidence.held_out_accuracy:.2f} on "
            f"{evidence.held_out_images} validation and test images."
        )
    if evidence.estimated_wrong is not None:
        expected = evidence.expected_precision
        lines.append(
            f"cleanlab estimates {evidence.estimated_wrong} of {evidence.training_images} "
            "training labels are wrong"
            + (
                f"; about {expected:.0%} of misclassified flags can be expected to be wrong labels."
                if expected is not None
                else "."
            )
        )
    warning = evidence.warning()
    if warning:
        lines.append(f"[yellow]warning:[/] {escape(warning)}")
    return lines


def flag_notes(outcome: FlagOutcome) -> list[str]:
    """The lines after a flagging: what was kept back or carried, where the flags wait."""
    lines = []
    if outcome.kept_back:
        lines.append(
            f"{outcome.kept_back} task(s) whose label a person confirmed after a flag from a run "
            "on the same features were not flagged again (a run on other features, or "
            "--recheck-confirmed, flags them)."
        )
    if outcome.carried:
        lines.append(
            f"{outcome.carried} task(s) already waited in review for an earlier run: they stay, "
            f"with run {outcome.run}'s score."
        )
    if outcome.retired:
        lines.append(f"{outcome.retired} answered task(s) left the review tab.")
    if outcome.without_task:
        lines.append(
            f"{outcome.without_task} doubted image(s) have no task in the project that still "
            "carries the label the run saw."
        )
    if outcome.push.missing:
        lines.append(f"{len(outcome.push.missing)} task(s) no longer exist in Label Studio.")
    if outcome.url:
        lines.append(
            f"They wait in the tab [bold]{outcome.tab}[/], highest score first: {outcome.url}"
        )
    return lines


@app.command("unflag")
def unflag_cmd(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run id whose flags to take back.")],
    as_json: JsonFlag = False,
) -> None:
    """Take a run's flags out of Label Studio (predictions, review fields, requeued drafts).

    Example: [bold]a2m unflag 3[/]
    """
    from annotate2model.review.flagging import unflag_run

    store = state(ctx).store()
    project_id, client = _connected(ctx)
    with client:
        outcome = unflag_run(
            store, client, project_id, run, progress=None if as_json else RichProgress()
        )
    if as_json:
        print_json(outcome)
        return
    console.print(
        f"Run [bold]{outcome.run}[/]: {outcome.withdrawn} pending flag(s) withdrawn; removed "
        f"{outcome.predictions_removed} prediction(s), {outcome.fields_removed} review "
        f"field(s)"
        + (", the review tab (no flag left pending)" if outcome.tab_removed else "")
        + (
            f"; {outcome.drafts_restored} draft(s) back to annotations"
            if outcome.drafts_restored
            else ""
        )
        + "."
    )


@app.command("flags")
def flags_cmd(
    ctx: typer.Context,
    run: Annotated[str | None, typer.Argument(help="Only this run's flags.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List flags: task, image, reason, score, labels, when pushed, outcome; precision per run.

    Example: [bold]a2m flags 3 --json[/]
    """
    from annotate2model.store.flags import flag_precision, list_flags, suppressed_counts
    from annotate2model.store.runs import get_run
    from annotate2model.store.versions import image_sources

    store = state(ctx).store()
    with store.read() as session:
        run_id = get_run(session, run).id if run is not None else None
        records = list_flags(session, run_id)
        run_ids = {r.run_id for r in records if r.run_id is not None}
        precision = flag_precision(session, run_ids)
        kept_back = suppressed_counts(session, run_ids)
        sources = image_sources(session, (r.image_sha256 for r in records))
    ls_url = store.settings.labelstudio.url
    if as_json:
        print_json(
            {
                "flags": [
                    {
                        "id": r.id,
                        "run": r.run_id,
                        "project": r.project_id,
                        "task": r.task_id,
                        "image_sha256": r.image_sha256,
                        "name": sources[r.image_sha256].name if r.image_sha256 in sources else None,
                        "url": task_url(ls_url, r.project_id, r.task_id)
                        if ls_url and r.project_id is not None and r.task_id is not None
                        else None,
                        "reason": r.reason,
                        "score": r.score,
                        "current_label": r.current_label,
                        "suggested_label": r.suggested_label,
                        "label_now": r.label_now,
                        "pushed_at": r.pushed_at,
                        "requeued": r.draft_id is not None,
                        "outcome": r.outcome,
                        "resolved_at": r.resolved_at,
                    }
                    for r in records
                ],
                "precision": {
                    str(k): {
                        "resolved": v[0],
                        "relabeled": v[1],
                        "precision": v[1] / v[0] if v[0] else None,
                    }
                    for k, v in sorted(precision.items())
                },
                "kept_back": {str(k): v for k, v in sorted(kept_back.items())},
            }
        )
        return
    if not records:
        console.print("No flags yet: try [bold]a2m flag RUN[/].")
        return
    # Fits 80 columns: the image (its task, then its file name) and the labels wrap, short cells
    # never do; below 110 columns the push time and the hash are left out (--json has them).
    wide = console.width >= 110
    table = listing("Flags" + (f" of run {run_id}" if run_id is not None else ""))
    columns = ["run", "image", *(["hash"] if wide else []), "reason", "score", "label"]
    columns += ["suggested", *(["pushed"] if wide else []), "outcome"]
    for col in columns:
        table.add_column(
            col,
            justify="right" if col in ("run", "score") else "left",
            no_wrap=col in ("run", "hash", "reason", "score", "pushed"),
            # A word longer than its column (a long label) breaks instead of ending in "…".
            overflow="fold",
        )
    for r in records:
        source = sources.get(r.image_sha256)
        # The flag's own task, whatever other tasks show the same image.
        task = [(r.project_id, r.task_id)] if r.project_id and r.task_id is not None else []
        cells = {
            "run": str(r.run_id),
            "image": image_cell(r.image_sha256, source.name if source else None, task, ls_url),
            "hash": r.image_sha256[:HASH_SHOWN],
            "reason": r.reason,
            "score": f"{r.score:.3f}",
            "label": escape(r.current_label or "-"),
            "suggested": escape(r.suggested_label or "-"),
            "pushed": when(r.pushed_at),
            "outcome": r.outcome
            if r.draft_id is None or r.resolution
            else f"{r.outcome} (requeued)",
        }
        table.add_row(*(cells[col] for col in columns))
    console.print(table)
    print_task_links((r.project_id for r in records if r.project_id and r.task_id), ls_url)
    for run_key in sorted(set(precision) | set(kept_back)):
        resolved, relabeled = precision.get(run_key, (0, 0))
        line = f"Run {run_key}: "
        if resolved:
            line += f"{resolved} flag(s) resolved, {relabeled} relabeled: precision "
            line += f"{relabeled / resolved:.2f}"
        else:
            line += "no flag resolved yet"
        if kept_back.get(run_key):
            line += f"; {kept_back[run_key]} kept back (confirmed by a person before)"
        console.print(line + ".")


@app.command("label-next")
def label_next_cmd(
    ctx: typer.Context,
    run: Annotated[
        str | None,
        typer.Option("--run", help="Run whose predictions order the tasks (default: the newest)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="Put only the first K tasks of the order in the tab."),
    ] = None,
    uncertainty: Annotated[
        str,
        typer.Option(
            help="margin (1 - top-1 + top-2 probability, the default: it prefers images torn "
            "between two labels) or entropy."
        ),
    ] = "margin",
    as_json: JsonFlag = False,
) -> None:
    """Order the unlabeled tasks by how much a label would teach the model, into the tab
    "a2m: label next" (least sure first, near-copies spread apart, the model's guess
    pre-filled). Run it again after each training: the tab is updated, not duplicated.

    Example: [bold]a2m label-next --run 4 --limit 200[/]
    """
    from annotate2model.review.label_next import label_next
    from annotate2model.review.ordering import UNCERTAINTIES

    if uncertainty not in UNCERTAINTIES:
        raise typer.BadParameter(f"choose from {', '.join(UNCERTAINTIES)}.")
    if limit is not None and limit < 1:
        raise typer.BadParameter("--limit must be at least 1.")
    store = state(ctx).store()
    project_id, client = _connected(ctx)
    with client:
        outcome = label_next(
            store,
            client,
            project_id,
            run,
            limit=limit,
            method=uncertainty,  # type: ignore[arg-type]
            progress=None if as_json else RichProgress(),
        )
    if as_json:
        print_json(outcome)
        return
    push = outcome.push
    console.print(
        f"Run [bold]{outcome.run}[/]: {outcome.ordered} of {outcome.unlabeled} unlabeled task(s) "
        f"of project {outcome.project} ordered by {outcome.method}"
        + (
            " with the diversity step"
            if outcome.diverse
            else " alone (an ensemble has no features)"
        )
        + f"; {push.predictions_added} prediction(s) added, {push.predictions_removed} of the "
        f"last order removed, in {push.seconds:.1f} s."
    )
    if outcome.in_review:
        console.print(f"  {outcome.in_review} unlabeled task(s) wait in the review tab instead.")
    if outcome.unreadable:
        console.print(f"  {outcome.unreadable} image(s) could not be read: left out.")
    if outcome.ordered:
        first = ", ".join(str(t) for t in outcome.first[:5])
        console.print(f"  First: task(s) {first}. Label them in the tab [bold]{outcome.tab}[/]:")
        console.print(f"  {outcome.url}")
