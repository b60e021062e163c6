"""Flags in a real Label Studio: the review tab a push fills (its columns, order and scores),
idempotency, a doubt pushed again, unflag, requeue, a server that dies halfway, writes that never
make Label Studio's SQLite lock, and the whole `a2m flag` -> answer -> `a2m sync` -> `a2m flag`
path, where a confirmed label is not flagged again.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.flags import (
    LABEL_FIELD,
    REASON_FIELD,
    REVIEW_FIELDS,
    REVIEW_TAB,
    REVIEW_VERSION,
    RUN_FIELD,
    SUGGESTED_FIELD,
    PushItem,
    PushResult,
    UnflagItem,
    model_version,
    push_flags,
    review_field,
    tab_title,
    unflag_tasks,
)
from annotate2model.progress import NullProgress
from annotate2model.settings import Secret
from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, run_cli
from tests.labelstudio.conftest import (
    LEGACY_TOKEN,
    LiveServer,
    Request,
    choice,
    forwarding_proxy,
)

pytestmark = pytest.mark.labelstudio

RUN = 5


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


def _views(ls: LiveServer, project: int) -> dict[str, dict[str, Any]]:
    views = ls.api("GET", "/api/dm/views", params={"project": project})
    return {v["data"]["title"]: v for v in views}


def _review(ls: LiveServer, project: int) -> list[tuple[int, float | None]]:
    """(task id, prediction score) of the review tab, in the tab's order."""
    view = _views(ls, project)[REVIEW_TAB]
    listed = ls.api(
        "GET", "/api/tasks", params={"project": project, "view": view["id"], "fields": "all"}
    )
    return [(int(t["id"]), t.get("predictions_score")) for t in listed["tasks"]]


def _ours(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in task["predictions"] if p["model_version"] == REVIEW_VERSION]


def _locked(ls: LiveServer) -> int:
    """ "database is locked" errors in the server's log so far."""
    return ls.server.log_path.read_text(errors="replace").count("database is locked")


