"""The model server as a Label Studio ML backend: registering it, and reading task images for it.

`connect_backend` adds (or updates) the server in the connected project's Machine Learning
settings, so that Label Studio asks it for predictions and annotators see the model's suggestions.
Label Studio checks the server's `/health` and `/setup` while registering, so the server must be
running and reachable from Label Studio (a server of the workspace's own Label Studio on this
machine is: `a2m studio up` allows ML backends on loopback). A token is sent as the Basic-auth
password, the only authentication Label Studio offers a backend.

`TaskImages` reads the image of a task that Label Studio sends to `/predict`: the server's own
`/data/...` URLs through the saved connection (from disk when it is the workspace's own server),
`data:` URLs inline, `http(s)` URLs directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from annotate2model.errors import InvalidImage, LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.connection import LocalFiles, local_files, open_client, project_id
from annotate2model.labelstudio.downloads import _ImageUnavailable, _read_image, _read_local
from annotate2model.settings import Secret, Settings

DEFAULT_TITLE = "annotate2model"
# The Basic-auth user name sent with the token (Label Studio requires one; the server ignores it).
BASIC_USER = "a2m"


@dataclass(frozen=True)
class Backend:
    """An ML backend as registered in a project."""

    id: int
    project: int
    url: str
    title: str
    # Label Studio's view of it: Connected, Disconnected, Error, ...
    state: str
    # True when this call added it; False when it updated an existing one with the same URL.
    created: bool


def connect_backend(
    settings: Settings,
    url: str,
    *,
    title: str = DEFAULT_TITLE,
    token: Secret | None = None,
) -> Backend:
    """Register the model server at `url` with the connected project (or update the one already
    registered at that URL), and have Label Studio show its predictions to annotators."""
    pid = project_id(settings)
    body: dict[str, Any] = {
        "project": pid,
        "url": url,
        "title": title,
        "is_interactive": False,
        "auth_method": "BASIC_AUTH" if token is not None else "NONE",
    }
    if token is not None:
        body["basic_auth_user"] = BASIC_USER
        body["basic_auth_pass"] = token.reveal()
    with open_client(settings) as client:
        existing = _backends(client, pid)
        same = [b for b in existing if str(b.get("url", "")).rstrip("/") == url.rstrip("/")]
        if same:
            response = client.request("PATCH", f"/api/ml/{same[0]['id']}", json=body)
        else:
            response = client.request("POST", "/api/ml", json=body)
        if response.status_code >= 400:
            raise LabelStudioError(_refusal(client.url, url, response.status_code, response.text))
        data = response.json()
        client.json(
            "PATCH",
            f"/api/projects/{pid}",
            "show the backend's predictions to annotators",
            json={"show_collab_predictions": True, "evaluate_predictions_automatically": True},
        )
    return Backend(
        id=int(data["id"]),
        project=pid,
        url=str(data.get("url") or url),
        title=str(data.get("title") or title),
        state=str(data.get("readable_state") or data.get("state") or ""),
        created=not same,
    )


def list_backends(settings: Settings) -> list[dict[str, Any]]:
    """The ML backends registered with the connected project, as Label Studio describes them."""
    with open_client(settings) as client:
        return _backends(client, project_id(settings))


def _backends(client: LabelStudioClient, pid: int) -> list[dict[str, Any]]:
    found = client.json("GET", f"/api/ml?project={pid}", "list the project's ML backends")
    return [dict(b) for b in found] if isinstance(found, list) else []


def _refusal(ls_url: str, url: str, status: int, text: str) -> str:
    import json

    detail = text[:400]
    try:
        parsed = json.loads(text)
        messages = (parsed.get("validation_errors") or parsed) if isinstance(parsed, dict) else {}
        if isinstance(messages, dict):
            flat = [str(m) for v in messages.values() for m in (v if isinstance(v, list) else [v])]
            detail = " ".join(flat)[:600] or detail
    except ValueError:
        pass
    return (
        f"Label Studio at {ls_url} refused the ML backend {url} (HTTP {status}): {detail} "
        "Label Studio calls the backend itself: it must be running and reachable from there."
    )


class TaskImages:
    """Reads task images for the backend's `/predict` (thread-safe; one client, kept open)."""

    def __init__(self, client: LabelStudioClient | None, local: LocalFiles | None) -> None:
        self.client = client
        self.local = local

    def read(self, url: str) -> bytes:
        if self.local is not None:
            data = _read_local(self.local, url)
            if data is not None:
                return data
        if self.client is None and not url.startswith("data:"):
            raise LabelStudioError("no Label Studio connection is configured to read task images.")
        try:
            # A data: URL is decoded in place; the client is only used for the other kinds.
            return _read_image(cast(LabelStudioClient, self.client), url)
        except _ImageUnavailable as exc:
            raise InvalidImage(str(exc)) from None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def task_images(settings: Settings) -> TaskImages:
    """A reader through the saved connection (none configured: `data:` URLs only)."""
    ls = settings.labelstudio
    if not ls.url or ls.token is None:
        return TaskImages(None, None)
    return TaskImages(open_client(settings), local_files(settings))
