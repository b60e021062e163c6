"""`a2m doctor` on real workspaces: each row says what it found and, for a problem, the command
that fixes it; a required failure exits 1. The weights row reads a real torch hub folder and asks
a real (refusing) address; Label Studio rows contact a free port nobody listens on. A live server
with a good and a bad token: tests/labelstudio/test_rough_edges.py.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from annotate2model import doctor
from annotate2model.labelstudio.server import free_port
from annotate2model.store.db import SCHEMA_HEAD
from annotate2model.training.features import weights
from annotate2model.workspace import Workspace
from tests.conftest import run_cli

ROWS = [
    "python",
    "torch",
    "devices",
    "torchvision",
    "label-studio",
    "weights (resnet18)",
    "workspace",
    "store",
    "permissions",
    "disk",
    "label studio",
]


def _doctor(cli: CliRunner) -> tuple[int, dict[str, dict[str, Any]]]:
    code, out, err = run_cli(cli, "doctor", "--json")
    rows = json.loads(out)
    assert [set(r) for r in rows] == [
        {"name", "status", "ok", "detail", "fix", "required"} for _ in rows
    ], err
    return code, {r["name"]: r for r in rows}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub folder (TORCH_HOME), and a download address that refuses connections,
    so the weights row never depends on this machine's cache or network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    refused = f"http://127.0.0.1:{free_port()}/resnet18-f37072fd.pth"
    monkeypatch.setattr(weights, "imagenet_url", lambda _backbone: refused)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_a_healthy_workspace_offline(cli: CliRunner, workspace: Workspace, hub: Path) -> None:
    code, out, err = run_cli(cli, "init")
    assert code == 0, err
    code, rows = _doctor(cli)
    # Nothing required fails: no weights and no Label Studio are warnings, with their fixes.
    assert code == 0
    assert list(rows) == ROWS
    assert rows["store"]["status"] == "ok" and f"schema {SCHEMA_HEAD}" in rows["store"]["detail"]
    assert rows["workspace"]["detail"] == str(workspace.root)
    assert rows["disk"]["status"] == "ok" and "GiB free" in rows["disk"]["detail"]
    offline = rows["weights (resnet18)"]
    assert offline["status"] == "warn" and not offline["required"]
    assert "not cached and not downloadable: offline" in offline["detail"]
    assert "connection refused" in offline["detail"].lower()
    assert "`a2m demo` falls back to probes on a random network's features" in offline["detail"]
    assert "--weights FILE" in offline["fix"] and str(hub) in offline["fix"]
    studio = rows["label studio"]
    assert studio["status"] == "warn" and "a2m studio up" in studio["fix"]

    # The weights file in the hub cache: the row says where.
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"not read by the doctor")
    code, rows = _doctor(cli)
    cached = rows["weights (resnet18)"]
    assert cached["status"] == "ok" and "cached" in cached["detail"] and cached["fix"] is None

    # The table: one row per check, the fix under its problem.
    code, out, _ = run_cli(cli, "doctor")
    assert code == 0 and "fix: a2m studio up" in out and str(workspace.root) in out


def test_no_workspace_and_an_old_schema_fail_with_a2m_init(
    cli: CliRunner,
    workspace: Workspace,
    hub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A workspace folder without its store (as `init_workspace` alone leaves it).
    code, rows = _doctor(cli)
    assert code == 1
    assert (
        rows["store"]["status"] == "fail" and rows["store"]["fix"] == f"a2m init {workspace.root}"
    )
    code, _, err = run_cli(cli, "init")
    assert code == 0, err
    # A store at an older schema than the code's.
    with sqlite3.connect(workspace.store_path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0001'")
    code, rows = _doctor(cli)
    assert code == 1
    store = rows["store"]
    assert (
        store["status"] == "fail" and "0001" in store["detail"] and SCHEMA_HEAD in store["detail"]
    )
    assert store["fix"] == f"a2m init {workspace.root}"
    # No workspace at all: the machine's rows still come, then the way to make one.
    monkeypatch.setenv("A2M_HOME", str(tmp_path / "nowhere"))
    code, rows = _doctor(cli)
    assert code == 1
    assert rows["torch"]["status"] == "ok" and rows["workspace"]["status"] == "fail"
    assert f"a2m init {tmp_path / 'nowhere'}" in rows["workspace"]["fix"]
    assert "store" not in rows


def test_label_studio_down_names_the_url_and_the_fix(
    cli: CliRunner, workspace: Workspace, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(cli, "init")
    assert code == 0, err
    token = "a2mdoctor0legacy0token0123456789abcdef0"
    url = f"http://127.0.0.1:{free_port()}"
    # Someone else's server, down: the doctor asked it, and says so.
    workspace.update_config("labelstudio", {"url": url, "project": 4})
    workspace.write_secret("labelstudio_token", token)
    code, rows = _doctor(cli)
    studio = rows["label studio"]
    assert code == 1 and studio["status"] == "fail" and studio["required"]
    assert studio["detail"] == f"not reachable at {url} (connection refused)"
    assert "a2m studio up" not in studio["fix"] and url in studio["fix"]
    # The workspace's own server (its data folder, the token `studio up` made), stopped.
    (workspace.data_dir / "labelstudio" / "data").mkdir(parents=True)
    workspace.write_secret("labelstudio_local_token", token)
    code, rows = _doctor(cli)
    assert code == 1 and rows["label studio"]["fix"] == "a2m studio up"
    code, out, _ = run_cli(cli, "doctor")
    assert f"not reachable at {url}" in out and token not in out
    # A URL with no token: said before any request.
    workspace.write_secret("labelstudio_token", None)
    workspace.write_secret("labelstudio_local_token", None)
    code, rows = _doctor(cli)
    assert rows["label studio"]["detail"] == f"{url}: no token saved"
    assert rows["label studio"]["fix"] == f"a2m connect {url} --token -"


def test_little_free_disk_is_a_warning(
    cli: CliRunner, workspace: Workspace, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(cli, "init")
    assert code == 0, err
    # Any real disk has less free space than this.
    monkeypatch.setattr(doctor, "LOW_DISK_BYTES", 1 << 60)
    code, rows = _doctor(cli)
    assert code == 0 and rows["disk"]["status"] == "warn" and rows["disk"]["fix"]


def test_each_check_shows_as_it_completes_and_paths_stay_whole(
    cli: CliRunner, workspace: Workspace, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: `a2m doctor` was silent for seconds, then split the weights' path mid-name. Each
    check now prints once known, under a spinner that says what is awaited; wrapped at the
    terminal's width, a path or a command is never cut."""
    from io import StringIO

    from rich.console import Console

    from annotate2model.cli import workspace as workspace_cli

    code, _, err = run_cli(cli, "init")
    assert code == 0, err
    # The order the checks are told in, and what the doctor says it waits on.
    seen: list[str] = []
    waits: list[str] = []
    checks = doctor.run_checks(None, started=waits.append, done=lambda c: seen.append(c.name))
    assert seen == [c.name for c in checks] and seen[0] == "python"
    assert "importing torch" in waits and any("weights" in w for w in waits)

    # A deep hub folder: the weights' file is longer than what is left of a 60-column line.
    deep = Path(str(hub).replace("torch", "t" * 20 + "/torch", 1))
    monkeypatch.setenv("TORCH_HOME", str(deep.parent.parent))
    terminal = StringIO()
    shown = Console(file=terminal, force_terminal=True, width=60, color_system=None)
    monkeypatch.setattr(workspace_cli, "console", shown)
    printed: list[str] = []
    real_done = workspace_cli._print_check

    def done(check: doctor.Check) -> None:
        printed.append(check.name)
        real_done(check)

    monkeypatch.setattr(workspace_cli, "_print_check", done)
    code, _, err = run_cli(cli, "doctor")
    assert code == 0, err
    assert printed == ROWS
    # What stays on the screen: the spinner's redraws (cursor codes, then its line) taken out.
    screen = [
        re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in terminal.getvalue().split("\n")
    ]
    lines = [
        kept.rstrip()
        for kept in (line.split("\r")[-1] for line in screen)
        if kept.strip() and not kept.lstrip().startswith(("\u280b", "checking"))
    ]
    assert any(line.strip().rstrip(":").endswith("resnet18-f37072fd.pth") for line in lines) or any(
        str(deep / "resnet18-f37072fd.pth") in line for line in lines
    ), "\n".join(lines)
    fix = next(i for i, line in enumerate(lines) if line.startswith("     fix: a2m studio up"))
    assert any("a2m connect URL --token - --project ID" in line for line in lines[fix : fix + 3])
    assert [x for x in lines if len(x) > 60 and " " in x.strip()] == [], "\n".join(lines)
    assert str(deep) in "".join(lines) or any(str(deep) in line for line in lines)
