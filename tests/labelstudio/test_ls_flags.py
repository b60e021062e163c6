"""Flags in a real Label Studio: what a push shows through the API, idempotency, unflag, requeue,
a server that dies halfway, and the whole `a2m flag` -> answer -> `a2m sync` -> `a2m flags` path.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.flags import (
    PushItem,
    PushResult,
    UnflagItem,
    push_flags,
    review_field,
    tab_title,
    unflag_tasks,
)
from annotate2model.settings import Secret
from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, run_cli
from tests.labelstudio.conftest import LEGACY_TOKEN, LiveServer, choice, serve_http

pytestmark = pytest.mark.labelstudio

RUN = 5
VERSION = "a2m-run-5"


def _project(ls: LiveServer, n: int, title: str) -> tuple[int, list[int]]:
    project = ls.create_project(["ant", "bee"], title)
    with ls.client() as c:
        ids = c.import_tasks(
            project,
            [
                {"data": {"image": f"https://example.invalid/{title}/{i}.png", "keep": i}}
                | {"annotations": [choice("ant", ground_truth=False)]}
                for i in range(n)
            ],
        )
    return project, ids


def _task(ls: LiveServer, task_id: int) -> dict[str, Any]:
    return dict(ls.api("GET", f"/api/tasks/{task_id}"))


def _tab_tasks(ls: LiveServer, project: int) -> set[int]:
    views = ls.api("GET", "/api/dm/views", params={"project": project})
    (view,) = [v for v in views if v["data"]["title"] == tab_title(RUN)]
    listed = ls.api(
        "GET", "/api/tasks", params={"project": project, "view": view["id"], "include": "id"}
    )
    return {int(t["id"]) for t in listed["tasks"]}


def _ours(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in task["predictions"] if p["model_version"] == VERSION]


def test_push_shows_exactly_the_flags_twice_pushed_once_and_unflag_takes_it_all_back(
    ls_server: LiveServer,
) -> None:
    project, ids = _project(ls_server, 5, "flags")
    flagged = ids[:3]
    items = [
        PushItem(
            flag_id=10 + n,
            task_id=t,
            reason="label-issue",
            score=0.9 - n / 10,
            suggested_label="bee",
        )
        for n, t in enumerate(flagged)
    ]
    with ls_server.client() as c:
        first = push_flags(c, project, RUN, items, requeue=True)
        again = push_flags(c, project, RUN, items, requeue=True)
    assert first.predictions_added == 3 and first.fields_written == 3
    assert again.predictions_added == 0  # the field is set again, to the same note
    assert again.view_id == first.view_id
    assert sorted(first.done) == [10, 11, 12]
    # Requeued once: the second push finds the drafts it made and converts nothing more.
    assert {k: v[1] for k, v in again.requeued.items()} == {
        k: v[1] for k, v in first.requeued.items()
    }

    assert _tab_tasks(ls_server, project) == set(flagged)
    for n, task_id in enumerate(flagged):
        task = _task(ls_server, task_id)
        (pred,) = _ours(task)
        assert pred["score"] == pytest.approx(0.9 - n / 10)
        assert pred["result"][0]["value"]["choices"] == ["bee"]
        note = task["data"][review_field(RUN)]
        assert "label-issue" in note and f"run {RUN}" in note and "bee" in note
        assert task["data"]["keep"] == ids.index(task_id)  # the rest of the data is untouched
        # Requeued: no annotation left, the old answer waits as a draft.
        assert task["annotations"] == []
        assert task["drafts"][0]["result"][0]["value"]["choices"] == ["ant"]
    for task_id in ids[3:]:
        task = _task(ls_server, task_id)
        assert _ours(task) == [] and review_field(RUN) not in task["data"]
        assert len(task["annotations"]) == 1
    views = ls_server.api("GET", "/api/dm/views", params={"project": project})
    assert [v["data"]["title"] for v in views].count(tab_title(RUN)) == 1
    # The requeued tasks are back in the annotator's queue.
    nxt = ls_server.api("GET", f"/api/projects/{project}/next")
    assert nxt["id"] in flagged

    # Another model's prediction on a flagged task is not ours to remove.
    other = {"task": flagged[0], **choice("ant"), "model_version": "someone-else", "score": 0.5}
    ls_server.api("POST", f"/api/projects/{project}/import/predictions", json=[other])
    undo = [UnflagItem(10 + n, t, first.requeued[10 + n][1]) for n, t in enumerate(flagged)]
    with ls_server.client() as c:
        removed = unflag_tasks(c, project, RUN, undo)
        twice = unflag_tasks(c, project, RUN, undo)
    assert (removed.predictions_removed, removed.fields_removed) == (3, 3)
    assert removed.drafts_restored == 3 and removed.tab_removed
    assert (twice.predictions_removed, twice.fields_removed, twice.drafts_restored) == (0, 0, 0)
    for task_id in flagged:
        task = _task(ls_server, task_id)
        assert _ours(task) == [] and review_field(RUN) not in task["data"]
        kept = [p["model_version"] for p in task["predictions"]]
        assert kept == (["someone-else"] if task_id == flagged[0] else [])
        (annotation,) = task["annotations"]
        assert annotation["result"][0]["value"]["choices"] == ["ant"]
        assert task["drafts"] == []
    views = ls_server.api("GET", "/api/dm/views", params={"project": project})
    assert tab_title(RUN) not in [v["data"]["title"] for v in views]


class Dying:
    """A proxy in front of Label Studio that goes down after `budget` requests (502, as a
    reverse proxy answers for a dead server)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.lock = threading.Lock()


