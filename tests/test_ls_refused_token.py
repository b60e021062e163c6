"""A token Label Studio refuses (401) or a user it forbids (403) comes with a hint: how to get
and give a new token without showing it on the command line (issue 25)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient, TokenRejected
from annotate2model.settings import Secret


def _client_answering(monkeypatch: pytest.MonkeyPatch, status: int) -> LabelStudioClient:
    client = LabelStudioClient("http://127.0.0.1:9", Secret("0" * 40))

    def send(method: str, path: str, **_: Any) -> httpx.Response:
        request = httpx.Request(method, f"http://127.0.0.1:9{path}")
        if path == "/health":
            return httpx.Response(200, json={"status": "UP"}, request=request)
        return httpx.Response(status, json={"detail": "Invalid token."}, request=request)

    monkeypatch.setattr(client, "_send", send)
    return client


def test_a_refused_token_hints_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client_answering(monkeypatch, 401)
    with pytest.raises(TokenRejected) as caught:
        client.json("GET", "/api/projects/1/", "read the project")
    assert "rejected the legacy API token" in caught.value.message
    hint = caught.value.hint or ""
    assert "Personal Access Token" in hint and "Account & Settings" in hint
    assert "`a2m connect --token -`" in hint and "`a2m studio up`" in hint
    assert "0" * 40 not in hint + caught.value.message


def test_a_forbidden_request_hints_the_tokens_user(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client_answering(monkeypatch, 403)
    with pytest.raises(LabelStudioError) as caught:
        client.json("GET", "/api/projects/1/", "read the project")
    assert "HTTP 403" in caught.value.message
    assert "a2m connect --token -" in (caught.value.hint or "")
