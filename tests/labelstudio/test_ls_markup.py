"""What `a2m sync` and `a2m collect` say of files they could not use as asked: reasons are text,
not Rich markup ("raise [images] max_pixels" reaches the user whole; Rich took "[images]" for a
style and dropped it), and images that no label folder holds are counted and named."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, make_image_folder, run_cli
from tests.labelstudio.conftest import LiveServer, choice

pytestmark = pytest.mark.labelstudio

HINT = "raise [images] max_pixels to allow it"


def test_a_too_large_image_names_the_setting_whole(
    cli: CliRunner,
    ls_server: LiveServer,
    workspace: Workspace,
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = ls_server.create_project(["ant", "bee"], "markup")
    big = image_bytes(1, size=(200, 200))
    small = image_bytes(2, size=(40, 40))
    with ls_server.client() as c:
        c.import_tasks(
            project,
            [
                {"data": {"image": "data:image/png;base64," + base64.b64encode(png).decode()}}
                | {"annotations": [choice("ant")]}
                for png in (big, small)
            ],
        )
    code, _, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(project)
    )
    assert code == 0, err
    monkeypatch.setenv("A2M_MAX_IMAGE_PIXELS", str(100 * 100))
    code, out, err = run_cli(cli, "sync")
    assert code == 0, err
    assert HINT in " ".join(out.split()), out

    folder = make_image_folder(workspace.root.parent / "photos", {"ant": 1})
    Image.new("RGB", (300, 300)).save(folder / "ant" / "large.png")
    Image.new("RGB", (20, 20), "red").save(folder / "loose.png")  # in no label folder
    code, out, err = run_cli(cli, "collect", str(folder), "--labels-from-folders", "--json")
    assert code == 0, err
    assert json.loads(out)["outside_label_folders"] == ["loose.png"]
    Image.new("RGB", (20, 20), "blue").save(folder / "loose2.png")
    code, out, err = run_cli(cli, "collect", str(folder), "--labels-from-folders")
    assert code == 0, err
    said = " ".join(out.split())
    assert "large.png" in out and HINT in said, out
    assert "1 image(s) at the top of" in said and "added unlabeled: loose2.png." in said, out
