"""The model server as a Label Studio ML backend: registering it, and reading task images for it.

`connect_backend` adds (or updates) the server in the connected project's Machine Learning
settings, so that Label Studio asks it for predictions and annotators see the model's suggestions.
Label Studio checks the server's `/health` and `/setup` while registering, so the server must be
running and reachable from Label Studio (a server of the workspace's own Label Studio on this
machine is: `a2m studio up` allows ML backends on loopback). A token is sent as the Basic-auth
password, the only authentication Label Studio offers a backend. With `auto_train`, the project
also sends its annotation events to the server's `/webhook` (with the token as a Bearer header),
for `a2m serve --auto-train`.

`TaskImages` reads the image of a task that Label Studio sends to `/predict`: the server's own
media (`/data/upload/...`, `/data/local-files/?d=...`) through the saved connection (from disk
when it is the workspace's own server), `data:` URLs inline, and http(s) URLs only from the hosts
named in `[serve] image_hosts`. Whoever can call `/predict` chooses these URLs, so nothing else
is fetched: no Label Studio API path (the request would carry the workspace's token), no other
host, no loopback or link-local address.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import httpx

from annotate2model.errors import InvalidImage, LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.connection import (
    LOCAL_DOWN_HINT,
    LocalFiles,
    is_local_server,
    local_files,
    open_client,
    project_id,
)
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
    # The project webhook that sends annotation events to the server (auto-train only).
    webhook: int | None = None


# The events that can change a version: `a2m serve --auto-train` syncs on each.
WEBHOOK_ACTIONS = (
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
    "TASKS_CREATED",
    "TASKS_DELETED",
)


def connect_backend(
    settings: Settings,
    url: str,
    *,
    title: str = DEFAULT_TITLE,
    token: Secret | None = None,
    auto_train: bool = False,
) -> Backend:
    """Register the model server at `url` with the connected project (or update the one already
    registered at that URL), and have Label Studio show its predictions to annotators; with
    `auto_train`, send the project's annotation events to its `/webhook` too."""
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
    # Not the SDK's `ml` client: it sends a POST again after a 500, which adds a second backend.
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
        webhook = _ensure_webhook(client, pid, url, token) if auto_train else None
    return Backend(
        id=int(data["id"]),
        project=pid,
        url=str(data.get("url") or url),
        title=str(data.get("title") or title),
        state=str(data.get("readable_state") or data.get("state") or ""),
        created=not same,
        webhook=webhook,
    )


def _ensure_webhook(client: LabelStudioClient, pid: int, url: str, token: Secret | None) -> int:
    """The project webhook to `url`/webhook, made or brought up to date: the annotation events,
    with their payload, and the token as a Bearer header (Label Studio makes one itself when a
    backend is added, with every event and no header: a server with a token refuses those)."""
    target = url.rstrip("/") + "/webhook"
    body: dict[str, Any] = {
        "project": pid,
        "url": target,
        "send_payload": True,
        "send_for_all_actions": False,
        "actions": list(WEBHOOK_ACTIONS),
        "headers": {"Authorization": f"Bearer {token.reveal()}"} if token is not None else {},
        "is_active": True,
    }
    # Not the SDK's `webhooks` client: it sends a POST again after a 500 (a second webhook).
    found = client.json("GET", f"/api/webhooks/?project={pid}", "list the project's webhooks")
    same = [
        w
        for w in (found if isinstance(found, list) else [])
        if isinstance(w, dict) and str(w.get("url", "")).rstrip("/") == target
    ]
    if same:
        body.pop("project")
        response = client.request("PATCH", f"/api/webhooks/{same[0]['id']}/", json=body)
    else:
        response = client.request("POST", "/api/webhooks/", json=body)
    if response.status_code >= 400:
        raise LabelStudioError(
            f"Label Studio refused the webhook to {target} (HTTP {response.status_code}): "
            f"{response.text[:300]}",
            hint="a Label Studio that blocks requests to local addresses needs "
            "SSRF_PROTECTION_ENABLED=false to send events to a server on this network; "
            "without events, `a2m serve --auto-train` still syncs every 10 minutes.",
        )
    return int(response.json()["id"])


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