def test_the_review_tab_lists_the_flags_by_score_and_unflag_takes_it_all_back(
    ls_server: LiveServer,
) -> None:
    project, ids = _project(ls_server, 5, "flags")
    flagged = ids[:3]
    items = [
        PushItem(
            flag_id=10 + n,
            task_id=t,
            reason="label-issue" if n else "misclassified",
            score=0.5 + n / 10,
            suggested_label="bee",
        )
        for n, t in enumerate(flagged)
    ]
    locked = _locked(ls_server)
    with ls_server.client() as c:
        first = push_flags(c, project, RUN, items, requeue=True)
        again = push_flags(c, project, RUN, items, requeue=True)
    assert first.predictions_added == 3 and first.fields_written == 3
    # Pushed again: the one prediction per task is kept (updated in place), nothing is added.
    assert again.predictions_added == 0 and again.predictions_updated == 3
    assert again.view_id == first.view_id
    assert sorted(first.done) == [10, 11, 12]
    # Requeued once: the second push finds the drafts it made and converts nothing more.
    assert {k: v[1] for k, v in again.requeued.items()} == {
        k: v[1] for k, v in first.requeued.items()
    }

    # The tab: exactly the flagged tasks, highest score first, the scores shown (the project's
    # model version is the review predictions').
    assert _review(ls_server, project) == [
        (flagged[2], pytest.approx(0.7)),
        (flagged[1], pytest.approx(0.6)),
        (flagged[0], pytest.approx(0.5)),
    ]
    assert ls_server.api("GET", f"/api/projects/{project}")["model_version"] == REVIEW_VERSION
    view = _views(ls_server, project)[REVIEW_TAB]["data"]
    assert view["ordering"] == ["-tasks:predictions_score"]
    hidden = set(view["hiddenColumns"]["explore"])
    shown = {
        "tasks:data.image",
        "tasks:predictions_score",
        *(f"tasks:data.{key}" for key in REVIEW_FIELDS),
    }
    assert not shown & hidden
    assert {"tasks:id", "tasks:data.keep", "tasks:annotations_results"} <= hidden
    for n, task_id in enumerate(flagged):
        task = _task(ls_server, task_id)
        (pred,) = _ours(task)
        assert pred["score"] == pytest.approx(0.5 + n / 10)
        assert pred["result"][0]["value"]["choices"] == ["bee"]
        assert task["data"][REASON_FIELD] == ("label-issue" if n else "misclassified")
        assert task["data"][RUN_FIELD] == str(RUN)
        assert (task["data"][LABEL_FIELD], task["data"][SUGGESTED_FIELD]) == ("-", "bee")
        assert task["data"]["keep"] == ids.index(task_id)  # the rest of the data is untouched
        # Requeued: no annotation left, the old answer waits as a draft.
        assert task["annotations"] == []
        assert task["drafts"][0]["result"][0]["value"]["choices"] == ["ant"]
    for task_id in ids[3:]:
        task = _task(ls_server, task_id)
        assert _ours(task) == [] and REASON_FIELD not in task["data"]
        assert len(task["annotations"]) == 1
    assert list(_views(ls_server, project)).count(REVIEW_TAB) == 1
    # The requeued tasks are back in the annotator's queue.
    assert ls_server.api("GET", f"/api/projects/{project}/next")["id"] in flagged

    # A later run doubts the first task more: still one entry, with the newest score and run.
    with ls_server.client() as c:
        later = push_flags(
            c, project, RUN + 1, [PushItem(20, flagged[0], "label-issue", 0.95, "bee")]
        )
    assert (later.predictions_added, later.predictions_updated) == (0, 1)
    assert _review(ls_server, project)[0] == (flagged[0], pytest.approx(0.95))
    assert _task(ls_server, flagged[0])["data"][RUN_FIELD] == str(RUN + 1)

    # Another model's prediction on a flagged task is not ours to remove.
    other = {"task": flagged[1], **choice("ant"), "model_version": "someone-else", "score": 0.5}
    ls_server.api("POST", f"/api/projects/{project}/import/predictions", json=[other])
    undo = [UnflagItem(10 + n, t, first.requeued[10 + n][1]) for n, t in enumerate(flagged)]
    with ls_server.client() as c:
        # The later run's flag still holds the first task in the tab.
        removed = unflag_tasks(c, project, RUN, undo, keep={flagged[0]})
        twice = unflag_tasks(c, project, RUN, undo, keep={flagged[0]})
    assert (removed.predictions_removed, removed.fields_removed) == (2, 2)
    assert removed.drafts_restored == 3 and not removed.tab_removed
    assert (twice.predictions_removed, twice.drafts_restored) == (0, 0)
    assert [task for task, _ in _review(ls_server, project)] == [flagged[0]]
    for task_id in flagged[1:]:
        task = _task(ls_server, task_id)
        assert _ours(task) == [] and not task["data"].get(REASON_FIELD)
        kept = [p["model_version"] for p in task["predictions"]]
        assert kept == (["someone-else"] if task_id == flagged[1] else [])
        (annotation,) = task["annotations"]
        assert annotation["result"][0]["value"]["choices"] == ["ant"]
        assert task["drafts"] == []
    with ls_server.client() as c:
        last = unflag_tasks(c, project, RUN + 1, [UnflagItem(20, flagged[0], None)], drop_tab=True)
    assert last.predictions_removed == 1 and last.tab_removed
    assert REVIEW_TAB not in _views(ls_server, project)
    assert _locked(ls_server) == locked


def test_a_flag_pushed_before_the_review_tab_is_still_taken_back(ls_server: LiveServer) -> None:
    """Run 5 flagged the old way: its own model version, field and tab."""
    project, ids = _project(ls_server, 3, "legacy")
    with ls_server.client() as c:
        prediction = {"task": ids[0], **choice("bee"), "model_version": model_version(RUN)}
        c.json("POST", f"/api/projects/{project}/import/predictions", "add", json=[prediction])
        task = _task(ls_server, ids[0])
        data = {**task["data"], review_field(RUN): "label-issue (run 5, suggested bee)"}
        c.json("PATCH", f"/api/tasks/{ids[0]}", "patch", json={"data": data})
        c.json(
            "POST",
            "/api/dm/views",
            "tab",
            json={"project": project, "data": {"title": tab_title(RUN)}},
        )
        removed = unflag_tasks(c, project, RUN, [UnflagItem(1, ids[0], None, review_field(RUN))])
    assert (removed.predictions_removed, removed.fields_removed) == (1, 1) and removed.tab_removed
    task = _task(ls_server, ids[0])
    assert task["predictions"] == [] and review_field(RUN) not in task["data"]
    assert tab_title(RUN) not in _views(ls_server, project)


