"""Flag-back commands: `flag`, `unflag`, `flags`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from annotate2model.cli.context import state
from annotate2model.cli.render import (
    HASH_SHOWN,
    JsonFlag,
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
from annotate2model.labelstudio.connection import NotConnected

app = typer.Typer()

_CONNECT_HINT = {
    "url": "run `a2m studio up`, or `a2m connect URL --token T --project ID`.",
    "token": "pass a token with `a2m connect`, or run `a2m studio up` for a local server.",
    "project": "run `a2m connect --project ID`.",
}


def _connected(ctx: typer.Context) -> tuple[int, LabelStudioClient]:
    settings = state(ctx).settings()
    try:
        return connection.project_id(settings), connection.open_client(settings)
    except NotConnected as exc:
        exc.hint = _CONNECT_HINT[exc.missing]
        raise


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
    as_json: JsonFlag = False,
) -> None:
    """Send a run's doubts to Label Studio: a prediction, a review field and a tab per run.

    Example: [bold]a2m flag 3 --reasons label-issue --max 50 --requeue[/]
    """
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
            progress=None if as_json else RichProgress(),
        )
    if as_json:
        print_json(outcome)
        return
    push = outcome.push
    found = ", ".join(f"{n} {reason}" for reason, n in outcome.found.items()) or "nothing"
    console.print(
        f"Run [bold]{outcome.run}[/]: flagged {outcome.flagged} task(s) ({found}) in project "
        f"{outcome.project} in {push.seconds:.1f} s: {push.predictions_added} prediction(s) "
        f"and {push.fields_written} review field(s) added"
        + (f", {len(push.requeued)} requeued" if requeue else "")
        + "."
    )
    if outcome.without_task:
        console.print(
            f"  {outcome.without_task} doubted image(s) have no task in the project that still "
            "carries the label the run saw."
        )
    if push.missing:
        console.print(f"  {len(push.missing)} task(s) no longer exist in Label Studio.")
    if outcome.url:
        console.print(f"They wait in the tab [bold]{outcome.tab}[/]: {outcome.url}")


@app.command("unflag")
def unflag_cmd(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run id whose flags to take back.")],
    as_json: JsonFlag = False,
) -> None:
    """Take a run's flags out of Label Studio (predictions, review field, tab, requeued drafts).

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
        + (", the tab" if outcome.tab_removed else "")
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
    from annotate2model.store.flags import flag_precision, list_flags
    from annotate2model.store.runs import get_run
    from annotate2model.store.versions import image_sources

    store = state(ctx).store()
    with store.read() as session:
        run_id = get_run(session, run).id if run is not None else None
        records = list_flags(session, run_id)
        precision = flag_precision(session, {r.run_id for r in records if r.run_id is not None})
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
    for run_key, (resolved, relabeled) in sorted(precision.items()):
        console.print(
            f"Run {run_key}: {resolved} flag(s) resolved, {relabeled} relabeled: precision "
            f"{relabeled / resolved:.2f}."
        )
