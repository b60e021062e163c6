"""The Label Studio client's retries: reads are retried, writes only where the server cannot have
acted on them (a retried import after a 500 made duplicate annotations); a server that never
answered is reported at once, one that answered before gets the whole back-off.

A real HTTP server on loopback answers as told; no Label Studio is needed for the policy.
"""

from __future__ import annotations

import http.server
from collections import Counter
from typing import Any

import pytest

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio import client as client_module
from annotate2model.labelstudio.client import LabelStudioClient, ServerUnreachable
from annotate2model.labelstudio.server import free_port
from annotate2model.settings import Secret
from tests.labelstudio.conftest import serve_http

# path -> what to do on each arrival, in order ("ok", "500", "503", "drop"); then "ok".
PLAN: dict[str, list[str]] = {}
SEEN: Counter[str] = Counter()


class Scripted(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        key = f"{self.command} {self.path.split('?')[0]}"
        n = SEEN[key]
        SEEN[key] += 1
        steps = PLAN.get(key, [])
        step = steps[n] if n < len(steps) else "ok"
        if step == "drop":  # the request arrived; the answer never comes
            self.close_connection = True
            self.connection.shutdown(2)
            return
        status = 200 if step == "ok" else int(step)
        body = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer


@pytest.fixture
def client() -> Any:
    PLAN.clear()
    SEEN.clear()
    with serve_http(Scripted) as url:
        c = LabelStudioClient(url, Secret("legacy-token-123"), backoff=0.01)
        yield c
        c.close()


def test_reads_are_retried_on_5xx_and_dropped_connections(client: LabelStudioClient) -> None:
    PLAN["GET /api/tasks"] = ["500", "drop", "503"]
    assert client.request("GET", "/api/tasks").status_code == 200
    assert SEEN["GET /api/tasks"] == 4


def test_a_write_is_not_sent_twice_after_a_500_or_a_dropped_answer(
    client: LabelStudioClient,
) -> None:
    PLAN["POST /api/projects/1/import"] = ["500"]
    assert client.request("POST", "/api/projects/1/import", json=[]).status_code == 500
    assert SEEN["POST /api/projects/1/import"] == 1
    PLAN["PATCH /api/tasks/5"] = ["drop"]
    with pytest.raises(LabelStudioError, match="may or may not have applied it"):
        client.request("PATCH", "/api/tasks/5", json={"data": {}})
    assert SEEN["PATCH /api/tasks/5"] == 1


def test_a_write_refused_before_acting_is_retried(client: LabelStudioClient) -> None:
    PLAN["POST /api/predictions"] = ["503", "429"]
    assert client.request("POST", "/api/predictions", json={}).status_code == 200
    assert SEEN["POST /api/predictions"] == 3


def test_a_server_that_never_answered_is_reported_at_once_with_its_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stopped server used to cost six attempts and ~16 s of back-off before a word was said.
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    url = f"http://127.0.0.1:{free_port()}"
    with (
        LabelStudioClient(url, Secret("legacy-token-123")) as c,
        pytest.raises(ServerUnreachable) as info,
    ):
        c.request("GET", "/api/projects/1")
    assert url in info.value.message and "connection refused" in info.value.message
    assert info.value.hint is not None and "running" in info.value.hint
    assert len(slept) <= 1 and sum(slept) <= 2.0
    # Whoever knows whose server it is says what starts it.
    with (
        LabelStudioClient(url, Secret("legacy-token-123"), unreachable_hint="start it") as c,
        pytest.raises(ServerUnreachable, match="cannot reach") as info,
    ):
        c.request("POST", "/api/projects", json={})
    assert info.value.hint == "start it"


def test_a_server_gone_after_answering_keeps_the_whole_back_off() -> None:
    # Once it answered, a refused connection is a server restarting: every attempt is used.
    with serve_http(Scripted) as url:
        c = LabelStudioClient(url, Secret("legacy-token-123"), attempts=4, backoff=0.01)
        assert c.request("GET", "/api/tasks").status_code == 200
    with c, pytest.raises(LabelStudioError, match="after 4 attempts") as info:
        c.request("GET", "/api/tasks")
    assert not isinstance(info.value, ServerUnreachable)
