"""A real Label Studio for the tests: one template data folder per session, copies per module.

The first start runs Django migrations (~30 s); a copy of the initialised folder starts in a few
seconds. Each server runs on a free loopback port with a clean environment and is stopped by pid.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.config import build_label_config
from annotate2model.labelstudio.server import LocalServer, free_port
from annotate2model.settings import Secret
from tests.conftest import image_bytes

ADMIN = "admin@a2m.local"
PASSWORD = "test-password-123"
# A legacy token (40 characters, the Django REST framework key length).
LEGACY_TOKEN = "a2mtest0legacy0token0123456789abcdef0123"


@dataclass
class LiveServer:
    url: str
    server: LocalServer
    pat: str
    # The only folder the server reads Local Files from.
    files_root: Path

    @property
    def legacy(self) -> str:
        return LEGACY_TOKEN

    def client(self, token: str | None = None, **kwargs: Any) -> LabelStudioClient:
        return LabelStudioClient(self.url, Secret(token or LEGACY_TOKEN), **kwargs)

    def create_project(self, labels: list[str], title: str = "test project") -> int:
        with self.client() as c:
            return c.create_project(title, build_label_config(labels)).id

    def local_files_project(
        self, name: str, n: int, seed: int, size: tuple[int, int] = (48, 48)
    ) -> int:
        """A project of `n` tasks labeled a, b, a, ... whose images are the server's Local Files
        (PNGs under files_root/`name`, drawn from seeds `seed`, `seed` + 1, ...)."""
        folder = self.files_root / name
        folder.mkdir()
        for i in range(n):
            (folder / f"{i}.png").write_bytes(image_bytes(seed + i, size=size))
        project = self.create_project(["a", "b"])
        with self.client() as c:
            assert c.add_local_storage(project, str(folder))
            c.import_tasks(
                project,
                [
                    {
                        "data": {"image": f"/data/local-files/?d={name}/{i}.png"},
                        "annotations": [choice("ab"[i % 2])],
                    }
                    for i in range(n)
                ],
            )
        return project

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.client() as c:
            response = c.request(method, path, **kwargs)
            assert response.status_code < 400, response.text[:500]
            return response.json() if response.content else None


def _start(root: Path, files_root: Path | None = None) -> LocalServer:
    server = LocalServer(root)
    server.start(
        username=ADMIN,
        password=PASSWORD,
        token=LEGACY_TOKEN,
        port=free_port(),
        files_root=files_root,
    )
    return server


@pytest.fixture(scope="session")
def ls_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An initialised Label Studio data folder (admin, legacy token, a PAT), server stopped."""
    root = tmp_path_factory.mktemp("ls-template")
    server = _start(root)
    try:
        status = server.status()
        response = httpx.post(
            f"{status.url}/api/token/",
            headers={"Authorization": f"Token {LEGACY_TOKEN}"},
            timeout=30,
        )
        response.raise_for_status()
        pat = str(response.json()["token"])
    finally:
        server.stop()
    return root, pat


def copy_server(template: tuple[Path, str], target: Path) -> tuple[Path, str]:
    root, pat = template
    shutil.copytree(root, target, symlinks=True)
    (target / "server.json").unlink(missing_ok=True)
    (target / "server.log").unlink(missing_ok=True)
    return target, pat


@pytest.fixture(scope="module")
def ls_server(
    ls_template: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A running server of its own for one test module."""
    root, pat = copy_server(ls_template, tmp_path_factory.mktemp("ls") / "labelstudio")
    files_root = tmp_path_factory.mktemp("local-files")
    server = _start(root, files_root)
    status = server.status()
    assert status.url is not None
    try:
        yield LiveServer(url=status.url, server=server, pat=pat, files_root=files_root)
    finally:
        server.stop()


def choice(label: str, **extra: object) -> dict[str, object]:
    """One annotation choosing `label`, in the shape Label Studio imports (extra keys merged)."""
    return {
        "result": [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
        **extra,
    }


@contextlib.contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real threaded HTTP server on a free loopback port; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


# A request as a proxy sees it: (method, path with query, body).
Request = tuple[str, str, bytes]
# Headers a proxy does not pass on: it sends the body whole, with its own length.
_HOP_HEADERS = ("host", "content-length", "transfer-encoding", "connection", "content-encoding")


@contextlib.contextmanager
def forwarding_proxy(
    upstream: str,
    on_request: Callable[[Request], tuple[int, bytes] | None],
    on_answer: Callable[[Request], None] | None = None,
) -> Iterator[str]:
    """A real HTTP proxy in front of Label Studio on a loopback port; yields its base URL.

    `on_request` sees each request first: a (status, body) answers it in Label Studio's place (as
    a reverse proxy answers for a failing or dead server), None passes it on. `on_answer` sees
    each request Label Studio answered, before its answer goes back."""

    class Proxy(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in _HOP_HEADERS:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = (self.command, self.path, self.rfile.read(length) if length else b"")
            instead = on_request(request)
            if instead is not None:
                self._reply(*instead, {})
                return
            answer = httpx.request(
                self.command,
                upstream + self.path,
                headers={k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS},
                content=request[2] or None,
                timeout=60,
            )
            if on_answer is not None:
                on_answer(request)
            self._reply(answer.status_code, answer.content, dict(answer.headers))

        do_GET = do_POST = do_PATCH = do_DELETE = _forward

    with serve_http(Proxy) as base:
        yield base


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving a folder: (base URL, folder)."""
    folder = tmp_path_factory.mktemp("served")

    class Handler(_Quiet):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

    with serve_http(Handler) as base:
        yield base, folder
