"""The workspace's connection to Label Studio: what `studio up` and `connect` set up and save.

Owns the local server's admin account, password and token (kept in the workspace's secrets, never
in a2m.toml or the store), the saved connection (`[labelstudio]` url and project in a2m.toml, the
token in secrets), and the Local Files root: one setting, `[labelstudio] files_root`, read by
`saved_files_root` and written by `studio_up` alone. Nothing here prints; each function returns a
record for the caller to show.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient, ProjectInfo, token_kind
from annotate2model.labelstudio.config import build_label_config, parse_label_config
from annotate2model.labelstudio.server import LocalServer, check_files_root
from annotate2model.progress import Progress
from annotate2model.settings import Secret, Settings
from annotate2model.workspace import Workspace

ADMIN_EMAIL = "admin@a2m.local"
# Keys in the workspace's secrets file.
TOKEN_SECRET = "labelstudio_token"
LOCAL_TOKEN_SECRET = "labelstudio_local_token"
LOCAL_PASSWORD_SECRET = "labelstudio_local_password"
# The a2m.toml section, and its key for the Local Files root.
SECTION = "labelstudio"
FILES_ROOT_KEY = "files_root"

Missing = Literal["url", "token", "project"]


# How to set each missing piece of the connection: the step that works first. A token is never
# shown as `--token T`: a value on the command line is visible to every local user in `ps`.
CONNECT_HINTS: dict[str, str] = {
    "url": "run `a2m studio up`, or `a2m connect URL --token - --project ID` (or set "
    "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY).",
    "token": "set LABEL_STUDIO_API_KEY or run `a2m connect --token -` (Account & Settings > "
    "Personal Access Token), or run `a2m studio up` for a local server.",
    "project": "run `a2m connect --project ID` or `a2m connect --create TITLE --labels a,b`.",
}


class NotConnected(LabelStudioError):
    """No Label Studio URL, token or project is configured; `missing` says which, and the hint
    the command that sets it."""

    def __init__(self, message: str, missing: Missing) -> None:
        super().__init__(message, hint=CONNECT_HINTS[missing])
        self.missing: Missing = missing


def local_server(workspace: Workspace) -> LocalServer:
    """The workspace's own Label Studio (data under `.a2m/labelstudio/`)."""
    return LocalServer(workspace.data_dir / "labelstudio")


def saved_files_root(workspace: Workspace) -> Path | None:
    """The Local Files root saved by the last `studio_up` that was given one."""
    value = workspace.read_config().get(SECTION, {}).get(FILES_ROOT_KEY)
    return Path(str(value)) if value else None


# -- studio up ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudioUp:
    """What `studio_up` did: the server's address, how to log in, where it reads files from."""

    url: str
    pid: int
    port: int
    # False: a server of this workspace was already running; nothing was started.
    started: bool
    # The port asked for, when it was busy and another one was used.
    moved_from: int | None
    admin: str
    password: Secret
    # The folder the running server reads Local Files from (None: serving is off).
    files_root: str | None
    # The folder asked for when the already-running server reads from another one.
    files_root_not_applied: str | None
    # A stale pid file found and cleared before starting, said in words.
    note: str | None
    # The saved project, read on this server: what is connected (None: no project is saved,
    # or the saved one is not on this server; then `project_not_here` names it).
    project: ProjectInfo | None = None
    project_not_here: int | None = None
    # The URL saved before, when the server now answers at another one (links to it, such as
    # an earlier review tab's, no longer work).
    moved_url: str | None = None


