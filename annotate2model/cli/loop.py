"""`a2m loop`: sync, train the new version, compare with the previous one, flag."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from annotate2model.cli.context import TrackOption, state
from annotate2model.cli.render import (
    JsonFlag,
    RecheckConfirmedFlag,
    RichProgress,
    console,
    print_json,
    score,
)
from annotate2model.labelstudio import connection
from annotate2model.training.config import PRESETS, Backbone, Mode

app = typer.Typer()


@app.command("loop")
def loop_cmd(
    ctx: typer.Context,
    preset: Annotated[
        str | None, typer.Option(help=f"Train with a preset: {', '.join(PRESETS)}.")
    ] = None,
    backbone: Annotated[
        Backbone | None,
        typer.Option(
            metavar="<name>",
            help=f"torchvision backbone: {', '.join(b.value for b in Backbone)}.",
        ),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="imagenet, none, or a PATH to a state_dict file.")
    ] = None,
    mode: Annotated[Mode | None, typer.Option(help="probe or finetune.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training split.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels.")] = None,
    reasons: Annotated[
        str, typer.Option(help="What to flag: misclassified, label-issue, uncertain.")
    ] = "misclassified,label-issue",
    max_count: Annotated[
        int | None, typer.Option("--max", help="Flag at most N tasks, most doubtful first.")
    ] = None,
    requeue: Annotated[
        bool, typer.Option("--requeue", help="Return flagged tasks to the labeling queue.")
    ] = False,
    recheck_confirmed: RecheckConfirmedFlag = False,
    track: TrackOption = None,
    as_json: JsonFlag = False,
) -> None:
    """One iteration: sync; train a new version with the last configuration (or the options
    given); compare it with the previous version on their common test images; flag its doubts.

    Example: [bold]a2m loop --requeue --max 100[/]
    """
    from annotate2model.loop import last_config, run_loop
    from annotate2model.review.flagging import parse_reasons
    from annotate2model.store.runs import list_runs
    from annotate2model.training.config import RunConfig, preset_config

    chosen_reasons = parse_reasons(reasons)
    st = state(ctx)
    settings = st.settings()
    store = st.store()
    project_id = connection.project_id(settings)
    client = connection.open_client(settings)
    given: dict[str, Any] = {
        k: v
        for k, v in {
            "backbone": backbone,
            "weights": weights,
            "mode": mode,
            "epochs": epochs,
            "image_size": image_size,
        }.items()
        if v is not None
    }
    config: RunConfig | None = None
    if preset is not None:
        config = preset_config(preset, **given)
    elif given:
        with store.read() as session:
            base = last_config(list_runs(session)) or RunConfig()
        config = base.replace(**given)
    with client:
        outcome = run_loop(
            store,
            client,
            project_id,
            config=config,
            reasons=chosen_reasons,
            max_count=max_count,
            requeue=requeue,
            recheck_confirmed=recheck_confirmed,
            progress=None if as_json else RichProgress(),
            local=connection.local_files(settings),
        )
    if as_json:
        print_json(outcome)
        return
    s = outcome.sync
    if outcome.version is None:
        console.print("Nothing labeled yet in the project: no version, nothing to train.")
        return
    made = s.version is not None and s.version.created
    console.print(
        f"Sync: version [bold]{outcome.version}[/] "
        + ("(new)" if made else "(unchanged)")
        + f": {s.added} image(s) added, {s.removed} removed, {s.relabeled} relabeled."
    )
    if s.flags_resolved:
        done = ", ".join(f"{n} {k}" for k, n in sorted(s.flags_resolved.items()))
        console.print(f"Flags resolved by this sync: {done}.")
        for run_id, (resolved, relabeled) in sorted(outcome.precision.items()):
            console.print(
                f"  run {run_id}: {relabeled} of {resolved} resolved flags changed the label "
                f"(precision {relabeled / resolved:.2f})."
            )
    if outcome.run is None:
        console.print("Nothing new to train: the version already has a run.")
        return
    m = outcome.run.metrics
    console.print(
        f"Run [bold]{outcome.run.id}[/] trained on version {outcome.run.version}: val accuracy "
        f"{score(m.get('val_accuracy'))}, test accuracy {score(m.get('test_accuracy'))}."
    )
    if outcome.comparison is not None:
        c = outcome.comparison
        table = Table(title=f"Compared on {c.test_set.description}")
        for col in ("run", "version", "images", "accuracy", "95% interval"):
            table.add_column(col, justify="right")
        for row in c.rows:
            table.add_row(
                str(row.run),
                str(row.version),
                str(sum(row.counts.values())),
                f"{row.accuracy:.3f}",
                f"{row.interval.low:.3f}-{row.interval.high:.3f}",
            )
        console.print(table)
        for pair in c.pairs:
            console.print(f"  {pair.sentence}")
    elif outcome.comparison_note:
        console.print(f"No comparison: {outcome.comparison_note}")
    f = outcome.flags
    if f is not None:
        from annotate2model.cli.review import evidence_lines, flag_notes

        for line in evidence_lines(f.evidence):
            console.print(line)
        found = ", ".join(f"{n} {r}" for r, n in f.found.items()) or "nothing"
        console.print(f"Flagged {f.flagged} task(s) ({found}).")
        for line in flag_notes(f):
            console.print(f"  {line}")
