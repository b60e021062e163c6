"""A real Label Studio using a real `a2m serve` as its ML backend: `a2m connect-backend` registers
it (Label Studio checks /health and /setup with the token as Basic-auth password), the Data
Manager's "Retrieve predictions" action makes Label Studio call /predict, and the predictions it
stores carry the Predictor's label and probability as `score`, with the run's model_version."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from annotate2model.training import Predictor
from tests.conftest import image_bytes
from tests.labelstudio import conftest as ls_fixtures
from tests.labelstudio.conftest import LiveServer
from tests.serve.conftest import LABELS, TOKEN, Trained, a2m, serving

pytestmark = [pytest.mark.labelstudio, pytest.mark.training, pytest.mark.slow]

# A real Label Studio for this module (the fixtures of tests/labelstudio/).
ls_template = ls_fixtures.ls_template
ls_server = ls_fixtures.ls_server


def test_label_studio_stores_the_backends_predictions(
    trained: Trained,
    ls_server: LiveServer,
    tmp_path: Path,
) -> None:
    root = tmp_path / "ws"
    shutil.copytree(trained.root, root)
    project = ls_server.create_project(LABELS, title="served")
    images = [image_bytes(400 + i, (60, 40)) for i in range(3)]
    with ls_server.client() as client:
        urls = [client.upload_file(project, f"img{i}.png", data) for i, data in enumerate(images)]
        broken = "data:text/plain;base64," + base64.b64encode(b"not an image").decode()
        ids = client.import_tasks(project, [{"image": u} for u in [*urls, broken]])
    a2m(root, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(project))

    with serving(root, "1", "--token", TOKEN, log=tmp_path / "serve.log") as served:
        registered = json.loads(
            a2m(root, "connect-backend", served.url, "--token", TOKEN, "--json").stdout
        )
        assert registered["project"] == project and registered["created"] is True
        assert registered["state"] == "Connected"
        # Registering again updates the same backend instead of adding a second one.
        again = json.loads(
            a2m(root, "connect-backend", served.url, "--token", TOKEN, "--json").stdout
        )
        assert again["id"] == registered["id"] and again["created"] is False
        assert len(ls_server.api("GET", f"/api/ml?project={project}")) == 1

        done = ls_server.api(
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        assert done["processed_items"] == 4
        log = served.log.read_text()

    expected = Predictor.load(trained.run_dir(1), "cpu").predict(images).probs
    for task_id, probs in zip(ids, expected, strict=False):
        task = ls_server.api("GET", f"/api/tasks/{task_id}")
        (pred,) = task["predictions"]
        assert pred["model_version"] == "a2m-run-1"
        choice = pred["result"][0]["value"]["choices"][0]
        assert choice == LABELS[int(np.argmax(probs))]
        assert pred["score"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert pred["result"][0]["from_name"] == "label" and pred["result"][0]["to_name"] == "image"
    # The task whose image is not one keeps its place with an empty prediction; the server logged
    # why, and nothing else went wrong.
    unreadable = ls_server.api("GET", f"/api/tasks/{ids[3]}")["predictions"]
    assert all(p["result"] == [] for p in unreadable)
    assert f"task {ids[3]}" in log and "not an image" in log
    assert "Traceback" not in log
    project_info = ls_server.api("GET", f"/api/projects/{project}")
    assert project_info["show_collab_predictions"] is True


def test_connect_backend_without_a_connection_says_what_to_do(trained: Trained) -> None:
    proc = a2m(trained.root, "connect-backend", check=False)
    assert proc.returncode == 1
    assert "no Label Studio is connected" in proc.stderr and "a2m studio up" in proc.stderr
