"""The local Label Studio keeps its database (every user's token in clear) to the workspace's
owner: after `a2m studio up` nothing under .a2m/ lets another user in, a workspace left readable by
an older a2m is repaired by the next `studio up`, and a restart comes back on the same port when
the one asked for is busy (the URL in a2m.toml and in the browser stays right). The token of
`a2m connect --token -` comes from stdin."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.cli.app import app
from annotate2model.labelstudio.connection import LOCAL_PASSWORD_SECRET, LOCAL_TOKEN_SECRET
from annotate2model.labelstudio.server import port_is_free
from annotate2model.workspace import init_workspace
from tests.conftest import run_cli
from tests.labelstudio.conftest import LEGACY_TOKEN, PASSWORD, copy_server
from tests.test_private_modes import (  # noqa: F401 - fixtures
    open_to_others,
    public_dir,
    readable_by_another_user,
    umask_022,
)

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_studio_up_keeps_its_data_private_and_its_port(
    public_dir: Path,  # noqa: F811
    umask_022: None,  # noqa: F811
    ls_template: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws, _ = init_workspace(public_dir / "ws")
    monkeypatch.setenv("A2M_HOME", str(ws.root))
    cli = CliRunner()
    code, _, err = run_cli(cli, "init")
    assert code == 0, err
    _, pat = copy_server(ls_template, ws.labelstudio_dir)
    ws.write_secret(LOCAL_TOKEN_SECRET, LEGACY_TOKEN)
    ws.write_secret(LOCAL_PASSWORD_SECRET, PASSWORD)
    database = ws.labelstudio_dir / "data" / "label_studio.sqlite3"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    asked = busy.getsockname()[1]
    # The port of an earlier start: one below the ephemeral range, which no other process's
    # free port (nor a connection's local end) takes while the server is down in between.
    port = next(p for p in range(20000, 32000, 7) if port_is_free(p))
    (ws.labelstudio_dir / "port").write_text(f"{port}\n")
    try:
        code, out, err = run_cli(cli, "studio", "up", "--port", str(asked))
        assert code == 0, err
        assert f"Port {asked} is busy; using {port} instead" in out
        result = cli.invoke(
            app,
            ["connect", "--token", "-", "--create", "Private", "--labels", "a,b", "--json"],
            input=pat + "\n",
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["token_kind"] == "pat"
        assert ws.read_secrets()["labelstudio_token"] == pat
        # Everything the server, the store and the secrets wrote is the owner's only.
        assert database.stat().st_size > 0 and (ws.labelstudio_dir / "server.log").exists()
        assert open_to_others(ws.data_dir) == []
        everything = [ws.data_dir, *ws.data_dir.rglob("*")]
        others = readable_by_another_user([ws.config_path, *everything])
        if others is not None:
            assert others == [ws.config_path]
        code, out, _ = run_cli(cli, "studio", "down")
        assert code == 0 and "Stopped" in out

        # As an older a2m (or `cp -r` under umask 022) left it: all open to everyone.
        for path in [ws.data_dir, *ws.data_dir.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        code, out, err = run_cli(cli, "studio", "up", "--port", str(asked))
        assert code == 0, err
        # The asked port is still busy: the last one is taken again, the same URL.
        assert f"Port {asked} is busy; using {port} instead" in out
        assert ws.read_config()["labelstudio"]["url"] == f"http://127.0.0.1:{port}"
        assert ws.exposed() == []
        others = readable_by_another_user([ws.config_path, ws.data_dir, *ws.data_dir.rglob("*")])
        if others is not None:
            assert others == [ws.config_path]
        code, out, err = run_cli(cli, "connect", "--json")
        assert code == 0, err

        # With no --port it comes back on its last port; that one taken, it says it moved.
        code, out, _ = run_cli(cli, "studio", "down")
        assert code == 0 and "Stopped" in out
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            taken.bind(("127.0.0.1", port))
            taken.listen()
            code, out, err = run_cli(cli, "studio", "up")
        assert code == 0, err
        now = ws.read_config()["labelstudio"]["url"]
        assert now != f"http://127.0.0.1:{port}"
        said = " ".join(out.split())
        assert f"Label Studio moved: it was at http://127.0.0.1:{port}, now {now}" in said
        assert "no longer work" in said
    finally:
        busy.close()
        run_cli(cli, "studio", "down")
