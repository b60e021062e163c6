"""The Label Studio client's retries: reads are retried, writes only where the server cannot have
acted on them (a retried import after a 500 made duplicate annotations).

A real HTTP server on loopback answers as told; no Label Studio is needed for the policy.
"""

from __future__ import annotations

import http.server
from collections import Counter
from typing import Any

import pytest

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient
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
