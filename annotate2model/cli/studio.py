"""Label Studio commands: `studio up/down/status/logs`, `connect`, `collect`, `sync`."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.table import Table

from annotate2model.cli.context import state
from annotate2model.cli.render import RichProgress, console, print_json
from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient, token_kind
from annotate2model.labelstudio.collect import LabelsAs, collect_folder
from annotate2model.labelstudio.config import build_label_config, parse_label_config
from annotate2model.labelstudio.server import DEFAULT_PORT, LocalServer, check_files_root
from annotate2model.labelstudio.sync import POLICIES, Policy, sync_project
from annotate2model.settings import Settings
from annotate2model.store.tasks import project_image_hashes

app = typer.Typer()
studio_app = typer.Typer(help="Run a local Label Studio for this workspace.", no_args_is_help=True)
app.add_typer(studio_app, name="studio")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ADMIN_EMAIL = "admin@a2m.local"
TOKEN_SECRET = "labelstudio_token"
LOCAL_TOKEN_SECRET = "labelstudio_local_token"
LOCAL_PASSWORD_SECRET = "labelstudio_local_password"


def _local(settings: Settings) -> LocalServer:
    return LocalServer(settings.workspace.data_dir / "labelstudio")


def _client(settings: Settings) -> LabelStudioClient:
    ls = settings.labelstudio
    if not ls.url or ls.token is None:
        raise LabelStudioError(
            "no Label Studio connection: run `a2m studio up`, or `a2m connect URL --token T "
            "--project ID` (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)."
        )
    return LabelStudioClient(ls.url, ls.token)


def _project(settings: Settings) -> int:
    if settings.labelstudio.project_id is None:
        raise LabelStudioError(
            "no Label Studio project chosen: run `a2m connect --project ID` or "
            "`a2m connect --create TITLE --labels a,b`."
        )
    return settings.labelstudio.project_id


@studio_app.command("up")
def up_cmd(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (a free one if busy).")] = (
        DEFAULT_PORT
    ),
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
    settings = state(ctx).settings()
    ws = settings.workspace
    saved_root = ws.read_config().get("labelstudio", {}).get("files_root")
    root: Path | None = None
    if files_root is not None or saved_root:
        root = check_files_root(Path(files_root or str(saved_root)), ws.data_dir)
    stored = ws.read_secrets()
    password = stored.get(LOCAL_PASSWORD_SECRET) or secrets.token_urlsafe(12)
    token = stored.get(LOCAL_TOKEN_SECRET) or secrets.token_hex(20)
    if LOCAL_PASSWORD_SECRET not in stored:
        ws.write_secret(LOCAL_PASSWORD_SECRET, password)
    if LOCAL_TOKEN_SECRET not in stored:
        ws.write_secret(LOCAL_TOKEN_SECRET, token)
    server = _local(settings)
    before = server.status()
    if before.note:
        console.print(f"Note: {before.note}.")
    result = server.start(
        username=ADMIN_EMAIL,
        password=password,
        token=token,
        port=port,
        files_root=root,
        progress=RichProgress(),
    )
    if result.moved_from is not None:
        console.print(f"Port {result.moved_from} is busy; using {result.port} instead.")
    ws.update_config(
        "labelstudio", {"url": result.url, **({"files_root": str(root)} if root else {})}
    )
    if not result.started and (str(root) if root else None) != result.files_root:
        console.print(
            f"Note: the running server reads files from {result.files_root or 'nowhere'}; "
            "run `a2m studio down` and `a2m studio up` to use the new files root."
        )
    ws.write_secret(TOKEN_SECRET, token)
    verb = "Started" if result.started else "Already running:"
    console.print(f"{verb} Label Studio at [bold]{result.url}[/] (pid {result.pid}).")
    console.print(f"Log in as [bold]{ADMIN_EMAIL}[/] with password [bold]{password}[/].")
    if result.files_root:
        console.print(f"Images under {result.files_root} are read in place; others are uploaded.")
    console.print(
        "Connection saved. Next: [bold]a2m connect --create 'My project' --labels cat,dog[/]."
    )


@studio_app.command("down")
def down_cmd(ctx: typer.Context) -> None:
    """Stop the local Label Studio this workspace started (no other).

    Example: [bold]a2m studio down[/]
    """
    stopped = _local(state(ctx).settings()).stop()
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
    status = _local(state(ctx).settings()).status()
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
    server = _local(state(ctx).settings())
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
            help="Personal access token or legacy token (default: LABEL_STUDIO_API_KEY or the "
            "saved one).",
            show_default=False,
        ),
    ] = None,
    project: Annotated[int | None, typer.Option(help="An existing project's id.")] = None,
    create: Annotated[
        str | None, typer.Option(help="Create a project with this title instead.")
    ] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels for --create.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a server, token and project (or create one), and save the connection.

    Example: [bold]a2m connect http://localhost:8080 --token $TOKEN --project 3[/]
    """
    settings = state(ctx).settings(labelstudio_url=url, labelstudio_token=token)
    if (project is None) == (create is None):
        raise LabelStudioError("give either --project ID or --create TITLE --labels a,b.")
    if create is not None and not labels:
        raise LabelStudioError("--create needs --labels, e.g. --labels cat,dog.")
    ls = settings.labelstudio
    if not ls.url:
        raise LabelStudioError(
            "no Label Studio URL: give one, set LABEL_STUDIO_URL, or run `a2m studio up`."
        )
    if ls.token is None:
        raise LabelStudioError(
            "no Label Studio token: pass --token or set LABEL_STUDIO_API_KEY "
            "(Account & Settings > Personal Access Token)."
        )
    with LabelStudioClient(ls.url, ls.token) as client:
        user = client.check()
        if create is not None:
            config_xml = build_label_config((labels or "").split(","))
            info = client.create_project(create, config_xml)
        else:
            assert project is not None
            info = client.project(project)
        config = parse_label_config(info.label_config, info.id)
    ws = settings.workspace
    ws.update_config("labelstudio", {"url": ls.url, "project": info.id})
    ws.write_secret(TOKEN_SECRET, ls.token.reveal())
    summary = {
        "url": ls.url,
        "project": info.id,
        "title": info.title,
        "tasks": info.task_count,
        "labels": list(config.labels),
        "image_field": config.image_field,
        "user": user.get("email"),
        "token_kind": token_kind(ls.token.reveal()),
    }
    if as_json:
        print_json(summary)
        return
    verb = "Created" if create is not None else "Connected to"
    console.print(
        f"{verb} project [bold]{info.id}[/] “{info.title}” at {ls.url} as {user.get('email')} "
        f"({summary['token_kind']} token): labels {', '.join(config.labels)}."
    )


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
        str, typer.Option("--as", help="annotations or predictions (with --labels-from-folders).")
    ] = "annotations",
    as_json: JsonFlag = False,
) -> None:
    """Put a folder of images into the project as tasks, skipping images it already holds.

    Example: [bold]a2m collect ~/photos/new --labels-from-folders --as predictions[/]
    """
    if labels_as not in ("annotations", "predictions"):
        raise typer.BadParameter("must be annotations or predictions", param_hint="--as")
    st = state(ctx)
    settings = st.settings()
    project_id = _project(settings)
    store = st.store()
    with store.read() as session:
        known = project_image_hashes(session, project_id)
    local = _local(settings).status()
    same_server = local.running and local.url is not None and _same(local.url, settings)
    as_kind: LabelsAs = "predictions" if labels_as == "predictions" else "annotations"
    with _client(settings) as client:
        result = collect_folder(
            client,
            project_id,
            folder,
            known_hashes=known,
            labels_from_folders=labels_from_folders,
            labels_as=as_kind,
            files_root=Path(local.files_root) if same_server and local.files_root else None,
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
        console.print(f"[yellow]skipped[/] {rel}: {reason}", highlight=False)
    if same_server and result.mode == "upload" and result.tasks_created:
        console.print(
            "Tip: `a2m studio down && a2m studio up --files-root DIR` lets Label Studio read "
            "folders below DIR in place instead of keeping uploaded copies."
        )


def _same(local_url: str, settings: Settings) -> bool:
    a, b = urlsplit(local_url), urlsplit(settings.labelstudio.url or "")
    loopback = {"127.0.0.1", "localhost"}
    return a.port == b.port and (a.hostname in loopback) and (b.hostname in loopback)


@app.command("sync")
def sync_cmd(
    ctx: typer.Context,
    policy: Annotated[
        str,
        typer.Option(
            help="How to pick among several annotations of a task: latest, majority (ties go "
            "to the latest), or ground-truth (the latest ground-truth annotation, else the latest; "
            "Label Studio marks annotations imported with tasks as ground truth unless the import "
            'says "ground_truth": false).'
        ),
    ] = "latest",
    as_json: JsonFlag = False,
) -> None:
    """Bring the project into the store; a new dataset version when anything changed.

    Example: [bold]a2m sync --policy majority[/]
    """
    if policy not in POLICIES:
        raise typer.BadParameter("must be latest, majority or ground-truth", param_hint="--policy")
    chosen: Policy = policy  # type: ignore[assignment]
    st = state(ctx)
    settings = st.settings()
    project_id = _project(settings)
    store = st.store()
    with _client(settings) as client:
        result = sync_project(
            store, client, project_id, policy=chosen, progress=None if as_json else RichProgress()
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
        console.print(f"  skipped, {reason}: {n}")
    for task_id, reason in result.skipped[:20]:
        console.print(f"  [yellow]task {task_id}[/]: {reason}", highlight=False)
    if len(result.skipped) > 20:
        console.print(f"  ... and {len(result.skipped) - 20} more (see --json).")
