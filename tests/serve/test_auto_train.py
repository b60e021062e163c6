"""`a2m serve --auto-train` against a real Label Studio, on real photos (scenes_1200) and the
shared weights: the server is the project's ML backend and gets its annotation events through
the webhook `connect-backend --auto-train` registers (with the token). Annotations made through
the REST API past `--every` give one training for the burst; the new run is judged and promoted
(the served version changes, a new task's prediction comes from it, the label-next tab follows
its order); a deliberately worse configuration (random weights) is judged and kept, not served;
a training that fails keeps the old model, with the error at /v1/model; a server killed during a
training leaves its run failed, and the next start trains the version again."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bench._shared import SCENES_1200
from tests.conftest import require_shared
from tests.labelstudio import conftest as ls_fixtures
from tests.labelstudio.conftest import LiveServer, choice
from tests.serve.conftest import TOKEN, Served, a2m, serving

pytestmark = [pytest.mark.labelstudio, pytest.mark.training, pytest.mark.slow]

ls_template = ls_fixtures.ls_template
ls_server = ls_fixtures.ls_server

CLASSES = ["forest", "sea", "street"]
PER_CLASS = 50
LABELED = 25
EVERY = 12


def _photo_url(path: Path) -> str:
    """A scenes photo as a data: URL (96 px JPEG: small tasks, the same photo)."""
    with Image.open(path) as im:
        small = im.convert("RGB").resize((96, 96))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _wait(what: str, check: Callable[[], Any], log: Path, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-6000:]}")


def _status(served: Served) -> dict[str, Any]:
    with served.client() as c:
        body = c.get("/v1/model").json()
    return dict(body["auto_train"], run=body["run"], model_version=body["model_version"])


def _decided(served: Served, before: dict[str, Any]) -> Callable[[], dict[str, Any] | None]:
    """The status once a decision newer than the one in `before` is made and the pass is over."""

    def check() -> dict[str, Any] | None:
        status = _status(served)
        last = status["last_decision"]
        new = last is not None and last != before.get("last_decision")
        return status if new and status["state"] == "idle" else None

    return check


def _annotate(ls: LiveServer, tasks: list[tuple[int, str]]) -> None:
    for task_id, label in tasks:
        ls.api("POST", f"/api/tasks/{task_id}/annotations", json=choice(label))


def _runs(root: Path) -> list[dict[str, Any]]:
    return list(json.loads(a2m(root, "runs", "--json").stdout))


def test_events_retrain_and_only_a_better_run_is_served(
    ls_server: LiveServer, tmp_path: Path, scenes_weights: Path
) -> None:
    photos = require_shared(SCENES_1200, "the scenes_1200 photos")
    root = tmp_path / "ws"
    a2m(root, "init", str(root))
    # More test images than the default 10%: the judging has enough images neither run saw.
    toml = root / "a2m.toml"
    text = toml.read_text()
    text = re.sub(r"(?m)^train = 0\.8$", "train = 0.5", text)
    text = re.sub(r"(?m)^test = 0\.1$", "test = 0.4", text)
    toml.write_text(text)

    project = ls_server.create_project(CLASSES, title="auto-train")
    tasks: list[dict[str, Any]] = []
    truth: list[str] = []
    for label in CLASSES:
        for n, path in enumerate(sorted((photos / label).glob("*.jpg"))[:PER_CLASS]):
            task: dict[str, Any] = {"data": {"image": _photo_url(path)}}
            if n < LABELED:
                task["annotations"] = [choice(label)]
            tasks.append(task)
            truth.append(label)
    with ls_server.client() as c:
        ids = c.import_tasks(project, tasks)
    # Unlabeled tasks, taken in turns from each class.
    waiting = [
        (ids[i], truth[i])
        for n in range(LABELED, PER_CLASS)
        for i in (k * PER_CLASS + n for k in range(len(CLASSES)))
    ]
    a2m(root, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(project))
    a2m(root, "sync")
    weights = tmp_path / "scenes.pth"
    shutil.copyfile(scenes_weights, weights)
    first = json.loads(
        a2m(root, "train", "--weights", str(weights), "--image-size", "96", "--json").stdout
    )["id"]

    log = tmp_path / "serve.log"
    env = {"A2M_SERVE_TOKEN": TOKEN}
    with serving(root, str(first), "--auto-train", "--every", str(EVERY), log=log, env=env) as s:
        # Nothing new yet: the first pass at start-up syncs and waits.
        status = _wait("the first pass", lambda: _status(s)["passes"] >= 1, log)
        registered = json.loads(
            a2m(root, "connect-backend", s.url, "--auto-train", "--token", TOKEN, "--json").stdout
        )
        assert registered["webhook"] is not None
        (hook,) = [
            w
            for w in ls_server.api("GET", f"/api/webhooks/?project={project}")
            if w["url"] == f"{s.url}/webhook"
        ]
        assert hook["headers"] == {"Authorization": f"Bearer {TOKEN}"}
        assert "ANNOTATION_CREATED" in hook["actions"]

        # Fewer labels than --every: synced, not trained.
        _annotate(ls_server, waiting[:5])
        _wait("the sync of 5 labels", lambda: _status(s)["pending_labels"] == 5, log)
        assert _status(s)["trainings"] == 0

        # A burst past --every: one training, judged, promoted.
        before = _status(s)
        _annotate(ls_server, waiting[5:EVERY])
        status = _wait("the first decision", _decided(s, before), log)
        decision = status["last_decision"]
        assert decision["promoted"] is True, decision
        second = decision["run"]
        assert second != first and status["trainings"] == 1
        assert status["run"] == second and status["model_version"] == f"a2m-run-{second}"
        assert status["served_run"] == second
        assert "not worse than run" in decision["reason"]
        assert decision["details"]["images"] >= 20
        runs = _runs(root)
        assert len(runs) == 2  # the burst gave one training
        assert runs[-1]["auto_train"]["promoted"] is True
        # The old model still answers under /runs/ID/, the new one at the root.
        with s.client() as c:
            assert c.get("/versions").json() == {"versions": [f"a2m-run-{second}"]}
            assert c.get(f"/runs/{first}/versions").json() == {"versions": [f"a2m-run-{first}"]}

        # Label Studio's prediction for a new task comes from the promoted run.
        with ls_server.client() as c:
            (new_task,) = c.import_tasks(
                project, [{"image": _photo_url(sorted((photos / "sea").glob("*.jpg"))[-1])}]
            )
        ls_server.api(
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            json={"selectedItems": {"all": False, "included": [new_task]}},
        )
        predicted = ls_server.api("GET", f"/api/tasks/{new_task}")["predictions"]
        assert [p["model_version"] for p in predicted] == [f"a2m-run-{second}"]

        # The label-next tab was refreshed from the promoted run, in its order.
        _check_label_next(root, ls_server, project, second)

        # A worse configuration (random weights) becomes the last one; the next burst trains it,
        # and it is kept, not served.
        worse = json.loads(
            a2m(root, "train", "--weights", "none", "--image-size", "96", "--json").stdout
        )["id"]
        before = _status(s)
        _annotate(ls_server, waiting[EVERY : 2 * EVERY])
        status = _wait("the decision on the worse run", _decided(s, before), log)
        decision = status["last_decision"]
        assert decision["promoted"] is False, decision
        assert decision["run"] not in (first, second, worse)
        assert "worse than run" in decision["reason"] or "below run" in decision["reason"]
        assert status["run"] == second and status["served_run"] == second
        listed = a2m(root, "runs").stdout
        assert f"Auto-train: run {decision['run']} not served:" in listed
        assert f"Auto-train: run {second} served (over run {first})" in listed

        # A configuration that cannot train: its weights file is gone. The old model stays.
        a2m(root, "train", "--weights", str(weights), "--image-size", "96")
        weights.unlink()
        before = _status(s)
        _annotate(ls_server, waiting[2 * EVERY : 3 * EVERY])
        status = _wait("the decision on the failed training", _decided(s, before), log)
        assert status["last_decision"]["promoted"] is False
        assert "the training failed" in status["last_decision"]["reason"]
        assert status["last_error"] and str(weights.name) in status["last_error"]
        assert status["run"] == second
        with s.client() as c:
            assert c.get("/health").json()["status"] == "UP"
        text = log.read_text()
        assert "Traceback" not in text
    assert f"run {decision['run']} is kept, not served" in text

    # A server killed during a training: its run is marked failed by the next start, which
    # trains the version again, still with the last configuration (a short fine-tuning: long
    # enough to be killed in).
    shutil.copyfile(scenes_weights, weights)
    a2m(
        root,
        "train",
        "--weights",
        str(weights),
        "--image-size",
        "96",
        "--mode",
        "finetune",
        "--epochs",
        "3",
    )
    log2 = tmp_path / "serve2.log"
    with serving(root, str(first), "--auto-train", "--every", str(EVERY), log=log2, env=env) as s:
        # It serves what auto-train promoted, not the run it was given.
        assert _status(s)["run"] == second
        _wait("the start-up pass", lambda: _status(s)["passes"] >= 1, log2)
        a2m(root, "connect-backend", s.url, "--auto-train", "--token", TOKEN)
        _annotate(ls_server, waiting[3 * EVERY : 4 * EVERY])
        _wait("a training", lambda: _status(s)["state"] == "training", log2, timeout=120)
        cut = _wait(
            "its run",
            lambda: next((r for r in _runs(root) if r["status"] == "running"), None),
            log2,
            60,
        )
        os.kill(s.pid, signal.SIGKILL)
    log3 = tmp_path / "serve3.log"
    with serving(root, str(first), "--auto-train", "--every", str(EVERY), log=log3, env=env) as s:
        status = _wait("the decision after the restart", _decided(s, {}), log3)
        assert status["trainings"] == 1
        assert status["last_decision"]["version"] == cut["version"]
    runs = {r["id"]: r for r in _runs(root)}
    assert runs[cut["id"]]["status"] == "failed"
    assert "ended without closing the run" in runs[cut["id"]]["error"]
    again = status["last_decision"]["run"]
    assert again > cut["id"] and runs[again]["version"] == cut["version"]
    assert runs[again]["status"] == "succeeded"


def _check_label_next(root: Path, ls: LiveServer, project: int, run: int) -> None:
    from annotate2model.labelstudio.flags import REVIEW_VERSION
    from annotate2model.labelstudio.label_next import NEXT_TAB, review_held
    from annotate2model.review.label_next import next_order
    from annotate2model.settings import load_settings
    from annotate2model.store import Store
    from annotate2model.workspace import Workspace

    (view,) = [
        v
        for v in ls.api("GET", "/api/dm/views", params={"project": project})
        if v["data"].get("title") == NEXT_TAB
    ]
    with ls.client() as c:
        held = review_held(c, project)
    store = Store.open(load_settings(Workspace(root), env={}))
    try:
        expected = next_order(store, run, project, skip=held)
    finally:
        store.close()
    listed = ls.api(
        "GET",
        "/api/tasks",
        params={"project": project, "view": view["id"], "fields": "all", "page_size": 500},
    )["tasks"]
    assert [int(t["id"]) for t in listed] == expected.task_ids
    for task, guess in zip(listed, expected.guesses, strict=True):
        ours = [p for p in task["predictions"] if p["model_version"] == REVIEW_VERSION]
        assert [p["result"][0]["value"]["choices"] for p in ours] == [[guess]]
