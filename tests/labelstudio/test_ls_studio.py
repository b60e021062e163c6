"""`a2m studio up/status/logs/down` and `connect` without URL or token, on a copied data folder."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.workspace import Workspace
from tests.conftest import run_cli
from tests.labelstudio.conftest import LEGACY_TOKEN, PASSWORD, copy_server

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_studio_lifecycle(
    cli: CliRunner, workspace: Workspace, ls_template: tuple[Path, str]
) -> None:
    # Start from the initialised template so the test skips the ~30 s of migrations.
    copy_server(ls_template, workspace.data_dir / "labelstudio")
    workspace.write_secret("labelstudio_local_token", LEGACY_TOKEN)
    workspace.write_secret("labelstudio_local_password", PASSWORD)
    (workspace.data_dir / "labelstudio" / "server.json").write_text('{"pid": 999999, "port": 1}')
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        code, out, err = run_cli(cli, "studio", "up", "--port", str(port))
        assert code == 0, err
        assert "had stopped" in out and f"Port {port} is busy" in out and "Started" in out
        code, out, _ = run_cli(cli, "studio", "up", "--port", str(port))
        assert code == 0 and "Already running" in out
        code, out, _ = run_cli(cli, "studio", "status", "--json")
        status = json.loads(out)
        assert status["running"] and status["port"] != port
        code, out, err = run_cli(cli, "connect", "--create", "Studio test", "--labels", "a,b")
        assert code == 0, err
        assert "Created project" in out
        code, out, _ = run_cli(cli, "studio", "logs", "-n", "200")
        assert "Starting development server" in out
        assert LEGACY_TOKEN not in out
    finally:
        busy.close()
        code, out, _ = run_cli(cli, "studio", "down")
    assert code == 0 and "Stopped" in out
    code, out, _ = run_cli(cli, "studio", "status")
    assert "Not running" in out