def studio_up(
    workspace: Workspace,
    *,
    port: int | None = None,
    files_root: Path | None = None,
    progress: Progress | None = None,
) -> StudioUp:
    """Start the workspace's Label Studio (a no-op when it runs) and save the connection to it.

    The admin password and token are made once and kept in the workspace's secrets; the URL (and
    the files root, when there is one) go to a2m.toml, and the token becomes the workspace's
    Label Studio token. `files_root` None: the saved one, else Local Files serving stays off.
    """
    asked = files_root if files_root is not None else saved_files_root(workspace)
    root = check_files_root(asked, workspace.data_dir) if asked is not None else None
    stored = workspace.read_secrets()
    password = stored.get(LOCAL_PASSWORD_SECRET) or secrets.token_urlsafe(12)
    token = stored.get(LOCAL_TOKEN_SECRET) or secrets.token_hex(20)
    if LOCAL_PASSWORD_SECRET not in stored:
        workspace.write_secret(LOCAL_PASSWORD_SECRET, password)
    if LOCAL_TOKEN_SECRET not in stored:
        workspace.write_secret(LOCAL_TOKEN_SECRET, token)
    server = local_server(workspace)
    saved_url = workspace.read_config().get(SECTION, {}).get("url")
    before = server.status()
    started = server.start(
        username=ADMIN_EMAIL,
        password=password,
        token=token,
        port=port,
        files_root=root,
        progress=progress,
    )
    workspace.update_config(
        SECTION, {"url": started.url, **({FILES_ROOT_KEY: str(root)} if root else {})}
    )
    workspace.write_secret(TOKEN_SECRET, token)
    project, not_here = _saved_project(workspace, started.url, token)
    wanted = str(root) if root else None
    return StudioUp(
        url=started.url,
        pid=started.pid,
        port=started.port,
        started=started.started,
        moved_from=started.moved_from,
        admin=ADMIN_EMAIL,
        password=Secret(password),
        files_root=started.files_root,
        files_root_not_applied=(
            wanted if not started.started and wanted != started.files_root else None
        ),
        note=before.note,
        project=project,
        project_not_here=not_here,
        moved_url=str(saved_url) if _local_moved(saved_url, started.url) else None,
    )


def _local_moved(saved: object, now: str) -> bool:
    """Whether the saved URL was this machine's (an earlier local server's) and differs now."""
    host = urlsplit(str(saved or "")).hostname
    return bool(saved) and host in ("127.0.0.1", "localhost") and str(saved) != now


def _saved_project(
    workspace: Workspace, url: str, token: str
) -> tuple[ProjectInfo | None, int | None]:
    """The project saved in a2m.toml as this server sees it: (its info, None), or (None, its id)
    when the server has no such project; (None, None) when none is saved."""
    saved = workspace.read_config().get(SECTION, {}).get("project")
    if not isinstance(saved, int):
        return None, None
    with LabelStudioClient(url, Secret(token), timeout=10.0, attempts=2) as client:
        try:
            return client.project(saved), None
        except LabelStudioError:
            return None, saved


# -- connect ------------------------------------------------------------------------------------


# What to do when the workspace's own server, stopped, is the configured one.
LOCAL_DOWN_HINT = "the workspace's own Label Studio is not running; `a2m studio up` starts it."


def open_client(settings: Settings) -> LabelStudioClient:
    """A client for the configured server and token; NotConnected when either is missing."""
    ls = settings.labelstudio
    if not ls.url:
        raise NotConnected("no Label Studio URL is configured.", "url")
    if ls.token is None:
        raise NotConnected("no Label Studio token is configured.", "token")
    hint = LOCAL_DOWN_HINT if is_local_server(settings) else None
    return LabelStudioClient(ls.url, ls.token, unreachable_hint=hint)


def is_local_server(settings: Settings) -> bool:
    """Whether the configured server is the workspace's own (`studio up`), running or not: the
    saved loopback URL (which `studio up` writes), the token it made, its data folder present."""
    ls = settings.labelstudio
    ws = settings.workspace
    saved = ws.read_config().get(SECTION, {}).get("url")
    if ls.token is None or not isinstance(saved, str) or not _same(saved, ls.url):
        return False
    if ws.read_secrets().get(LOCAL_TOKEN_SECRET) != ls.token.reveal():
        return False
    return local_server(ws).data_dir.is_dir()


def project_id(settings: Settings) -> int:
    """The configured project; NotConnected when none is chosen, or when the server or its
    token is missing too (their hint is the step that works first: a project is chosen on a
    server)."""
    ls = settings.labelstudio
    if ls.project_id is None:
        if not ls.url:
            raise NotConnected("no Label Studio is connected.", "url")
        if ls.token is None:
            raise NotConnected("no Label Studio token is configured.", "token")
        raise NotConnected("no Label Studio project is chosen.", "project")
    return ls.project_id