# How long one task image may take to read, and how many tries it gets: a prediction request
# has its own deadline, and a retry with back-off (meant for a sync) would only eat into it.
READ_SECONDS = 10.0
READ_ATTEMPTS = 1
# The largest image read from another host (Label Studio's own media are not capped here).
MAX_IMAGE_BYTES = 20 << 20
# Label Studio's own media: uploads and Local Files storage (never its API).
UPLOAD_PREFIX = "/data/upload/"
LOCAL_FILES_PATH = "/data/local-files/"


class ImageRefused(InvalidImage):
    """A task image URL this server will not read (not Label Studio's media, nor an allowed
    host); nothing was sent anywhere."""


class TaskImages:
    """Reads task images for the backend's `/predict` (thread-safe; one client, kept open).

    A task's image is read only from the connected Label Studio's own media paths
    (`/data/upload/...`, `/data/local-files/?d=...`, relative or on its own origin), from a
    `data:` URL, or from the http(s) hosts named in `[serve] image_hosts`. Anything else (an
    API path, another host, a loopback or link-local address that is not the connected Label
    Studio) is refused before any request leaves. Each read is one try with a short timeout.
    """

    def __init__(
        self,
        client: LabelStudioClient | None,
        local: LocalFiles | None,
        hosts: Sequence[str] = (),
        *,
        max_bytes: int = MAX_IMAGE_BYTES,
    ) -> None:
        self.client = client
        self.local = local
        self.hosts = frozenset(h.lower() for h in hosts)
        self.max_bytes = max_bytes
        self._origin = _origin(client.url) if client is not None else None
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    def read(self, url: str) -> bytes:
        try:
            return self._read(url)
        except ValueError:  # urllib's word for a URL it cannot split (`http://[::1`)
            raise ImageRefused(f"not read: {_shown(url)} is not a valid URL") from None

    def _read(self, url: str) -> bytes:
        if url.startswith("data:"):
            try:
                # A data: URL is decoded in place; the client is never used for it.
                return _read_image(cast(LabelStudioClient, None), url)
            except _ImageUnavailable as exc:
                raise InvalidImage(str(exc)) from None
        path = self._media_path(url)
        if path is not None:
            return self._read_media(path)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageRefused(
                f"not read: {_shown(url)} is not one of Label Studio's media paths "
                f"({UPLOAD_PREFIX}..., {LOCAL_FILES_PATH}?d=...)"
            )
        return self._read_external(url)

    def _media_path(self, url: str) -> str | None:
        """The media path to ask the connected Label Studio for, for a relative URL or one on its
        own origin; None for a URL on another origin. A relative URL that is not a media path
        (an API path, `..`) is refused."""
        parts = urlsplit(url)
        if parts.scheme or parts.netloc:
            if self._origin is None or _origin(url) != self._origin:
                return None
            base_path = urlsplit(cast(LabelStudioClient, self.client).url).path.rstrip("/")
            if not parts.path.startswith(base_path + "/"):
                raise ImageRefused(f"not read: {_shown(url)} is not one of Label Studio's media")
            parts = parts._replace(path=parts.path[len(base_path) :])
        path = _canonical_media(parts.path, parts.query, parts.fragment)
        if path is None:
            raise ImageRefused(
                f"not read: {_shown(url)} is not one of Label Studio's media paths "
                f"({UPLOAD_PREFIX}..., {LOCAL_FILES_PATH}?d=...)"
            )
        return path

    def _read_media(self, path: str) -> bytes:
        if self.local is not None:
            data = _read_local(self.local, path)
            if data is not None:
                return data
        if self.client is None:
            raise LabelStudioError("no Label Studio connection is configured to read task images.")
        response = self.client.request("GET", path)
        if response.status_code >= 400:
            raise InvalidImage(f"Label Studio answered HTTP {response.status_code} for {path}")
        return response.content

    def _read_external(self, url: str) -> bytes:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ImageRefused(f"not read: {_shown(url)} has no valid port") from None
        if parts.username is not None or parts.password is not None:
            raise ImageRefused(f"not read: {_shown(url)} carries credentials")
        if host not in self.hosts and f"{host}:{port}" not in self.hosts:
            raise ImageRefused(
                f"not read: {host} is not Label Studio nor a host named in [serve] image_hosts"
            )
        address = _public_address(host, port)
        # Connect to the address just checked (not a second lookup that could answer another);
        # the Host header and TLS name stay the URL's own.
        pinned = httpx.URL(url).copy_with(host=address)
        headers = {"Host": parts.netloc.rpartition("@")[2]}
        try:
            with self._external_client().stream(
                "GET", pinned, headers=headers, extensions={"sni_hostname": host}
            ) as response:
                if response.status_code >= 400:
                    raise InvalidImage(f"HTTP {response.status_code} from {host}")
                if response.status_code >= 300:
                    raise InvalidImage(f"{host} answered a redirect, which is not followed")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise InvalidImage(
                            f"the image from {host} is over {self.max_bytes:,} bytes"
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"cannot download from {host} ({type(exc).__name__})") from None

    def _external_client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=httpx.Timeout(READ_SECONDS, connect=3.0),
                    follow_redirects=False,
                    trust_env=False,
                )
            return self._http

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self._http is not None:
            self._http.close()