def test_hundreds_of_flags_go_in_and_out_without_locking_label_studio(
    ls_server: LiveServer,
) -> None:
    """Label Studio on SQLite logs "database is locked" when writes come concurrently."""
    project, ids = _project(ls_server, 150, "many")
    items = [PushItem(i, t, "label-issue", (i % 97) / 100, "bee") for i, t in enumerate(ids)]
    locked = _locked(ls_server)
    with ls_server.client() as c:
        pushed = push_flags(c, project, RUN, items, requeue=True)
        again = push_flags(c, project, RUN, items)
        undone = unflag_tasks(
            c,
            project,
            RUN,
            [UnflagItem(i, t, pushed.requeued[i][1]) for i, t in enumerate(ids)],
            drop_tab=True,
        )
    assert pushed.predictions_added == 150 and len(pushed.requeued) == 150
    assert again.predictions_updated == 150
    assert undone.predictions_removed == 150 and undone.drafts_restored == 150
    assert _locked(ls_server) == locked


class Dying:
    """A proxy in front of Label Studio that goes down after `budget` requests (502, as a
    reverse proxy answers for a dead server)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.lock = threading.Lock()


@pytest.fixture
def dying_proxy(ls_server: LiveServer) -> Iterator[tuple[str, Dying]]:
    state = Dying(budget=10**6)

    def spend(_request: Request) -> tuple[int, bytes] | None:
        with state.lock:
            alive = state.budget > 0
            state.budget -= 1
        return None if alive else (502, b"")

    with forwarding_proxy(ls_server.url, spend) as base:
        yield base, state


class _DieWhileRequeueing(NullProgress):
    """Lets 5 more requests through once the requeueing starts."""

    def __init__(self, state: Dying) -> None:
        self.state = state

    def begin(self, description: str, total: float | None = None) -> None:
        if description == "Requeueing":
            with self.state.lock:
                self.state.budget = 5


def test_label_studio_dying_mid_push_is_a_clear_error_and_a_rerun_finishes_without_duplicates(
    ls_server: LiveServer, dying_proxy: tuple[str, Dying]
) -> None:
    project, ids = _project(ls_server, 12, "dying")
    items = [PushItem(i, t, "misclassified", 0.8, "bee") for i, t in enumerate(ids)]
    base, state = dying_proxy
    partial = PushResult()
    with (
        LabelStudioClient(base, Secret(LEGACY_TOKEN), attempts=2, backoff=0.05) as c,
        pytest.raises(LabelStudioError, match=r"did not answer .* after 2 attempts"),
    ):
        push_flags(
            c,
            project,
            RUN,
            items,
            requeue=True,
            result=partial,
            progress=_DieWhileRequeueing(state),
        )
    assert partial.predictions_added == 12 and partial.view_id is not None
    assert 0 < len(partial.requeued) < 12 and partial.done == []
    state.budget = 10**6
    with LabelStudioClient(base, Secret(LEGACY_TOKEN)) as c:
        rerun = push_flags(c, project, RUN, items, requeue=True)
    assert rerun.predictions_added == 0 and rerun.view_id == partial.view_id
    assert sorted(rerun.requeued) == list(range(12))
    assert {task for task, _ in _review(ls_server, project)} == set(ids)
    for task_id in ids:
        task = _task(ls_server, task_id)
        assert len(_ours(task)) == 1 and task["data"][REASON_FIELD] == "misclassified"
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

    # A task that came after the sync: uncertain flags would miss it, and say so.
    with ls_server.client() as c:
        (late,) = c.import_tasks(project, [{"data": {"image": _data_url(image_bytes(2900))}}])
    code, _, err = run_cli(cli, "flag", str(run), "--reasons", "uncertain")
    assert code != 0 and "1 task(s)" in err and "a2m sync" in err, err
    ls_server.api("DELETE", f"/api/tasks/{late}")

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
    # What the data say of the flags, before they were sent.
    evidence = outcome["evidence"]
    assert evidence["training_images"] > 0 and evidence["estimated_wrong"] is not None
    assert 0 < evidence["held_out_accuracy"] <= 1
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
    in_review = {task for task, _ in _review(ls_server, project)}
    assert in_review == {f["task"] for f in listed}
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
    answered = {unc["task"], *(f["task"] for f in labeled[:2])}
    untouched = [t for t in by_task if t not in answered]
    assert all(outcomes[t] == "pending" for t in untouched)
    assert set(ids) >= set(outcomes)
    # The answered tasks left the review tab; the others still wait there.
    assert {task for task, _ in _review(ls_server, project)} == set(untouched)

    # A second run doubts what a person just confirmed: kept back below the stated bar.
    code, out, err = run_cli(cli, "train", "--weights", str(scenes_weights), "--image-size", "32")
    assert code == 0, err
    code, out, err = run_cli(cli, "flag", "--reasons", "misclassified,label-issue", "--json", "2")
    assert code == 0, err
    second = json.loads(out)
    code, out, _ = run_cli(cli, "flags", "2", "--json")
    confirmed = labeled[1]["task"]
    mine = {f["task"]: f for f in json.loads(out)["flags"]}
    # Run 2 looks through the same features as run 1: what a person confirmed stays answered.
    if confirmed in mine:
        assert mine[confirmed]["outcome"] == "kept back (confirmed before)"
        assert second["kept_back"] >= 1 and json.loads(out)["kept_back"]["2"] >= 1
    # Tasks that still wait for run 1 are carried: one entry each in the tab, run 2's score.
    carried = [t for t in untouched if t in mine and mine[t]["outcome"] == "pending"]
    assert second["carried"] == len(carried)
    review = dict(_review(ls_server, project))
    for t in carried:
        assert review[t] == pytest.approx(mine[t]["score"])
        assert _task(ls_server, t)["data"][RUN_FIELD] == "2"
    code, out, err = run_cli(cli, "flag", "2", "--recheck-confirmed", "--json")
    assert code == 0, err
    if confirmed in mine:
        code, out, _ = run_cli(cli, "flags", "2", "--json")
        again = {f["task"]: f for f in json.loads(out)["flags"]}
        assert again[confirmed]["outcome"] == "pending"

    for number in (run, 2):
        code, out, err = run_cli(cli, "unflag", str(number), "--json")
        assert code == 0, err
    assert REVIEW_TAB not in _views(ls_server, project)
    assert _review_fields_left(ls_server, project) == []


def _review_fields_left(ls: LiveServer, project: int) -> list[int]:
    tasks = ls.api("GET", "/api/tasks", params={"project": project, "fields": "all"})["tasks"]
    return [int(t["id"]) for t in tasks if t["data"].get(REASON_FIELD) or _ours(t)]


def test_flag_asks_label_studio_before_any_work(workspace: Workspace, tmp_path: Path) -> None:
    """A dead server is the first thing `flag` reports: before the run is even looked up, so
    before any feature is computed."""
    from annotate2model.labelstudio.client import ServerUnreachable
    from annotate2model.labelstudio.server import free_port
    from annotate2model.review.flagging import flag_run
    from annotate2model.settings import load_settings
    from annotate2model.store import Store

    store = Store.open(load_settings(workspace, env={}))
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        LabelStudioClient(dead, Secret(LEGACY_TOKEN), attempts=1) as c,
        pytest.raises(ServerUnreachable),
    ):
        flag_run(store, c, 1, "1")


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
    # What the oracle confirmed is not sent back to it: run 2 sees the same features.
    confirmed = {f["task"] for f in listed if f["current_label"] == truth[f["task"]]}
    code, out, _ = run_cli(cli, "flags", str(second["run"]["id"]), "--json")
    again = json.loads(out)["flags"]
    reflagged = [f for f in again if f["task"] in confirmed and f["outcome"] == "pending"]
    assert reflagged == []
    assert second["flags"]["kept_back"] == sum(
        1 for f in again if f["outcome"] == "kept back (confirmed before)"
    )
    # The answered tasks left the review tab; what waits there is run 2's pending flags.
    pending = {f["task"] for f in again if f["outcome"] == "pending"}
    assert {task for task, _ in _review(ls_server, project)} == pending

    # Nothing changed since: no new version, no new run.
    code, out, err = run_cli(cli, "loop", "--json")
    assert code == 0, err
    third = json.loads(out)
    assert third["version"] == 2 and third["run"] is None
