"""A no-change `a2m sync` against a real Label Studio loads neither training nor Pillow;
a sync asks Label Studio for the project (and on a first sync every task) before the store loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, run_cli
from tests.labelstudio.conftest import LiveServer, choice
from tests.test_startup import TRAINING, loaded_of, run_a2m

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
    assert loaded_of(modules, ["PIL", "alembic", *TRAINING]) == []


# Runs the CLI as the `a2m` script does, noting at each HeadStart (the first requests of a sync)
# whether the store's modules were loaded yet and whether it reads every task.
_HEAD = """\
import atexit, json, sys
from annotate2model.labelstudio import reading
out, seen = sys.argv[1], []
atexit.register(lambda: open(out, "w").write(json.dumps(seen)))
started = reading.HeadStart.__init__
def noting(self, client, project_id, *, read_all, progress=None):
    seen.append({"read_all": read_all, "sqlalchemy": "sqlalchemy" in sys.modules})
    started(self, client, project_id, read_all=read_all, progress=progress)
reading.HeadStart.__init__ = noting
from annotate2model.cli.app import main
sys.argv = ["a2m", *sys.argv[2:]]
main()
"""


def test_sync_asks_label_studio_before_it_loads_the_store(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace, tmp_path: Path
) -> None:
    """The project, and on a first sync every task, are on their way while SQLAlchemy loads."""
    project = ls_server.local_files_project("head-start", 12, seed=9100)
    code, _, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(project)
    )
    assert code == 0, err
    out = tmp_path / "heads.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}

    def sync() -> tuple[str, list[dict[str, bool]]]:
        proc = subprocess.run(
            [sys.executable, "-c", _HEAD, str(out), "sync"],
            env={**env, "A2M_HOME": str(workspace.root)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, json.loads(out.read_text())

    first, heads = sync()
    assert "Version 1: 12 images." in first
    assert heads == [{"read_all": True, "sqlalchemy": False}]
    again, heads = sync()
    assert "Nothing changed: version 1 is current." in again
    # Only the project ahead: the changes are listed from the store's watermark.
    assert heads == [{"read_all": False, "sqlalchemy": False}]
