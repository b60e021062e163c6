"""`a2m label-next` against a real Label Studio, on generated images and the shared weights: the
tab exists once after two runs, lists the unlabeled tasks in the ordering function's order for
the run, its predictions are the run's guesses (one per task, never piled up), the labeling
stream opened from the tab starts at the first task, a labeled task leaves it; a dead server
and a workspace with no run are clear errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from annotate2model.labelstudio.client import LabelStudioClient, ServerUnreachable
from annotate2model.labelstudio.flags import REVIEW_VERSION
from annotate2model.labelstudio.label_next import NEXT_TAB, rank_score
from annotate2model.settings import Secret, load_settings
from annotate2model.store import Store
from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, run_cli
from tests.labelstudio.conftest import LEGACY_TOKEN, LiveServer, choice

pytestmark = [pytest.mark.labelstudio]


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _views(ls: LiveServer, project: int) -> list[dict[str, Any]]:
    views = ls.api("GET", "/api/dm/views", params={"project": project})
    return [v for v in views if v["data"].get("title") == NEXT_TAB]


def _tab(ls: LiveServer, project: int, view: int) -> list[dict[str, Any]]:
    listed = ls.api(
        "GET",
        "/api/tasks",
        params={"project": project, "view": view, "fields": "all", "page_size": 100},
    )
    return list(listed["tasks"])


@pytest.mark.training
@pytest.mark.slow
def test_label_next_tab_follows_the_order_and_is_made_once(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace, scenes_weights: Path
) -> None:
    colours = {"ant": "#c03020", "bee": "#2040c0"}
    project = ls_server.create_project(list(colours), "label next")
    tasks: list[dict[str, Any]] = []
    for n in range(24):
        label = "ant" if n % 2 else "bee"
        png = image_bytes(3000 + n, size=(48, 48), color=colours[label])
        tasks.append({"data": {"image": _data_url(png)}, "annotations": [choice(label)]})
    # Unlabeled: reds, blues, and colours in between that the run is unsure of.
    between = ["#c03020", "#2040c0", "#803070", "#7038a0", "#a03050", "#6040b0"]
    for n in range(12):
        png = image_bytes(4000 + n, size=(48, 48), color=between[n % len(between)])
        tasks.append({"data": {"image": _data_url(png)}})
    with ls_server.client() as c:
        ids = c.import_tasks(project, tasks)
    unlabeled = set(ids[24:])
    code, _, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(project)
    )
    assert code == 0, err
    assert run_cli(cli, "sync")[0] == 0

    # No run yet: a clear error, nothing in Label Studio.
    code, out, err = run_cli(cli, "label-next")
    assert code != 0 and "no trained run" in err and "a2m train" in err, out + err
    assert _views(ls_server, project) == []

    code, out, err = run_cli(
        cli, "train", "--weights", str(scenes_weights), "--image-size", "32", "--json"
    )
    assert code == 0, err
    run = json.loads(out)["id"]

    for _ in range(2):
        code, out, err = run_cli(cli, "label-next", "--json")
        assert code == 0, err
        outcome = json.loads(out)
        assert outcome["run"] == run and outcome["ordered"] == len(unlabeled)
        assert outcome["diverse"] is True
    assert outcome["push"]["predictions_removed"] == len(unlabeled)  # replaced, not piled up
    views = _views(ls_server, project)
    assert len(views) == 1  # made once, updated after
    view = int(views[0]["id"])
    assert outcome["push"]["view_id"] == view

    # The tab's order is the ordering function's for the run, with the run's guesses.
    from annotate2model.review.label_next import next_order
    from annotate2model.training.context import RunContext
    from annotate2model.training.runs.runner import load_predictor

    store = Store.open(load_settings(workspace, env={}))
    try:
        expected = next_order(store, run, project)
        ctx = RunContext.from_store(store)
        with store.read() as session:
            from annotate2model.store.runs import get_run
            from annotate2model.store.tasks import load_tasks

            record = get_run(session, run)
            shas = {t.task_id: t.image_sha256 for t in load_tasks(session, project).values()}
        cache = ctx.embedding_cache()
        try:
            predictor = load_predictor(ctx, record, cache)
            paths = [ctx.blob_path(str(shas[t])) for t in expected.task_ids]
            probs = predictor.predict(paths).probs
        finally:
            cache.close()
    finally:
        store.close()
    guesses = [predictor.labels[int(i)] for i in np.argmax(probs, axis=1)]
    assert sorted(expected.task_ids) == sorted(unlabeled)
    assert expected.guesses == guesses
    listed = _tab(ls_server, project, view)
    assert [int(t["id"]) for t in listed] == expected.task_ids
    n = len(expected.task_ids)
    for rank, (task, guess) in enumerate(zip(listed, guesses, strict=True)):
        assert task["predictions_score"] == pytest.approx(rank_score(rank, n))
        (pred,) = task["predictions"]  # one prediction each, after two runs
        assert pred["model_version"] == REVIEW_VERSION
        assert pred["result"][0]["value"]["choices"] == [guess]
    # The first of the order is the least sure (the diversity step keeps it first).
    assert expected.uncertainty[0] == max(expected.uncertainty)

    # The labeling stream opened from the tab starts at the first task of the order.
    first = ls_server.api("GET", f"/api/projects/{project}/next", params={"view": view})
    assert int(first["id"]) == expected.task_ids[0]
    # Labeled, it leaves the tab; the rest keep their order.
    ls_server.api("POST", f"/api/tasks/{expected.task_ids[0]}/annotations", json=choice("ant"))
    assert [int(t["id"]) for t in _tab(ls_server, project, view)] == expected.task_ids[1:]

    # --limit: only the first K, the others' predictions gone.
    assert run_cli(cli, "sync")[0] == 0
    code, out, err = run_cli(cli, "label-next", "--run", str(run), "--limit", "3")
    assert code == 0, err
    assert "3 of 11 unlabeled" in out and NEXT_TAB in out, out
    assert len(_tab(ls_server, project, view)) == 3
    ours = ls_server.api("GET", "/api/predictions", params={"project": project})
    assert len([p for p in ours if p["model_version"] == REVIEW_VERSION]) == 3
    assert len(_views(ls_server, project)) == 1


def test_label_next_asks_label_studio_before_any_work(workspace: Workspace) -> None:
    """A dead server is the first thing reported, before the run is looked up."""
    from annotate2model.labelstudio.server import free_port
    from annotate2model.review.label_next import label_next

    store = Store.open(load_settings(workspace, env={}))
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        with (
            LabelStudioClient(dead, Secret(LEGACY_TOKEN), attempts=1) as c,
            pytest.raises(ServerUnreachable),
        ):
            label_next(store, c, 1)
    finally:
        store.close()
