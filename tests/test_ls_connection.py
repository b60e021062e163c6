"""The saved Label Studio connection without a server: what is missing is said, and by which key."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.connection import (
    NotConnected,
    connect,
    open_client,
    project_id,
    saved_files_root,
)
from annotate2model.settings import load_settings
from annotate2model.workspace import Workspace
from tests.conftest import run_cli


def test_missing_url_token_and_project_are_named(workspace: Workspace) -> None:
    settings = load_settings(workspace, env={})
    with pytest.raises(NotConnected) as info:
        open_client(settings)
    assert info.value.missing == "url" and "--" not in str(info.value)
    with pytest.raises(NotConnected) as info:
        open_client(load_settings(workspace, env={"LABEL_STUDIO_URL": "http://127.0.0.1:9"}))
    assert info.value.missing == "token"
    # Nothing connected: asking for the project leads to the first step that works (a server),
    # not to `a2m connect --project ID`, which would fail next for want of a URL.
    with pytest.raises(NotConnected) as info:
        project_id(settings)
    assert info.value.missing == "url" and "a2m studio up" in (info.value.hint or "")
    with pytest.raises(NotConnected) as info:
        project_id(load_settings(workspace, env={"LABEL_STUDIO_URL": "http://127.0.0.1:9"}))
    assert info.value.missing == "token"
    connected = {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "t"}
    with pytest.raises(NotConnected) as info:
        project_id(load_settings(workspace, env=connected))
    assert info.value.missing == "project" and "--project ID" in (info.value.hint or "")
    workspace.update_config("labelstudio", {"project": 7})
    assert project_id(load_settings(workspace, env={})) == 7


def test_connect_needs_exactly_one_project_and_labels_to_create_one(workspace: Workspace) -> None:
    settings = load_settings(workspace, env={})
    # Refused before any request: neither, or both, of an existing and a new project.
    for kwargs in ({}, {"project": 1, "create": "New"}):
        with pytest.raises(LabelStudioError, match="either an existing project or a new one"):
            connect(settings, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(LabelStudioError, match="at least one label") as info:
        connect(settings, create="New", labels=[" ", ""])
    assert "--" not in str(info.value)


def test_files_root_is_read_from_one_setting(workspace: Workspace) -> None:
    assert saved_files_root(workspace) is None
    workspace.update_config("labelstudio", {"files_root": str(workspace.root / "photos")})
    assert saved_files_root(workspace) == workspace.root / "photos"


def test_sync_collect_and_flag_with_nothing_connected_hint_the_step_that_works_first(
    cli: CliRunner,
) -> None:
    for args in (["sync"], ["collect", "."], ["flag", "1"]):
        code, _, err = run_cli(cli, *args)
        assert code == 1 and "no Label Studio is connected" in err, (args, err)
        assert "a2m studio up" in err and "--token -" in err and "--token T" not in err