@pytest.fixture
def dying_proxy(ls_server: LiveServer) -> Iterator[tuple[str, Dying]]:
    state = Dying(budget=10**6)
    upstream = ls_server.url

    class Proxy(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            with state.lock:
                alive = state.budget > 0
                state.budget -= 1
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else None
            if not alive:
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
            }
            answer = httpx.request(
                self.command, upstream + self.path, headers=headers, content=data, timeout=60
            )
            self.send_response(answer.status_code)
            for k, v in answer.headers.items():
                if k.lower() not in (
                    "content-length",
                    "transfer-encoding",
                    "connection",
                    "content-encoding",
                ):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_PATCH = do_DELETE = _forward

    with serve_http(Proxy) as base:
        yield base, state


def test_label_studio_dying_mid_push_is_a_clear_error_and_a_rerun_finishes_without_duplicates(
    ls_server: LiveServer, dying_proxy: tuple[str, Dying]
) -> None:
    project, ids = _project(ls_server, 12, "dying")
    items = [PushItem(i, t, "misclassified", 0.8, "bee") for i, t in enumerate(ids)]
    base, state = dying_proxy
    # The project, the task ids, the predictions (listed, added), the field, the tab (listed,
    # made) and the tasks in full: 8 requests; it dies after 5 of the 12 requeues.
    state.budget = 8 + 5
    partial = PushResult()
    with (
        LabelStudioClient(base, Secret(LEGACY_TOKEN), attempts=2, backoff=0.05) as c,
        pytest.raises(LabelStudioError, match=r"did not answer .* after 2 attempts"),
    ):
        push_flags(c, project, RUN, items, requeue=True, result=partial, workers=2)
    assert partial.predictions_added == 12 and partial.view_id is not None
    assert 0 < len(partial.requeued) < 12 and partial.done == []
    state.budget = 10**6
    with LabelStudioClient(base, Secret(LEGACY_TOKEN)) as c:
        rerun = push_flags(c, project, RUN, items, requeue=True)
    assert rerun.predictions_added == 0 and rerun.view_id == partial.view_id
    assert sorted(rerun.requeued) == list(range(12))
    assert _tab_tasks(ls_server, project) == set(ids)
    for task_id in ids:
        task = _task(ls_server, task_id)
        assert len(_ours(task)) == 1 and review_field(RUN) in task["data"]
        assert task["annotations"] == [] and len(task["drafts"]) == 1


