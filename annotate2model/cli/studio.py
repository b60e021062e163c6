"""Label Studio commands: `studio up/down/status/logs`, `connect`, `collect`, `sync`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from annotate2model.cli.context import read_secret, state
from annotate2model.cli.render import JsonFlag, RichProgress, console, print_json
from annotate2model.labelstudio import connection
from annotate2model.labelstudio.server import DEFAULT_PORT

# The store (SQLAlchemy, the models: 0.3 s) is imported inside the commands that use it: `sync`
# has its first requests on their way to Label Studio before that (`HeadStart`).

app = typer.Typer()
studio_app = typer.Typer(help="Run a local Label Studio for this workspace.", no_args_is_help=True)
app.add_typer(studio_app, name="studio")


class PolicyChoice(StrEnum):
    """How sync picks a task's label among its annotations (`--help` lists the choices)."""

    latest = "latest"
    majority = "majority"
    ground_truth = "ground-truth"


class LabelsAsChoice(StrEnum):
    """What collect makes of folder labels (`--help` lists the choices)."""

    annotations = "annotations"
    predictions = "predictions"


@studio_app.command("up")
def up_cmd(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option(
            help=f"Port on 127.0.0.1. Default: the last one used, else {DEFAULT_PORT}; a free one "
            "if busy.",
            show_default=False,
        ),
    ] = None,
    files_root: Annotated[
        Path | None,
        typer.Option(
            "--files-root",
            help="Folder Label Studio may read images from in place (saved in a2m.toml); "
            "`collect` uploads folders outside it. Default: the saved one, else none (every "
            "image is uploaded).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start a local Label Studio (data under .a2m/labelstudio/) and save the connection.

    Example: [bold]a2m studio up --port 8080 --files-root ~/photos[/]
    """
    up = connection.studio_up(
        state(ctx).settings().workspace, port=port, files_root=files_root, progress=RichProgress()
    )
    if up.note:
        console.print(f"Note: {up.note}.")
    if up.moved_from is not None:
        console.print(f"Port {up.moved_from} is busy; using {up.port} instead.")
    if up.moved_url is not None:
        console.print(
            f"[yellow]Label Studio moved:[/] it was at {up.moved_url}, now {up.url} (saved in "
            "a2m.toml). Links to the old address, such as earlier review tab URLs, no longer work."
        )
    if up.files_root_not_applied is not None:
        console.print(
            f"Note: the running server reads files from {up.files_root or 'nowhere'}; "
            "run `a2m studio down` and `a2m studio up` to use the new files root."
        )
    verb = "Started" if up.started else "Already running:"
    console.print(f"{verb} Label Studio at [bold]{up.url}[/] (pid {up.pid}).")
    console.print(f"Log in as [bold]{up.admin}[/] with password [bold]{up.password.reveal()}[/].")
    if up.files_root:
        console.print(f"Images under {up.files_root} are read in place; others are uploaded.")
    if up.project is not None:
        p = up.project
        console.print(
            f"Connected to project [bold]{p.id}[/] “{p.title}” ({p.task_count} tasks). "
            "Next: [bold]a2m collect DIR[/] or [bold]a2m sync[/]."
        )
        return
    if up.project_not_here is not None:
        console.print(f"The saved project {up.project_not_here} is not on this server.")
    console.print(
        "Connection saved. Next: [bold]a2m connect --create 'My project' --labels cat,dog[/]."
    )


@studio_app.command("down")
def down_cmd(ctx: typer.Context) -> None:
    """Stop the local Label Studio this workspace started (no other).

    Example: [bold]a2m studio down[/]
    """
    stopped = connection.local_server(state(ctx).settings().workspace).stop()
    if stopped.running:
        console.print(f"Stopped Label Studio (pid {stopped.pid}).")
    else:
        console.print(
            "No local Label Studio was running" + (f" ({stopped.note})." if stopped.note else ".")
        )


@studio_app.command("status")
def status_cmd(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Whether the local Label Studio runs, its pid and URL.

    Example: [bold]a2m studio status --json[/]
    """
    status = connection.local_server(state(ctx).settings().workspace).status()
    if as_json:
        print_json(status)
        return
    if status.running:
        console.print(f"Running at [bold]{status.url}[/] (pid {status.pid}).")
    else:
        console.print("Not running" + (f" ({status.note})." if status.note else "."))


@studio_app.command("logs")
def logs_cmd(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines from the end (0: all).")] = 50,
) -> None:
    """The local Label Studio's log.

    Example: [bold]a2m studio logs -n 100[/]
    """
    server = connection.local_server(state(ctx).settings().workspace)
    tail = server.log_tail(lines)
    if not tail:
        console.print(f"No log yet at {server.log_path}.")
    for line in tail:
        console.print(line, markup=False, highlight=False)


@app.command("connect")
def connect_cmd(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Argument(help="Label Studio URL (default: LABEL_STUDIO_URL or the saved one)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Personal access token or legacy token; `-` reads it from standard input (one "
            "line; at a terminal, asked for without echo). Prefer `-` or LABEL_STUDIO_API_KEY: "
            "a token written here shows in `ps` to every user of the machine. Default: "
            "LABEL_STUDIO_API_KEY, else the saved one.",
            show_default=False,
        ),
    ] = None,
    project: Annotated[
        int | None,
        typer.Option(help="An existing project's id (default: the saved one).", show_default=False),
    ] = None,
    create: Annotated[
        str | None, typer.Option(help="Create a project with this title instead.")
    ] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels for --create.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a server, token and project (or create one), and save the connection.

    URL, token and project default to the saved ones, so a new token alone is `a2m connect
    --token -` (it asks for the token). The token is saved in .a2m/secrets.toml (mode 0600).

    Example: [bold]a2m connect http://localhost:8080 --token - --project 3[/]
    """
    if project is not None and create is not None:
        raise typer.BadParameter(
            "give one of them: --project ID, or --create TITLE --labels a,b.",
            ctx,
            param_hint="'--project' / '--create'",
        )
    if create is not None and not labels:
        raise typer.BadParameter(
            "needed with --create, e.g. --labels cat,dog.", ctx, param_hint="'--labels'"
        )
    if token == "-":
        token = _read_token(ctx)
    settings = state(ctx).settings(labelstudio_url=url, labelstudio_token=token)
    made = connection.connect(
        settings, project=project, create=create, labels=(labels or "").split(",")
    )
    if as_json:
        print_json(made)
        return
    verb = "Created" if made.created else "Connected to"
    console.print(
        f"{verb} project [bold]{made.project}[/] “{made.title}” at {made.url} as {made.user} "
        f"({made.token_kind} token): labels {', '.join(made.labels)}."
    )


def _read_token(ctx: typer.Context) -> str:
    """The token of `--token -`: a line typed without echo at a terminal, else stdin's first."""
    token = read_secret("Label Studio token: ")
    if not token:
        raise typer.BadParameter(
            "`-` reads the token from standard input, which gave none.",
            ctx,
            param_hint="'--token'",
        )
    return token


@app.command("collect")
def collect_cmd(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    labels_from_folders: Annotated[
        bool,
        typer.Option(
            "--labels-from-folders", help="Carry the top-level folder name over as the label."
        ),
    ] = False,
    labels_as: Annotated[
        LabelsAsChoice,
        typer.Option(
            "--as",
            help="With --labels-from-folders: import the folder labels as annotations, or as "
            "predictions (suggestions an annotator confirms).",
        ),
    ] = LabelsAsChoice.annotations,
    as_json: JsonFlag = False,
) -> None:
    """Put a folder of images into the project as tasks, skipping images it already holds.

    Example: [bold]a2m collect ~/photos/new --labels-from-folders --as predictions[/]
    """
    from annotate2model.labelstudio.collect import collect_folder
    from annotate2model.store.tasks import project_image_hashes

    st = state(ctx)
    settings = st.settings()
    store = st.store()
    project_id = connection.project_id(settings)
    client = connection.open_client(settings)
    with store.read() as session:
        known = project_image_hashes(session, project_id)
    local = connection.local_files(settings)
    with client:
        result = collect_folder(
            client,
            project_id,
            folder,
            known_hashes=known,
            labels_from_folders=labels_from_folders,
            labels_as=labels_as.value,
            files_root=local.root,
            max_pixels=settings.max_image_pixels,
            progress=RichProgress(),
        )
    if as_json:
        print_json(result)
        return
    console.print(
        f"Created {result.tasks_created} task(s) in project {project_id} ({result.mode}); "
        f"{result.labeled} with a label, {result.already_in_project} already in the project."
    )
    for rel, reason in result.skipped:
        console.print(f"[yellow]skipped[/] {escape(rel)}: {escape(reason)}", highlight=False)
    if result.outside_label_folders:
        loose = result.outside_label_folders
        shown, more = loose[:10], len(loose) - 10
        console.print(
            f"[yellow]{len(loose)} image(s) at the top of {escape(str(folder))}[/] are in no "
            "label folder and were added unlabeled: "
            + escape(", ".join(shown))
            + (f" and {more} more" if more > 0 else "")
            + ".",
            highlight=False,
        )
    if local.same_server and result.mode == "upload" and result.tasks_created:
        console.print(
            "Tip: `a2m studio down && a2m studio up --files-root DIR` lets Label Studio read "
            "folders below DIR in place instead of keeping uploaded copies."
        )


@app.command("sync")
def sync_cmd(
    ctx: typer.Context,
    policy: Annotated[
        PolicyChoice,
        typer.Option(
            help="How to pick among several annotations of a task: latest, majority (ties go "
            "to the latest), or ground-truth (the latest ground-truth annotation, else the latest; "
            "Label Studio marks annotations imported with tasks as ground truth unless the import "
            'says "ground_truth": false).'
        ),
    ] = PolicyChoice.latest,
    note: Annotated[
        str,
        typer.Option(
            help="A note stored with the new version (default: the project and how labels "
            "were picked)."
        ),
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Bring the project into the store; a new dataset version when anything changed.

    Example: [bold]a2m sync --policy majority --note "after the second review round"[/]
    """
    from annotate2model.labelstudio.reading import HeadStart
    from annotate2model.store.peek import project_synced

    st = state(ctx)
    settings = st.settings()
    project_id = connection.project_id(settings)
    client = connection.open_client(settings)
    local = connection.local_files(settings)
    progress = None if as_json else RichProgress()
    # The project, and on a first sync every task, are asked for now; Label Studio answers
    # while the store's modules load and the store opens.
    first = project_synced(settings.database_url, project_id) is False
    with client, HeadStart(client, project_id, read_all=first, progress=progress) as head:
        from annotate2model.labelstudio.sync import sync_project

        store = st.store()
        result = sync_project(
            store,
            client,
            project_id,
            policy=policy.value,
            note=note,
            progress=progress,
            local=local,
            head=head,
        )
    if as_json:
        print_json(
            {
                "project": result.project_id,
                "version": result.version.version.number if result.version else None,
                "created": bool(result.version and result.version.created),
                "tasks": result.tasks_total,
                "fetched": result.tasks_fetched,
                "images_downloaded": result.images_downloaded,
                "added": result.added,
                "removed": result.removed,
                "relabeled": result.relabeled,
                "labeled": result.labeled,
                "unlabeled": result.unlabeled,
                "deleted_tasks": result.deleted_tasks,
                "skipped": [{"task": t, "reason": r} for t, r in result.skipped],
                "skipped_by_reason": result.skipped_by_reason,
                "flags_resolved": result.flags_resolved,
                "seconds": round(result.seconds, 3),
            }
        )
        return
    if result.version is None:
        console.print("No version yet: the project has no labeled task with a readable image.")
    elif result.version.created:
        v = result.version.version
        console.print(f"Version [bold]{v.number}[/]: {v.item_count} images.")
    else:
        v = result.version.version
        console.print(f"Nothing changed: version [bold]{v.number}[/] is current.")
    table = Table(title=f"Sync of project {project_id} ({result.seconds:.1f} s)")
    for col in ("tasks", "fetched", "added", "removed", "relabeled", "unlabeled", "skipped"):
        table.add_column(col, justify="right")
    table.add_row(
        *(
            str(n)
            for n in (
                result.tasks_total,
                result.tasks_fetched,
                result.added,
                result.removed,
                result.relabeled,
                result.unlabeled,
                len(result.skipped),
            )
        )
    )
    console.print(table)
    for reason, n in result.skipped_by_reason.items():
        console.print(f"  skipped, {escape(reason)}: {n}", highlight=False)
    for task_id, reason in result.skipped[:20]:
        console.print(f"  [yellow]task {task_id}[/]: {escape(reason)}", highlight=False)
    if len(result.skipped) > 20:
        console.print(f"  ... and {len(result.skipped) - 20} more (see --json).")
    if result.flags_resolved:
        settled = ", ".join(f"{n} {kind}" for kind, n in sorted(result.flags_resolved.items()))
        console.print(f"Flags settled by this sync: {settled} ([bold]a2m flags[/] lists them).")
        if result.review_retired:
            console.print(f"  {result.review_retired} answered task(s) left the review tab.")
