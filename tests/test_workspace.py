"""Workspaces: creation, discovery, settings precedence, secrets."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from annotate2model.errors import SettingsError, WorkspaceError
from annotate2model.settings import Secret, load_settings
from annotate2model.workspace import Workspace, find_workspace, init_workspace


def test_init_creates_layout(tmp_path: Path) -> None:
    ws, created = init_workspace(tmp_path / "w")
    assert created
    for sub in ("blobs", "runs", "cache"):
        assert (ws.data_dir / sub).is_dir()
    assert ws.config_path.is_file()
    again, created_again = init_workspace(tmp_path / "w")
    assert again == ws and not created_again


def test_find_workspace_order(tmp_path: Path) -> None:
    a, _ = init_workspace(tmp_path / "a")
    b, _ = init_workspace(tmp_path / "b")
    deep = a.root / "x" / "y"
    deep.mkdir(parents=True)
    assert find_workspace(None, None, deep) == a
    assert find_workspace(None, str(b.root), deep) == b
    assert find_workspace(b.root, str(a.root), deep) == b
    # The message says what is wrong in words any caller can show; the CLI's fix is the hint.
    with pytest.raises(WorkspaceError, match="no workspace") as missing:
        find_workspace(None, None, tmp_path)
    assert "a2m" not in missing.value.message and "--" not in missing.value.message
    assert missing.value.hint is not None and "a2m init" in missing.value.hint
    with pytest.raises(WorkspaceError, match="not an annotate2model workspace") as wrong:
        find_workspace(None, str(tmp_path / "nowhere"), deep)
    assert wrong.value.hint is not None and "A2M_HOME" in wrong.value.hint
    with pytest.raises(WorkspaceError) as flagged:
        find_workspace(tmp_path / "nowhere", None, deep)
    assert flagged.value.hint is not None and "--workspace" in flagged.value.hint
    assert "--workspace" not in flagged.value.message


def test_settings_precedence(workspace: Workspace) -> None:
    workspace.update_config("store", {"database_url": "sqlite:///from-toml.db"})
    assert load_settings(workspace, {}).database_url == "sqlite:///from-toml.db"
    env = {"A2M_DATABASE_URL": "sqlite:///from-env.db"}
    assert load_settings(workspace, env).database_url == "sqlite:///from-env.db"
    flags = {"database_url": "sqlite:///from-flag.db"}
    assert load_settings(workspace, env, flags).database_url == "sqlite:///from-flag.db"


def test_default_database_is_sqlite_in_workspace(workspace: Workspace) -> None:
    assert load_settings(workspace, {}).database_url == f"sqlite:///{workspace.store_path}"


def test_bad_split_fractions(workspace: Workspace) -> None:
    workspace.update_config("split", {"train": 0.9, "val": 0.2, "test": 0.1})
    with pytest.raises(SettingsError, match="add up to 1"):
        load_settings(workspace, {})


def test_broken_toml_is_a_clear_error(workspace: Workspace) -> None:
    workspace.config_path.write_text("[store\n")
    with pytest.raises(WorkspaceError, match="not valid TOML"):
        load_settings(workspace, {})


def test_secret_file_mode_and_token_hidden(workspace: Workspace) -> None:
    workspace.write_secret("labelstudio_token", "tok-123456")
    mode = stat.S_IMODE(workspace.secrets_path.stat().st_mode)
    assert mode == 0o600
    settings = load_settings(workspace, {})
    assert settings.labelstudio.token is not None
    assert settings.labelstudio.token.reveal() == "tok-123456"
    assert "tok-123456" not in repr(settings)
    assert "tok-123456" not in str(Secret("tok-123456"))
    assert "tok-123456" not in workspace.config_path.read_text()
