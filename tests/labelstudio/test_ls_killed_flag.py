"""`a2m flag` killed with -9 in the middle of its push, against a real Label Studio: the store says
"push interrupted" (not "not pushed" for what Label Studio holds), the next sync settles what did
arrive, and `a2m unflag` takes everything back."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from annotate2model.labelstudio.flags import REASON_FIELD, REVIEW_TAB, REVIEW_VERSION
from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, run_cli
from tests.labelstudio.conftest import LiveServer, Request, choice, forwarding_proxy

pytestmark = [pytest.mark.labelstudio, pytest.mark.training, pytest.mark.slow]


class Killer:
    """Forwards to Label Studio; once the flag reasons are written, kills `pid` before the next
    request reaches Label Studio (the process dies before it can record the push)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.reasons_written = False
        self.killed = False
        self.lock = threading.Lock()


@pytest.fixture
def killing_proxy(ls_server: LiveServer) -> Iterator[tuple[str, Killer]]:
    state = Killer()

    def kill_after_the_reasons(_request: Request) -> tuple[int, bytes] | None:
        with state.lock:
            if state.pid is None:
                return None
            if state.reasons_written and not state.killed:
                os.kill(state.pid, signal.SIGKILL)
                state.killed = True
            return (502, b"") if state.killed else None

    def note_the_reasons(request: Request) -> None:
        _method, path, body = request
        if path.startswith("/api/dm/actions") and REASON_FIELD.encode() in body:
            with state.lock:
                state.reasons_written = True

    with forwarding_proxy(ls_server.url, kill_after_the_reasons, note_the_reasons) as base:
        yield base, state


def _flags(cli: CliRunner) -> list[dict[str, Any]]:
    code, out, err = run_cli(cli, "flags", "--json")
    assert code == 0, err
    return list(json.loads(out)["flags"])


def test_a_flag_killed_mid_push_is_known_settled_and_taken_back(
    cli: CliRunner,
    ls_server: LiveServer,
    workspace: Workspace,
    scenes_weights: Path,
    killing_proxy: tuple[str, Killer],
) -> None:
    base, killer = killing_proxy
    colours = {"ant": "#c03020", "bee": "#2040c0"}
    project = ls_server.create_project(list(colours), "killed flag")
    tasks = []
    for n in range(32):
        label = "ant" if n % 2 else "bee"
        png = image_bytes(3000 + n, size=(48, 48), color=colours[label])
        given = ("bee" if label == "ant" else "ant") if n < 5 else label
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        tasks.append({"data": {"image": url}, "annotations": [choice(given)]})
    with ls_server.client() as c:
        c.import_tasks(project, tasks)
    # a2m talks to Label Studio through the proxy, which kills the flagging process.
    code, _, err = run_cli(
        cli, "connect", base, "--token", ls_server.legacy, "--project", str(project)
    )
    assert code == 0, err
    assert run_cli(cli, "sync")[0] == 0
    code, out, err = run_cli(
        cli, "train", "--weights", str(scenes_weights), "--image-size", "32", "--json"
    )
    assert code == 0, err
    run = json.loads(out)["id"]

    flagging = subprocess.Popen(
        [sys.executable, "-m", "annotate2model", "flag", str(run), "--max", "6"],
        env={**os.environ, "A2M_HOME": str(workspace.root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with killer.lock:
        killer.pid = flagging.pid
    flagging.wait(timeout=300)
    assert flagging.returncode == -signal.SIGKILL and killer.killed, flagging.stderr
    with killer.lock:
        killer.pid = None  # the proxy forwards everything from now on

    # What Label Studio holds is not called "not pushed".
    flags = _flags(cli)
    assert flags and {f["outcome"] for f in flags} == {"push interrupted"}
    held = ls_server.api("GET", "/api/tasks", params={"project": project, "fields": "all"})
    in_ls = {
        int(t["id"])
        for t in held["tasks"]
        if t["data"].get(REASON_FIELD)
        and any(p["model_version"] == REVIEW_VERSION for p in t["predictions"])
    }
    assert in_ls == {f["task"] for f in flags}

    # The next sync finds them in Label Studio: pending, in the review tab.
    code, _, err = run_cli(cli, "sync")
    assert code == 0, err
    assert {f["outcome"] for f in _flags(cli)} == {"pending"}
    views = ls_server.api("GET", "/api/dm/views", params={"project": project})
    assert REVIEW_TAB in {v["data"]["title"] for v in views}

    code, _, err = run_cli(cli, "unflag", str(run))
    assert code == 0, err
    held = ls_server.api("GET", "/api/tasks", params={"project": project, "fields": "all"})
    assert not [t for t in held["tasks"] if t["data"].get(REASON_FIELD) or t["predictions"]]
    assert {f["outcome"] for f in _flags(cli)} == {"withdrawn"}
