"""`a2m studio up/status/logs/down` and `connect` without URL or token, on a copied data folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.server import LocalServer, free_port
from annotate2model.settings import Secret, load_settings
from annotate2model.store import Store
from annotate2model.store.versions import version_items
from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, make_image_folder, run_cli
from tests.labelstudio.conftest import ADMIN, LEGACY_TOKEN, PASSWORD, copy_server

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_studio_lifecycle(
    cli: CliRunner, workspace: Workspace, ls_template: tuple[Path, str], tmp_path: Path
) -> None:
    # Start from the initialised template so the test skips the ~30 s of migrations.
    copy_server(ls_template, workspace.data_dir / "labelstudio")
    workspace.write_secret("labelstudio_local_token", LEGACY_TOKEN)
    workspace.write_secret("labelstudio_local_password", PASSWORD)
    (workspace.data_dir / "labelstudio" / "server.json").write_text('{"pid": 999999, "port": 1}')
    inside = make_image_folder(tmp_path / "photos", {"a": 2}, seed=20)
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
        # No files root: Local Files serving is off, collect uploads.
        code, out, err = run_cli(cli, "collect", str(inside), "--labels-from-folders", "--json")
        assert code == 0, err
        assert json.loads(out)["mode"] == "upload" and json.loads(out)["tasks_created"] == 2
        code, out, _ = run_cli(cli, "studio", "logs", "-n", "200")
        assert "Starting development server" in out
        assert LEGACY_TOKEN not in out
    finally:
        busy.close()
        code, out, _ = run_cli(cli, "studio", "down")
    assert code == 0 and "Stopped" in out
    code, out, _ = run_cli(cli, "studio", "status")
    assert "Not running" in out


def test_studio_files_root(
    cli: CliRunner,
    workspace: Workspace,
    store: Store,
    ls_template: tuple[Path, str],
    tmp_path: Path,
) -> None:
    copy_server(ls_template, workspace.data_dir / "labelstudio")
    workspace.write_secret("labelstudio_local_token", LEGACY_TOKEN)
    workspace.write_secret("labelstudio_local_password", PASSWORD)
    photos = tmp_path / "photos"
    inside = make_image_folder(photos / "batch1", {"a": 2, "b": 1}, seed=21)
    outside = make_image_folder(tmp_path / "elsewhere", {"a": 1}, seed=22)
    # A root that would expose the workspace's data (Label Studio's database, secrets): refused.
    for bad in (workspace.root, Path("/"), tmp_path / "missing"):
        code, _, err = run_cli(cli, "studio", "up", "--files-root", str(bad), "--port", "1")
        assert code == 1 and str(bad.resolve()) in err, err
    code, out, err = run_cli(cli, "studio", "up", "--files-root", str(photos))
    try:
        assert code == 0, err
        assert f"Images under {photos}" in out
        assert workspace.read_config()["labelstudio"]["files_root"] == str(photos)
        code, out, _ = run_cli(cli, "studio", "status", "--json")
        assert json.loads(out)["files_root"] == str(photos)
        code, out, err = run_cli(cli, "connect", "--create", "Files root", "--labels", "a,b")
        assert code == 0, err
        code, out, err = run_cli(cli, "collect", str(inside), "--labels-from-folders", "--json")
        assert code == 0, err
        assert json.loads(out)["mode"] == "local-files" and json.loads(out)["tasks_created"] == 3
        code, out, err = run_cli(cli, "collect", str(outside), "--labels-from-folders", "--json")
        assert code == 0, err
        assert json.loads(out)["mode"] == "upload" and json.loads(out)["tasks_created"] == 1
        log = workspace.data_dir / "labelstudio" / "server.log"
        served_before = log.read_text(errors="replace").count("/data/")
        code, out, err = run_cli(cli, "sync", "--json")
        assert code == 0, err
        assert json.loads(out)["added"] == 4 and json.loads(out)["skipped"] == []
        # The workspace's own server: its images (Local Files and the upload) were read from its
        # folders on disk, none through its web server (which logs every request it answers),
        # and they are exactly the collected files.
        text = log.read_text(errors="replace")
        assert "/api/projects/" in text and text.count("/data/") == served_before
        files = [*inside.rglob("*.png"), *outside.rglob("*.png")]
        with store.read() as session:
            stored = {i.image_sha256 for i in version_items(session, 1)}
        assert stored == {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
        # Label Studio itself refuses a storage outside the root, or at the root itself: the
        # root folder is collected by upload.
        settings = load_settings(workspace, env={})
        assert settings.labelstudio.url and settings.labelstudio.token
        project = settings.labelstudio.project_id
        assert project is not None
        with LabelStudioClient(settings.labelstudio.url, settings.labelstudio.token) as client:
            assert not client.add_local_storage(project, str(outside))
            assert not client.add_local_storage(project, str(photos))
        (photos / "top.png").write_bytes(image_bytes(23))
        code, out, err = run_cli(cli, "collect", str(photos), "--json")
        assert code == 0, err
        assert json.loads(out)["mode"] == "upload" and json.loads(out)["tasks_created"] == 1
        # The next `studio up` (no flag) keeps the saved root.
        run_cli(cli, "studio", "down")
        code, out, err = run_cli(cli, "studio", "up")
        assert code == 0, err
        assert f"Images under {photos}" in out
    finally:
        run_cli(cli, "studio", "down")


def _a2m(workspace: Workspace, *args: str) -> tuple[str, str]:
    """Run `a2m args...` as a real process on the workspace; returns (stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}
    env.update(A2M_HOME=str(workspace.root), NO_COLOR="1", COLUMNS="200")
    done = subprocess.run(
        [sys.executable, "-m", "annotate2model", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, done.stderr


def test_personal_access_token_never_shown_nor_stored(
    cli: CliRunner, workspace: Workspace, ls_template: tuple[Path, str], tmp_path: Path
) -> None:
    _, pat = ls_template
    assert pat.startswith("eyJ") and pat.count(".") == 2  # a PAT (a JWT), not a legacy token
    copy_server(ls_template, workspace.data_dir / "labelstudio")
    workspace.write_secret("labelstudio_local_token", LEGACY_TOKEN)
    workspace.write_secret("labelstudio_local_password", PASSWORD)
    folder = make_image_folder(tmp_path / "pat", {"a": 2, "b": 1}, seed=24)
    code, _, err = run_cli(cli, "studio", "up")
    try:
        assert code == 0, err
        created = _a2m(
            workspace,
            "connect",
            "--token",
            pat,
            "--create",
            "PAT test",
            "--labels",
            "a,b",
            "--json",
        )
        project = str(json.loads(created[0])["project"])
        outputs = {
            "connect --json": created,
            "connect": _a2m(workspace, "connect", "--project", project),
            "collect": _a2m(workspace, "collect", str(folder), "--labels-from-folders"),
            "sync": _a2m(workspace, "sync"),
            "sync --json": _a2m(workspace, "sync", "--json"),
            "studio status": _a2m(workspace, "studio", "status"),
            "studio status --json": _a2m(workspace, "studio", "status", "--json"),
        }
    finally:
        run_cli(cli, "studio", "down")
    # The commands really ran with the PAT and did their work.
    assert json.loads(outputs["connect --json"][0])["token_kind"] == "pat"
    assert "(pat token)" in outputs["connect"][0]
    assert "Created 3 task(s)" in outputs["collect"][0]
    assert "Version 1: 3 images" in outputs["sync"][0]
    assert json.loads(outputs["sync --json"][0])["fetched"] == 0
    assert json.loads(outputs["studio status --json"][0])["running"] is True
    signature = pat.rsplit(".", 1)[1]
    for command, (stdout, stderr) in outputs.items():
        output = stdout + stderr
        assert pat not in output and signature not in output, command
        # Nor the short-lived access token it is exchanged for (also a JWT).
        assert "eyJ" not in output, command
    db = b"".join(p.read_bytes() for p in workspace.data_dir.glob("store.db*"))
    assert db and pat.encode() not in db and signature.encode() not in db
    assert b"eyJ" not in db


def _secret_keys(server: LocalServer) -> list[str]:
    text = (server.data_dir / ".env").read_text()
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("SECRET_KEY=")]


def test_personal_access_tokens_outlive_restarts(
    ls_template: tuple[Path, str], tmp_path: Path
) -> None:
    template, pat = ls_template
    # The template's first start ran on a key a2m wrote (token_urlsafe: 67 characters of
    # [A-Za-z0-9_-]), which Label Studio read back: it drew none of its own. Its own keys are 50
    # characters, one in fifty of them starting with `$`, which would die at the first restart
    # with every token made until then.
    (key,) = _secret_keys(LocalServer(template))
    assert re.fullmatch(r"[A-Za-z0-9_-]{67}", key)
    root, _ = copy_server(ls_template, tmp_path / "labelstudio")
    server = LocalServer(root)
    for _ in range(2):
        started = server.start(
            username=ADMIN, password=PASSWORD, token=LEGACY_TOKEN, port=free_port()
        )
        try:
            # The template's token, made during its first run, still works.
            with LabelStudioClient(started.url, Secret(pat)) as client:
                assert client.check()["email"] == ADMIN
        finally:
            server.stop()
    assert _secret_keys(server) == [key]