def _canonical_media(path: str, query: str, fragment: str) -> str | None:
    """`path?query` rebuilt as one of Label Studio's media paths, or None when it is none: an
    upload under /data/upload/, or a Local Files path relative to its root, without `..`."""
    if fragment or "\\" in path:
        return None
    if path.startswith(UPLOAD_PREFIX) and not query:
        rel = unquote(path[len(UPLOAD_PREFIX) :])
    elif path == LOCAL_FILES_PATH:
        fields = parse_qs(query, keep_blank_values=True)
        if list(fields) != ["d"] or len(fields["d"]) != 1:
            return None
        rel = fields["d"][0]
    else:
        return None
    segments = rel.split("/")
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or any(ord(c) < 32 for c in rel)
        or any(s in ("", ".", "..") for s in segments)
    ):
        return None
    if path == LOCAL_FILES_PATH:
        return f"{LOCAL_FILES_PATH}?{urlencode({'d': rel}, quote_via=quote, safe='/')}"
    return UPLOAD_PREFIX + quote(rel, safe="/")


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port


def _public_address(host: str, port: int) -> str:
    """The address to connect to for an allowed host: refused when any address it resolves to is
    loopback, link-local, unspecified or multicast (this machine or its cloud's metadata)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise LabelStudioError(f"cannot resolve {host} ({exc})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
    for address in addresses:
        plain = getattr(address, "ipv4_mapped", None) or address
        if plain.is_loopback or plain.is_link_local or plain.is_unspecified or plain.is_multicast:
            raise ImageRefused(
                f"not read: {host} resolves to {address}, a loopback or link-local address"
            )
    if not addresses:
        raise LabelStudioError(f"cannot resolve {host}")
    return str(addresses[0])


def _shown(url: str) -> str:
    return repr(url[:80])


def task_images(settings: Settings) -> TaskImages:
    """A reader through the saved connection (none configured: `data:` URLs and the allowed
    hosts only), with one try and a short timeout per image."""
    ls = settings.labelstudio
    hosts = settings.serve_image_hosts
    if not ls.url or ls.token is None:
        return TaskImages(None, None, hosts)
    hint = LOCAL_DOWN_HINT if is_local_server(settings) else None
    client = LabelStudioClient(
        ls.url,
        ls.token,
        timeout=READ_SECONDS,
        attempts=READ_ATTEMPTS,
        unreachable_hint=hint,
    )
    return TaskImages(client, local_files(settings), hosts)