# -- the whole path through the command line, on generated images and the shared weights -------


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.mark.training
def test_flag_answer_sync_resolves_flags_through_the_cli(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace, scenes_weights: Path
) -> None:
    colours = {"ant": "#c03020", "bee": "#2040c0"}
    project = ls_server.create_project(list(colours), "loop")
    tasks = []
    for n in range(48):
        label = "ant" if n % 2 else "bee"
        png = image_bytes(1000 + n, size=(48, 48), color=colours[label])
        # Six images carry the other class's label: the run must doubt them.
        given = ("bee" if label == "ant" else "ant") if n < 6 else label
        tasks.append({"data": {"image": _data_url(png)}, "annotations": [choice(given)]})
    # Two unlabeled tasks (for `uncertain`).
    for n in range(2):
        png = image_bytes(2000 + n, size=(48, 48), color="#808080")
        tasks.append({"data": {"image": _data_url(png)}})
    with ls_server.client() as c:
        ids = c.import_tasks(project, tasks)
    code, _, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(project)
    )
    assert code == 0, err
    code, _, err = run_cli(cli, "sync")
    assert code == 0, err
    code, out, err = run_cli(
        cli,
        "train",
        "--weights",
        str(scenes_weights),
        "--image-size",
        "32",
        "--epochs",
        "3",
        "--json",
    )
    assert code == 0, err
    run = json.loads(out)["id"]

    code, out, err = run_cli(
        cli,
        "flag",
        str(run),
        "--reasons",
        "misclassified,label-issue,uncertain",
        "--requeue",
        "--json",
    )
    assert code == 0, err
    outcome = json.loads(out)
    assert outcome["found"].get("uncertain") == 2
    code, out, _ = run_cli(cli, "flags", str(run), "--json")
    listed = json.loads(out)["flags"]
    assert len(listed) == outcome["flagged"] >= 2
    assert {f["outcome"] for f in listed} == {"pending"}
    labeled = [f for f in listed if f["reason"] != "uncertain"]
    assert len(labeled) >= 2
    # Flag again: nothing new anywhere.
    code, out, err = run_cli(
        cli,
        "flag",
        str(run),
        "--reasons",
        "misclassified,label-issue,uncertain",
        "--requeue",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["push"]["predictions_added"] == 0
    code, out, _ = run_cli(cli, "flags", str(run), "--json")
    assert len(json.loads(out)["flags"]) == len(listed)

    # The annotator answers: one uncertain task gets a label; a requeued one (if any) is
    # confirmed by submitting its draft; a labeled flag is relabeled.
    by_task = {f["task"]: f for f in listed}
    unc = next(f for f in listed if f["reason"] == "uncertain")
    ls_server.api("POST", f"/api/tasks/{unc['task']}/annotations", json=choice("ant"))
    for f in labeled[:2]:
        task = _task(ls_server, f["task"])
        new = f["suggested_label"] if f is labeled[0] else f["current_label"]
        body = choice(new)
        if task["drafts"]:
            body["draft_id"] = task["drafts"][0]["id"]
        ls_server.api("POST", f"/api/tasks/{f['task']}/annotations", json=body)
    code, out, err = run_cli(cli, "sync")
    assert code == 0, err
    # The sync says what it settled.
    assert "Flags settled by this sync:" in out and "1 relabeled" in out, out
    code, out, _ = run_cli(cli, "flags", str(run), "--json")
    after = json.loads(out)
    outcomes = {f["task"]: f["outcome"] for f in after["flags"]}
    assert outcomes[unc["task"]] == "labeled"
    assert outcomes[labeled[0]["task"]] == "relabeled"
    assert outcomes[labeled[1]["task"]] == "confirmed"
    assert after["precision"][str(run)] == {"resolved": 2, "relabeled": 1, "precision": 0.5}
    untouched = [t for t in by_task if t not in {unc["task"], *(f["task"] for f in labeled[:2])}]
    assert all(outcomes[t] == "pending" for t in untouched)
    assert set(ids) >= set(outcomes)

    code, out, err = run_cli(cli, "unflag", str(run), "--json")
    assert code == 0, err
    views = ls_server.api("GET", "/api/dm/views", params={"project": project})
    assert tab_title(run) not in [v["data"]["title"] for v in views]


@pytest.mark.training
def test_loop_syncs_trains_compares_and_flags_end_to_end(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace, scenes_weights: Path
) -> None:
    colours = {"ant": "#c03020", "bee": "#2040c0"}
    project = ls_server.create_project(list(colours), "loop command")
    truth: dict[int, str] = {}
    tasks = []
    for n in range(40):
        label = "ant" if n % 2 else "bee"
        png = image_bytes(5000 + n, size=(48, 48), color=colours[label])
        given = ("bee" if label == "ant" else "ant") if n < 5 else label
        tasks.append({"data": {"image": _data_url(png)}, "annotations": [choice(given)]})
    with ls_server.client() as c:
        ids = c.import_tasks(project, tasks)
    truth = {t: ("ant" if n % 2 else "bee") for n, t in enumerate(ids)}
    code, _, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(project)
    )
    assert code == 0, err
    training = ("--weights", str(scenes_weights), "--image-size", "32", "--epochs", "3")
    code, out, err = run_cli(cli, "loop", *training, "--requeue", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["version"] == 1 and first["run"]["version"] == 1
    assert first["comparison"] is None and "first" in first["comparison_note"]
    flagged = first["flags"]["flagged"]
    assert flagged >= 1 and first["flags"]["push"]["view_id"]

    # The annotator (an oracle) answers every flagged task with its true label.
    code, out, _ = run_cli(cli, "flags", str(first["run"]["id"]), "--json")
    listed = json.loads(out)["flags"]
    for f in listed:
        task = _task(ls_server, f["task"])
        body = choice(truth[f["task"]])
        if task["drafts"]:
            body["draft_id"] = task["drafts"][0]["id"]
        ls_server.api("POST", f"/api/tasks/{f['task']}/annotations", json=body)
    wrong_before = sum(1 for f in listed if f["current_label"] != truth[f["task"]])

    # No training options: the last configuration (weights, 32 px, 3 epochs) is used again.
    code, out, err = run_cli(cli, "loop", "--json")
    assert code == 0, err
    second = json.loads(out)
    assert second["version"] == 2 and second["run"]["version"] == 2
    assert second["run"]["config"]["image_size"] == 32
    assert second["run"]["config"]["weights"] == str(scenes_weights)
    resolved = second["sync"]["flags_resolved"]
    assert resolved.get("relabeled", 0) == wrong_before
    assert sum(resolved.values()) == len(listed)
    rows = second["comparison"]["rows"]
    assert [r["run"] for r in rows] == [first["run"]["id"], second["run"]["id"]]
    assert second["flags"]["run"] == second["run"]["id"]

    # Nothing changed since: no new version, no new run.
    code, out, err = run_cli(cli, "loop", "--json")
    assert code == 0, err
    third = json.loads(out)
    assert third["version"] == 2 and third["run"] is None
