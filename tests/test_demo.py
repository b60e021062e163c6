"""`a2m demo` runs the tour from nothing and refuses to overwrite a used workspace."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.versions import diff_versions, list_versions
from annotate2model.workspace import Workspace
from tests.conftest import run_cli


def test_demo_from_nothing(tmp_path: Path) -> None:
    target = tmp_path / "tour"
    code, out, _ = run_cli(CliRunner(), "demo", str(target), "--per-class", "6")
    assert code == 0, out
    assert "a2m diff 1 2" in out
    store = Store.open(load_settings(Workspace(target), {}))
    with store.read() as session:
        assert [v.item_count for v in list_versions(session)] == [18, 36]
        assert diff_versions(session, 1, 2).counts == {"added": 18, "removed": 0, "relabeled": 0}
    store.close()
    code, _, err = run_cli(CliRunner(), "demo", str(target))
    assert code == 1 and "already holds versions" in err
