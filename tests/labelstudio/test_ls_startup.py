"""A no-change `a2m sync` against a real Label Studio loads neither training, Pillow nor the SDK."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, run_cli
from tests.labelstudio.conftest import LiveServer, choice
from tests.test_startup import SDK, TRAINING, loaded_of, run_a2m

pytestmark = pytest.mark.labelstudio


def test_no_change_sync_loads_only_what_it_uses(
    cli: CliRunner,
    ls_server: LiveServer,
    workspace: Workspace,
    image_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    base, served = image_server
    project = ls_server.create_project(["a", "b"], title="startup")
    tasks = []
    for i in range(6):
        (served / f"startup-{i}.png").write_bytes(image_bytes(9000 + i))
        tasks.append(
            {"data": {"image": f"{base}/startup-{i}.png"}, "annotations": [choice("ab"[i % 2])]}
        )
    with ls_server.client() as client:
        client.import_tasks(project, tasks)
    code, _, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(project)
    )
    assert code == 0, err
    code, out, err = run_cli(cli, "sync")
    assert code == 0 and "Version 1" in out, err

    modules, proc = run_a2m(tmp_path, "sync", env={"A2M_HOME": str(workspace.root)})

    assert "Nothing changed: version 1 is current." in proc.stdout
    # What the sync did use, so that the list below is not empty for a wrong reason.
    assert {"httpx", "sqlalchemy", "annotate2model.labelstudio.sync"} <= modules
    assert loaded_of(modules, ["PIL", "alembic", *TRAINING, *SDK]) == []