@dataclass(frozen=True)
class Connection:
    """A checked and saved connection: the server, the token's user, the project and its labels."""

    url: str
    project: int
    title: str
    tasks: int
    labels: list[str]
    image_field: str
    user: str | None
    # "pat" (personal access token) or "legacy".
    token_kind: str
    # True when the project was created by this call.
    created: bool


def connect(
    settings: Settings,
    *,
    project: int | None = None,
    create: str | None = None,
    labels: Sequence[str] = (),
) -> Connection:
    """Check the server, the token and one project (an existing one, or `create` a new one with
    `labels`), then save the URL and project in a2m.toml and the token in the secrets.

    Neither `project` nor `create`: the saved project (to check a new token or URL against it).
    """
    if project is not None and create is not None:
        raise LabelStudioError("name either an existing project or a new one to create.")
    if project is None and create is None:
        project = settings.labelstudio.project_id
        if project is None:
            raise NotConnected(
                "name either an existing project or a new one to create (none is saved).",
                "project",
            )
    config_xml = build_label_config(list(labels)) if create is not None else None
    ls = settings.labelstudio
    with open_client(settings) as client:
        assert ls.url is not None and ls.token is not None
        user = client.check()
        if create is not None:
            assert config_xml is not None
            info = client.create_project(create, config_xml)
        else:
            assert project is not None
            info = client.project(project)
        config = parse_label_config(info.label_config, info.id)
    ws = settings.workspace
    ws.update_config(SECTION, {"url": ls.url, "project": info.id})
    ws.write_secret(TOKEN_SECRET, ls.token.reveal())
    email = user.get("email")
    return Connection(
        url=ls.url,
        project=info.id,
        title=info.title,
        tasks=info.task_count,
        labels=list(config.labels),
        image_field=config.image_field,
        user=str(email) if email else None,
        token_kind=token_kind(ls.token.reveal()),
        created=create is not None,
    )


# -- collect's view of the local server ---------------------------------------------------------


@dataclass(frozen=True)
class LocalFiles:
    """Whether the configured server is this workspace's own, and where it keeps image files."""

    same_server: bool
    # None: the server cannot read this machine's files in place (collect uploads).
    root: Path | None
    # The server's media folder (uploads live in its `upload/`), when it is this workspace's.
    media_root: Path | None = None

    def path_of(self, url: str) -> Path | None:
        """The file on this machine that the server would send for its own `/data/...` URL:
        `/data/local-files/?d=REL` under the files root, `/data/upload/REL` under the media
        folder. None for any other URL, another server, or a path leaving its folder."""
        if not self.same_server or not url.startswith("/data/"):
            return None
        parts = urlsplit(url)
        if parts.path == "/data/local-files/" and self.root is not None:
            rel = parse_qs(parts.query).get("d", [""])[0]
            base = self.root
        elif parts.path.startswith("/data/upload/") and self.media_root is not None:
            rel = unquote(parts.path[len("/data/upload/") :])
            base = self.media_root / "upload"
        else:
            return None
        if not rel:
            return None
        base = base.resolve()
        path = (base / rel).resolve()
        return path if path.is_relative_to(base) and path.is_file() else None


def local_files(settings: Settings) -> LocalFiles:
    """The files root of the workspace's running server, when it is the configured one (a remote
    server cannot read this machine's files): collect leaves files there in place, and sync reads
    the server's own images from disk instead of through its single-threaded web server."""
    server = local_server(settings.workspace)
    status = server.status()
    same = status.running and status.url is not None and _same(status.url, settings.labelstudio.url)
    return LocalFiles(
        same_server=same,
        root=Path(status.files_root) if same and status.files_root else None,
        media_root=server.data_dir / "media" if same else None,
    )


LOOPBACK = frozenset({"127.0.0.1", "localhost"})


def _same(local_url: str, configured: str | None) -> bool:
    a, b = urlsplit(local_url), urlsplit(configured or "")
    return a.port == b.port and (a.hostname in LOOPBACK) and (b.hostname in LOOPBACK)
