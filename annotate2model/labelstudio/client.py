"""Talking to a Label Studio server: both token kinds, retries with backoff, paged task listing.

The hot paths (task listing, image bytes) use httpx directly with `Connection: close`, which halves
per-call latency against Label Studio's development server. The token lives in a `Secret` and is
only ever placed in a request header; no message built here contains it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from annotate2model.errors import LabelStudioError
from annotate2model.settings import Secret

# Errors worth another attempt: the server restarting, slow, or answering 5xx / 429.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# A request that may change something (POST, PATCH) is sent again only when the server surely did
# not act on it: the connection was refused, or it answered "too many requests" / "unavailable".
# After a timeout, a dropped connection or a 500 it may have acted (a retried import after
# "database is locked" made duplicate annotations), so the caller decides what to do next.
SAFE_RETRY_STATUS = frozenset({429, 503})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
DEFAULT_ATTEMPTS = 6
DEFAULT_BACKOFF = 0.5
# Answers that one URL failing can give while the server itself is fine: Label Studio answers
# 500 for an uploaded file missing from its disk, a proxy 502 / 504 for one slow file. A request
# made with `status_attempts` (a media file) stops retrying them after that many answers and
# returns the last one, so the caller can ask /health whether the server is up (`server_up`)
# instead of spending the whole back-off meant for a server that restarts. 429 and 503 speak
# for the whole server and keep the full back-off.
PATH_FAILURE_STATUS = frozenset({500, 502, 504})
# How long one look at /health stands for the failures around it (`server_up`).
HEALTH_FRESH_S = 2.0
# Attempts while the server has never answered this client: a stopped server or a wrong URL is
# said within a second, instead of after the ~16 s of back-off meant for a server that restarts.
FIRST_CONTACT_ATTEMPTS = 2
PAGE_SIZE = 500
# Task ids per `selectedItems` request: about 2 KB of URL, well inside any proxy's limit.
ID_CHUNK = 200
# Personal access tokens yield 5-minute access tokens; refresh a little before they expire.
ACCESS_TOKEN_SECONDS = 240


def token_kind(token: str) -> str:
    """ "pat" for a personal access token (a JWT), "legacy" for a classic API token."""
    parts = token.split(".")
    return "pat" if len(parts) == 3 and token.startswith("eyJ") else "legacy"


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    title: str
    label_config: str
    task_count: int
    # The server's clock when it answered (its Date header; ISO 8601 UTC as Label Studio writes
    # `updated_at`); None when it sent none.
    server_time: str | None = None


class ServerUnreachable(LabelStudioError):
    """The server never answered this client: nothing listens at the URL, or its name is unknown.

    `hint` says what to do: the caller that knows whose server it is (the workspace's own, which
    a command starts) passes its own words; otherwise it asks whether the server runs.
    """

    def __init__(self, url: str, why: str, hint: str | None = None) -> None:
        super().__init__(
            f"cannot reach Label Studio at {url}: it did not answer ({why}).",
            hint=hint or "is the server running, and is the URL right?",
        )
        self.url = url
        # In a few words: "connection refused", or the system's words for a name it cannot find.
        self.why = why


# What to do about a refused token: a new one, given without showing it on the command line.
TOKEN_HINT = (
    "create a Personal Access Token in Label Studio (Account & Settings) and run "
    "`a2m connect --token -`; for this workspace's own Label Studio, `a2m studio up`."
)
# A 403: the token is good, its user may not do this.
FORBIDDEN_HINT = (
    "the token's user may lack access to this project: connect with a token of one of its "
    "members (`a2m connect --token -`), or ask its owner to add the user."
)


class TokenRejected(LabelStudioError):
    """The server answered, and refused the token (wrong, expired, revoked, or of a kind it has
    switched off); the message says which kind of token and why, the hint how to get another."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or TOKEN_HINT)


