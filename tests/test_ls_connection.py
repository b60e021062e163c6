"""The saved Label Studio connection without a server: what is missing is said, and by which key."""

from __future__ import annotations

import pytest

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


def test_missing_url_token_and_project_are_named(workspace: Workspace) -> None:
    settings = load_settings(workspace, env={})
    with pytest.raises(NotConnected) as info:
        open_client(settings)
    assert info.value.missing == "url" and "--" not in str(info.value)
    with pytest.raises(NotConnected) as info:
        open_client(load_settings(workspace, env={"LABEL_STUDIO_URL": "http://127.0.0.1:9"}))
    assert info.value.missing == "token"
    with pytest.raises(NotConnected) as info:
        project_id(settings)
    assert info.value.missing == "project"
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
