"""A sync asks Label Studio for the project (and on a first sync every task) at its start: a
first sync reads every task, a later one only what changed since the store's watermark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.workspace import Workspace
from tests.conftest import run_cli
from tests.labelstudio.conftest import LiveServer

pytestmark = pytest.mark.labelstudio


# Runs the CLI as the `a2m` script does, noting at each HeadStart (the first requests of a sync)
# whether it reads every task.
_HEAD = """\
import atexit, json, sys
from annotate2model.labelstudio import reading
out, seen = sys.argv[1], []
atexit.register(lambda: open(out, "w").write(json.dumps(seen)))
started = reading.HeadStart.__init__
def noting(self, client, project_id, *, read_all, progress=None):
    seen.append({"read_all": read_all})
    started(self, client, project_id, read_all=read_all, progress=progress)
reading.HeadStart.__init__ = noting
from annotate2model.cli.app import main
sys.argv = ["a2m", *sys.argv[2:]]
main()
"""


def test_a_first_sync_reads_every_task_and_a_later_one_what_changed(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace, tmp_path: Path
) -> None:
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
    assert heads == [{"read_all": True}]
    again, heads = sync()
    assert "Nothing changed: version 1 is current." in again
    # Only the project ahead: the changes are listed from the store's watermark.
    assert heads == [{"read_all": False}]