class LabelStudioClient:
    """One server, one token. Thread-safe: image downloads run on several threads at once."""

    def __init__(
        self,
        url: str,
        token: Secret,
        *,
        timeout: float = 30.0,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        unreachable_hint: str | None = None,
    ) -> None:
        """`unreachable_hint`: what to do when the server never answers (see ServerUnreachable)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise LabelStudioError(f"{url!r} is not an http(s) URL of a Label Studio server.")
        self.url = url.rstrip("/")
        self.kind = token_kind(token.reveal())
        self._token = token
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._unreachable_hint = unreachable_hint
        # Set by the first answer of any kind: from then on a refused connection is a server
        # restarting, worth the whole back-off.
        self._answered = False
        self._access: str | None = None
        self._access_at = 0.0
        self._lock = threading.Lock()
        # Whether the server narrows whole tasks to the fields asked for (see `_full_params`);
        # cleared by the first answer that shows it does not.
        self._narrowing = True
        # The last look at /health: (monotonic time, whether it answered UP); see `server_up`.
        self._health: tuple[float, bool] | None = None
        self._health_lock = threading.Lock()
        # Not the SDK's client: Label Studio's dev server answers `Connection: close` twice as fast.
        self._http = httpx.Client(
            timeout=timeout,
            headers={"Connection": "close"},
            limits=httpx.Limits(max_keepalive_connections=0, max_connections=32),
            follow_redirects=False,
        )

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- authentication --------------------------------------------------------------------

    def _auth_header(self, force_refresh: bool = False) -> dict[str, str]:
        if self.kind == "legacy":
            return {"Authorization": f"Token {self._token.reveal()}"}
        with self._lock:
            stale = time.monotonic() - self._access_at > ACCESS_TOKEN_SECONDS
            if self._access is None or stale or force_refresh:
                response = self._send(
                    "POST",
                    "/api/token/refresh/",
                    idempotent=True,
                    json={"refresh": self._token.reveal()},
                )
                if response.status_code in (400, 401, 403):
                    raise TokenRejected(
                        f"Label Studio at {self.url} rejected the personal access token "
                        "(expired, revoked or from another server); create a new one under "
                        "Account & Settings."
                    )
                self._check(response, "refresh the access token")
                self._access = str(response.json()["access"])
                self._access_at = time.monotonic()
            return {"Authorization": f"Bearer {self._access}"}

    # -- transport ---------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        attempts: int | None = None,
        idempotent: bool | None = None,
        status_attempts: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request with bounded retries on connection errors, timeouts and 5xx; a request
        that is not `idempotent` (default: POST and PATCH are not) only where it cannot have
        been acted on. `status_attempts`: after that many answers of a `PATH_FAILURE_STATUS`,
        the last such answer is returned instead of retried (connection errors keep the whole
        back-off)."""
        # Not the SDK's retries: it sends a POST again after a 500 or a dropped connection.
        target = path if path.startswith("http") else f"{self.url}{path}"
        last = ""
        attempts = attempts or self._attempts
        safe = method.upper() in IDEMPOTENT if idempotent is None else idempotent
        failed_answers = 0
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self._backoff * 2 ** (attempt - 1), 8.0))
            try:
                response = self._http.request(method, target, **kwargs)
            except httpx.ConnectError as exc:
                last = _refused(exc)
                if not self._answered and attempt + 1 >= min(attempts, FIRST_CONTACT_ATTEMPTS):
                    raise ServerUnreachable(self.url, last, self._unreachable_hint) from None
                continue
            except httpx.TimeoutException as exc:
                last = "timed out"
                if safe or isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                    continue
                raise self._maybe_applied(method, target, last) from None
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                last = f"connection dropped ({type(exc).__name__})"
                if safe:
                    continue
                raise self._maybe_applied(method, target, last) from None
            except httpx.HTTPError as exc:
                raise LabelStudioError(
                    f"cannot reach Label Studio at {self.url}: {type(exc).__name__}."
                ) from None
            self._answered = True
            if response.status_code in (RETRY_STATUS if safe else SAFE_RETRY_STATUS):
                last = f"HTTP {response.status_code}"
                if status_attempts is not None and response.status_code in PATH_FAILURE_STATUS:
                    failed_answers += 1
                    if failed_answers >= status_attempts:
                        return response
                continue
            return response
        raise LabelStudioError(
            f"Label Studio at {self.url} did not answer {method} {urlsplit(target).path} after "
            f"{attempts} attempts (last: {last}); check that it is running and retry."
        )

    def _maybe_applied(self, method: str, target: str, why: str) -> LabelStudioError:
        return LabelStudioError(
            f"Label Studio at {self.url} did not finish answering {method} "
            f"{urlsplit(target).path} ({why}); it may or may not have applied it, so it was not "
            "sent again. Run the command again once the server answers: it reads what is there "
            "before writing."
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An authenticated request; a PAT's access token is refreshed once on a 401.

        Keyword arguments go to httpx, but for `status_attempts` (see `_send`)."""
        headers = dict(kwargs.pop("headers", {}) or {})
        response = self._send(method, path, headers={**headers, **self._auth_header()}, **kwargs)
        if response.status_code == 401 and self.kind == "pat":
            fresh = self._auth_header(force_refresh=True)
            response = self._send(method, path, headers={**headers, **fresh}, **kwargs)
        if response.status_code == 401:
            raise TokenRejected(self._rejected_message(response))
        return response

    def _rejected_message(self, response: httpx.Response) -> str:
        detail = _detail(response)
        if self.kind == "legacy" and "legacy" in detail.lower():
            return (
                f"Label Studio at {self.url} has legacy tokens switched off; use a personal "
                "access token, or enable legacy tokens in Organization > API Tokens Settings."
            )
        what = "legacy API token" if self.kind == "legacy" else "personal access token"
        return f"Label Studio at {self.url} rejected the {what} ({detail or 'HTTP 401'})."

    def _check(self, response: httpx.Response, doing: str) -> None:
        if response.status_code < 400:
            return
        raise LabelStudioError(
            f"Label Studio at {self.url} refused to {doing}: HTTP {response.status_code} "
            f"{_detail(response)}".rstrip(" .")
            + ".",
            hint=FORBIDDEN_HINT if response.status_code == 403 else None,
        )

    def json(self, method: str, path: str, doing: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        self._check(response, doing)
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(
                f"{self.url} answered {path} with something that is not JSON; is it a Label "
                "Studio server?"
            ) from None

    # -- checks and projects -----------------------------------------------------------------

    def health(self) -> None:
        """Reach the server (no token needed); ServerUnreachable when nothing answers, a
        LabelStudioError when what answers is no Label Studio."""
        try:
            # Two attempts, not six: a wrong URL should not take 15 s of back-off to report.
            health = self._send("GET", "/health", attempts=2)
        except ServerUnreachable:
            raise
        except LabelStudioError:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url}; is the URL right and the server up?"
            ) from None
        if not _says_up(health):
            raise LabelStudioError(
                f"{self.url} does not look like a Label Studio server (/health answered HTTP "
                f"{health.status_code})."
            )

    def server_up(self) -> bool:
        """Whether the server answers /health with UP: told apart from one URL failing, the
        server being down. One look (two attempts at most) stands for `HEALTH_FRESH_S`, so that
        many failing URLs at once cost one look, not one each; callers on other threads wait
        for the look under way."""
        with self._health_lock:
            if self._health is not None and time.monotonic() - self._health[0] < HEALTH_FRESH_S:
                return self._health[1]
            try:
                answer = self._send("GET", "/health", attempts=2)
                up = _says_up(answer)
            except LabelStudioError:
                up = False
            self._health = (time.monotonic(), up)
            return up

    def check(self) -> dict[str, Any]:
        """Reach the server and check the token; returns the user it belongs to (TokenRejected
        when the server refuses the token)."""
        self.health()
        user = self.json("GET", "/api/current-user/whoami", "identify the token's user")
        return dict(user)

    def version(self) -> str | None:
        """The server's release ("1.23.2"), or None when it does not say."""
        response = self.request("GET", "/api/version/")
        if response.status_code != 200:
            return None
        try:
            release = response.json().get("release")
        except (ValueError, AttributeError):
            return None
        return str(release) if release else None

    def project(self, project_id: int) -> ProjectInfo:
        response = self.request("GET", f"/api/projects/{project_id}")
        if response.status_code == 404:
            raise LabelStudioError(
                f"Label Studio at {self.url} has no project {project_id} (or this token cannot "
                "see it)."
            )
        self._check(response, f"read project {project_id}")
        data = response.json()
        return ProjectInfo(
            id=int(data["id"]),
            title=str(data.get("title") or ""),
            label_config=str(data.get("label_config") or ""),
            task_count=int(data.get("task_number") or 0),
            server_time=_server_time(response),
        )

    def create_project(self, title: str, label_config: str) -> ProjectInfo:
        data = self.json(
            "POST",
            "/api/projects",
            "create the project",
            json={"title": title, "label_config": label_config},
        )
        return self.project(int(data["id"]))

    # -- tasks -------------------------------------------------------------------------------

    # Not the SDK's tasks.list: a pydantic model per task, and blind to an ignored `include`.
    def task_pages(
        self,
        project_id: int,
        *,
        updated_after: str | None = None,
        ids_only: bool = False,
        include: str | None = None,
        page_size: int = PAGE_SIZE,
        fields: Sequence[str] | None = None,
        first_page: int | None = None,
        filters: Sequence[dict[str, Any]] = (),
    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Pages of tasks as (total, tasks); optionally only those updated after a timestamp
        and those that pass the Data Manager `filters` items (all of them).

        `ids_only` / `include`: the task's own columns only (no annotations). Otherwise whole
        tasks, annotations included; `fields` narrows them (tasks and their annotations) to the
        keys named, which Label Studio answers much faster (see `_full_params`).
        `first_page`: a smaller first page, the next ones growing to `page_size`.
        """
        items = list(filters)
        if updated_after:
            items.append(
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater",
                    "type": "Datetime",
                    "value": updated_after,
                }
            )
        query = {"filters": {"conjunction": "and", "items": items}} if items else None
        if ids_only or include:
            params = {"include": include or "id,updated_at"}
        else:
            params = self._full_params(fields)
        yield from self._pages(project_id, query, params, page_size, first_page)

    def tasks_by_id(
        self,
        project_id: int,
        task_ids: Iterable[int],
        *,
        chunk: int = ID_CHUNK,
        fields: Sequence[str] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Full tasks (annotations included) of the given ids, `chunk` ids per request; `fields`
        narrows them as in `task_pages`.

        Uses the Data Manager's `selectedItems`, so a few changed tasks of a large project cost
        one short request instead of a listing of everything; ids that no longer exist are
        simply absent from the answer.
        """
        ordered = sorted(set(task_ids))
        params = self._full_params(fields)
        for start in range(0, len(ordered), chunk):
            part = ordered[start : start + chunk]
            query = {"selectedItems": {"all": False, "included": part}}
            for _total, page in self._pages(project_id, query, params, len(part)):
                yield page

    def _full_params(self, fields: Sequence[str] | None) -> dict[str, str]:
        """Whole tasks, annotations included (`fields=all`), narrowed to `fields` when given.

        `include` names the keys to keep, and Label Studio applies it to each task and to its
        annotations alike; the Data Manager then skips serializing the rest (drafts, predictions,
        annotators, comment authors...), most of its time: 150 tasks in 0.29 s instead of
        0.6-0.9 s, 2,000 in 3.9 s instead of 9.5 s.
        """
        params = {"fields": "all"}
        if fields and self._narrowing:
            params["include"] = ",".join(fields)
        return params

    def _pages(
        self,
        project_id: int,
        query: dict[str, Any] | None,
        params: dict[str, str],
        page_size: int,
        first_page: int | None = None,
    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Pages of `page_size` tasks; with `first_page`, the first is that small and the next
        ones double (each a whole page of its size: 50, 50, 100, 200, 400, 400... for a
        first page of 50 and pages of 500), so that a caller can work on the first tasks early."""
        size = min(first_page or page_size, page_size)
        base: dict[str, Any] = {"project": project_id, **params}
        if query is not None:
            # Compact JSON: ids in selectedItems make the URL long enough as it is.
            base["query"] = json.dumps(query, separators=(",", ":"))
        narrowed = base.get("fields") == "all" and "include" in base
        page = 1
        seen = 0
        while True:
            response = self.request(
                "GET", "/api/tasks", params={**base, "page_size": size, "page": page}
            )
            if response.status_code == 404 and page > 1:
                return  # "Invalid page.": past the end
            self._check(response, f"list the tasks of project {project_id}")
            body = response.json()
            tasks = list(body.get("tasks") or [])
            total = int(body.get("total") or 0)
            if narrowed and not _whole_answers(tasks, str(base["include"]).split(",")):
                # A server that narrows differently (its annotations without their result):
                # whole tasks from here on, this page again.
                self._narrowing = narrowed = False
                del base["include"]
                continue
            if not tasks:
                return
            yield total, tasks
            seen += len(tasks)
            if seen >= total or len(tasks) < size:
                return
            # The tasks before the next page; a larger page must start exactly there.
            offset = page * size
            if size * 2 <= page_size and offset % (size * 2) == 0:
                size *= 2
            page = offset // size + 1

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Create tasks (with inline annotations or predictions); returns their ids."""
        data = self.json(
            "POST",
            f"/api/projects/{project_id}/import",
            "import tasks",
            params={"return_task_ids": "true"},
            json=tasks,
        )
        return [int(i) for i in data.get("task_ids") or []]

    def upload_file(self, project_id: int, name: str, data: bytes) -> str:
        """Upload bytes without making a task; returns the `/data/upload/...` URL to use."""
        body = self.json(
            "POST",
            f"/api/projects/{project_id}/import",
            f"upload {name}",
            params={"commit_to_project": "false"},
            files={"file": (name, data)},
        )
        ids = body.get("file_upload_ids") or []
        if not ids:
            raise LabelStudioError(f"Label Studio did not keep the upload of {name}.")
        info = self.json("GET", f"/api/import/file-upload/{ids[0]}", f"locate upload {name}")
        return "/data/" + str(info["file"]).lstrip("/")

    def add_local_storage(self, project_id: int, path: str) -> bool:
        """Attach a Local Files storage for `path`; False when the server cannot see it."""
        response = self.request(
            "POST",
            "/api/storages/localfiles",
            json={
                "project": project_id,
                "path": path,
                "title": f"a2m {path}"[:250],
                "use_blob_urls": True,
                "regex_filter": "",
            },
        )
        return response.status_code < 300

    def local_storages(self, project_id: int) -> list[str]:
        data = self.json(
            "GET",
            "/api/storages/localfiles",
            "list Local Files storages",
            params={"project": project_id},
        )
        return [str(s.get("path")) for s in data or []]

    def get_external(self, url: str) -> bytes:
        """Bytes of an http(s) image URL outside Label Studio (no token sent; two attempts)."""
        last = ""
        for attempt in range(2):
            if attempt:
                time.sleep(self._backoff)
            try:
                response = self._http.get(url)
            except httpx.HTTPError as exc:
                last = type(exc).__name__
                continue
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise LabelStudioError(f"HTTP {response.status_code} from {_host(url)}")
            return response.content
        raise LabelStudioError(f"cannot download from {_host(url)} ({last})")


def _whole_answers(tasks: list[dict[str, Any]], fields: Sequence[str]) -> bool:
    """Whether tasks asked for with `include=fields` carry every task key asked for and, when
    annotations were asked for, each annotation its id and result (the keys a sync cannot do
    without)."""
    task_keys = {"id", "data", "updated_at", "annotations"}.intersection(fields)
    for task in tasks:
        if not task_keys.issubset(task):
            return False
        if "annotations" in task_keys:
            for annotation in task.get("annotations") or []:
                if not isinstance(annotation, dict) or not {"id", "result"}.issubset(annotation):
                    return False
    return True


def _says_up(health: httpx.Response) -> bool:
    """Whether an answer of /health is Label Studio's `{"status": "UP"}`."""
    return health.status_code == 200 and '"UP"' in health.text.replace("'", '"')


def _refused(exc: httpx.ConnectError) -> str:
    """A connection error in a few words: "connection refused", or the system's own words."""
    text = str(exc)
    if "refused" in text.lower() or not text:
        return "connection refused"
    # "[Errno -2] Name or service not known" -> "Name or service not known"
    return text.split("] ", 1)[-1][:120]


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        errors = body.get("validation_errors")
        if isinstance(errors, dict) and errors:
            # {"title": ["Ensure this field has at least 3 characters."]} -> "title: Ensure ..."
            return "; ".join(
                f"{key}: {' '.join(str(m) for m in (msgs if isinstance(msgs, list) else [msgs]))}"
                for key, msgs in errors.items()
            )[:300]
        detail = body.get("detail") or errors or ""
        return str(detail)[:300]
    return ""


def _server_time(response: httpx.Response) -> str | None:
    try:
        when = parsedate_to_datetime(response.headers.get("date", ""))
    except (TypeError, ValueError):
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _host(url: str) -> str:
    return urlsplit(url).netloc or url[:60]
