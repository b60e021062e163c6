"""Rough edges a new user hit with the local Label Studio (issue 12), each pinned on a real server:
a2m.toml keeps its comments through `studio up`, a restart says which project is connected,
`connect --token` alone keeps the saved project, a stopped server is reported at once with the
command that starts it, and `sync --note` names the version in words that cannot be misread.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.labelstudio.server import free_port
from annotate2model.workspace import DEFAULT_CONFIG, Workspace
from tests.conftest import make_image_folder, run_cli
from tests.labelstudio.conftest import LEGACY_TOKEN, PASSWORD, copy_server

# The comment lines `a2m init` writes; every one must outlive a settings write.
INIT_COMMENTS = [line for line in DEFAULT_CONFIG.splitlines() if line.startswith("#")]


def test_config_writes_keep_comments_and_layout(workspace: Workspace) -> None:
    before = workspace.config_path.read_text()
    # What `studio up` and `connect` write: a new [labelstudio] section, then more keys in it.
    workspace.update_config("labelstudio", {"url": "http://127.0.0.1:8080", "files_root": "/x"})
    workspace.update_config("labelstudio", {"project": 3, "files_root": None})
    # A key of a commented section changes in place.
    workspace.update_config("split", {"train": 0.7, "val": 0.2})
    text = workspace.config_path.read_text()
    assert [line for line in text.splitlines() if line.startswith("#")] == INIT_COMMENTS
    # Everything before the new section is as init wrote it but the changed values.
    untouched = before.replace("train = 0.8", "train = 0.7").replace("val = 0.1", "val = 0.2")
    assert text.startswith(untouched.rstrip("\n") + "\n\n[labelstudio]\n")
    assert tomllib.loads(text)["labelstudio"] == {"url": "http://127.0.0.1:8080", "project": 3}
    assert tomllib.loads(text)["split"] == {"train": 0.7, "val": 0.2, "test": 0.1}


def _versions(cli: CliRunner) -> list[dict[str, object]]:
    code, out, err = run_cli(cli, "versions", "--json")
    assert code == 0, err
    return list(json.loads(out))


def _doctor_row(cli: CliRunner, expect: int = 0) -> dict[str, object]:
    """`a2m doctor --json`'s Label Studio row; the exit status must be `expect`."""
    code, out, err = run_cli(cli, "doctor", "--json")
    assert code == expect, out + err
    assert LEGACY_TOKEN not in out
    (row,) = [r for r in json.loads(out) if r["name"] == "label studio"]
    return dict(row)


@pytest.mark.labelstudio
@pytest.mark.slow
def test_local_studio_restart_token_change_stopped_server_and_sync_note(
    cli: CliRunner,
    workspace: Workspace,
    ls_template: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The initialised template (admin, legacy token, a PAT) skips Label Studio's migrations.
    _, pat = copy_server(ls_template, workspace.data_dir / "labelstudio")
    workspace.write_secret("labelstudio_local_token", LEGACY_TOKEN)
    workspace.write_secret("labelstudio_local_password", PASSWORD)
    try:
        code, out, err = run_cli(cli, "studio", "up", "--port", str(free_port()))
        assert code == 0, err
        text = workspace.config_path.read_text()
        assert [line for line in text.splitlines() if line.startswith("#")] == INIT_COMMENTS
        assert "a2m connect --create" in out  # nothing is connected yet
        code, out, err = run_cli(cli, "connect", "--create", "Rough edges", "--labels", "a,b")
        assert code == 0, err
        project = workspace.read_config()["labelstudio"]["project"]

        # sync --note; without one, the note says how labels were picked, not "(latest)".
        make_image_folder(tmp_path / "one", {"a": 2, "b": 1}, seed=31)
        code, _, err = run_cli(cli, "collect", str(tmp_path / "one"), "--labels-from-folders")
        assert code == 0, err
        code, _, err = run_cli(cli, "sync")
        assert code == 0, err
        make_image_folder(tmp_path / "two", {"a": 1, "b": 1}, seed=32)
        code, _, err = run_cli(cli, "collect", str(tmp_path / "two"), "--labels-from-folders")
        assert code == 0, err
        code, _, err = run_cli(cli, "sync", "--note", "second batch", "--policy", "majority")
        assert code == 0, err
        first, second = _versions(cli)
        assert first["note"] == (
            f"sync of Label Studio project {project}; labels: latest annotation per task"
        )
        assert second["note"] == "second batch" and second["item_count"] == 5

        # The doctor contacts the server and checks the token, and never shows it.
        url = workspace.read_config()["labelstudio"]["url"]
        studio = _doctor_row(cli)
        assert studio["status"] == "ok", studio
        assert f"at {url} (this workspace's)" in studio["detail"]
        assert f"project {project} “Rough edges” (5 tasks)" in studio["detail"]
        wrong = "0" * 40
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", wrong)
        studio = _doctor_row(cli, expect=1)
        assert studio["status"] == "fail" and "rejected the legacy API token" in studio["detail"]
        assert studio["fix"] == f"a2m connect {url} --token -" and wrong not in studio["detail"]
        monkeypatch.delenv("LABEL_STUDIO_API_KEY")

        # After a restart, what is connected is said instead of how to create a project.
        run_cli(cli, "studio", "down")
        code, out, err = run_cli(cli, "studio", "up", "--port", str(free_port()))
        assert code == 0, err
        assert f"Connected to project {project}" in out and "Rough edges" in out
        assert "--create" not in out
        assert [
            line for line in workspace.config_path.read_text().splitlines() if line.startswith("#")
        ] == INIT_COMMENTS

        # A stopped server: said at once, with its URL and the command that starts it.
        url = workspace.read_config()["labelstudio"]["url"]
        run_cli(cli, "studio", "down")
        code, out, err = run_cli(cli, "sync")
        assert code == 1
        assert f"cannot reach Label Studio at {url}" in err and "a2m studio up" in err, err
        studio = _doctor_row(cli, expect=1)
        assert studio["detail"] == f"not reachable at {url} (connection refused)"
        assert studio["fix"] == "a2m studio up"
        # Another server (here nobody on a free port) is not ours to start.
        other = f"http://127.0.0.1:{free_port()}"
        monkeypatch.setenv("LABEL_STUDIO_URL", other)
        code, out, err = run_cli(cli, "sync")
        assert code == 1 and other in err and "is the server running" in err, err
        assert "a2m studio up" not in err
        monkeypatch.delenv("LABEL_STUDIO_URL")

        # A new token alone: the saved URL and project are kept, the token replaced.
        code, out, err = run_cli(cli, "studio", "up", "--port", str(free_port()))
        assert code == 0, err
        code, out, err = run_cli(cli, "connect", "--token", pat, "--json")
        assert code == 0, err
        made = json.loads(out)
        assert made["project"] == project and made["token_kind"] == "pat"
        assert made["url"] == workspace.read_config()["labelstudio"]["url"]
        assert workspace.read_secrets()["labelstudio_token"] == pat
        assert pat not in out and pat not in workspace.config_path.read_text()
    finally:
        run_cli(cli, "studio", "down")


def test_connect_without_a_saved_project_says_how_to_choose_one(
    cli: CliRunner, workspace: Workspace
) -> None:
    # Refused before any request: there is nothing saved to fall back on.
    code, _, err = run_cli(cli, "connect", "http://127.0.0.1:9", "--token", "t" * 40)
    assert code == 1 and "none is saved" in err and "a2m connect --project ID" in err
