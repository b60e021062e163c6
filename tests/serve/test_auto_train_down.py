"""`--auto-train` while Label Studio is down: the worker's sync fails, says so at /v1/model's
`auto_train` status (state, last error, the try and the wait before the next), tries again with
backoff, and once Label Studio answers again the pass completes and the error is cleared. The
server's side is never touched. A real Label Studio behind a real proxy that answers 503 in its
place while it is "down"."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from annotate2model.autotrain import AutoTrainer
from annotate2model.serve.models import ServedModel
from annotate2model.settings import load_settings
from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, run_cli
from tests.labelstudio import conftest as ls_fixtures
from tests.labelstudio.conftest import LiveServer, Request, choice, forwarding_proxy

pytestmark = [pytest.mark.labelstudio, pytest.mark.training]

ls_template = ls_fixtures.ls_template
ls_server = ls_fixtures.ls_server


def _until(what: str, check: Callable[[], Any], trainer: AutoTrainer, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {trainer.status()}")


def test_a_sync_against_a_dead_label_studio_is_retried_until_it_answers(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace
) -> None:
    import base64

    project = ls_server.create_project(["red", "blue"], "down")
    colours = {"red": "#c03020", "blue": "#2040c0"}
    tasks = []
    for n in range(12):
        label = "red" if n % 2 else "blue"
        png = image_bytes(900 + n, size=(32, 32), color=colours[label])
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        tasks.append({"data": {"image": url}, "annotations": [choice(label)]})
    with ls_server.client() as c:
        c.import_tasks(project, tasks)

    down = {"on": False}
    failed: list[str] = []

    def refuse(request: Request) -> tuple[int, bytes] | None:
        if down["on"]:
            failed.append(request[1])
            return 503, b"Service Unavailable"
        return None

    with forwarding_proxy(ls_server.url, refuse) as proxy:
        code, _, err = run_cli(
            cli, "connect", proxy, "--token", ls_server.legacy, "--project", str(project)
        )
        assert code == 0, err
        assert run_cli(cli, "sync")[0] == 0
        code, _, err = run_cli(cli, "train", "--weights", "none", "--image-size", "32")
        assert code == 0, err

        def no_model(run: int) -> ServedModel:
            raise AssertionError("nothing is trained here: no model to load")

        down["on"] = True
        trainer = AutoTrainer(
            load_settings(workspace, env={}), project, 1, load_model=no_model, settle_seconds=0.1
        )
        trainer.start(lambda _model: None)
        try:
            _until(
                "two failed tries",
                lambda: (
                    trainer.state == "waiting for Label Studio"
                    and trainer.detail.startswith("try 2 failed")
                ),
                trainer,
            )
            status = trainer.status()
            assert status["last_error"].startswith("sync: ")
            assert "503" in status["last_error"] or "Service Unavailable" in status["last_error"]
            assert status["passes"] == 1 and status["trainings"] == 0
            assert failed  # Label Studio was asked, and the proxy answered in its place

            down["on"] = False
            _until("the pass to end", lambda: trainer.state == "idle", trainer)
            status = trainer.status()
            assert status["last_error"] is None
            assert status["pending_labels"] == 0 and status["trainings"] == 0
            assert status["passes"] == 1
        finally:
            trainer.stop()
