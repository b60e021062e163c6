"""Several people and processes on one store at once, on SQLite and on a real PostgreSQL: whole
`a2m` processes started together, as a team's machines would start them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from annotate2model.errors import StoreError
from annotate2model.labelstudio.server import free_port
from annotate2model.settings import Settings, load_settings
from annotate2model.store import Store
from annotate2model.store.versions import list_versions, version_items
from annotate2model.workspace import Workspace
from tests.conftest import make_image_folder
from tests.test_processes import a2m

pytestmark = [pytest.mark.both_dialects, pytest.mark.slow]


def _import(workspace: Workspace, database_url: str | None, folder: Path) -> subprocess.Popen[str]:
    """`a2m import-folder FOLDER --json` started on the test's workspace and database."""
    return a2m(workspace, "import-folder", str(folder), "--json", database_url=database_url)


def _finish(processes: list[subprocess.Popen[str]]) -> list[str]:
    outs = []
    for p in processes:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def test_the_same_import_started_together_makes_one_version(
    workspace: Workspace, store: Store, database_url: str | None, tmp_path: Path
) -> None:
    folder = make_image_folder(tmp_path / "photos", {"ants": 12, "bees": 12})
    outs = _finish([_import(workspace, database_url, folder) for _ in range(3)])
    with store.read() as session:
        versions = list_versions(session)
        assert [v.number for v in versions] == [1]
        assert len(version_items(session, 1)) == 24
    # Every process names the one version; exactly one of them made it.
    results = [json.loads(out) for out in outs]
    assert {r["version"]["version"]["number"] for r in results} == {1}
    assert sorted(r["version"]["created"] for r in results) == [False, False, True]


def test_different_imports_started_together_each_get_their_own_number(
    workspace: Workspace, store: Store, database_url: str | None, tmp_path: Path
) -> None:
    folders = [
        make_image_folder(tmp_path / f"photos{i}", {"ants": 4 + i, "bees": 4}, seed=i)
        for i in range(3)
    ]
    _finish([_import(workspace, database_url, f) for f in folders])
    with store.read() as session:
        versions = list_versions(session)
        assert sorted(v.number for v in versions) == [1, 2, 3]
        # Each version holds exactly one folder's images, whole.
        assert sorted(len(version_items(session, v.number)) for v in versions) == [8, 9, 10]


def test_a_reader_of_version_n_is_unaffected_by_a_writer_of_n_plus_1(
    workspace: Workspace, store: Store, database_url: str | None, tmp_path: Path
) -> None:
    first = make_image_folder(tmp_path / "v1", {"ants": 6, "bees": 6})
    _finish([_import(workspace, database_url, first)])
    with store.read() as session:
        before = version_items(session, 1)
        # A sync or import commits version 2 while this read is open.
        second = make_image_folder(tmp_path / "v2", {"ants": 9, "bees": 9}, seed=5)
        _finish([_import(workspace, database_url, second)])
        assert version_items(session, 1) == before
    with store.read() as session:
        assert [v.number for v in list_versions(session)] == [1, 2]


def test_a_store_written_by_a_newer_annotate2model_is_refused(settings: Settings) -> None:
    Store.open(settings).close()
    store = Store.open(settings)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    store.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(settings)


@pytest.mark.postgresql
def test_an_unreachable_postgresql_is_a_clear_error_without_the_password(
    workspace: Workspace,
) -> None:
    url = f"postgresql+psycopg://team:s3cret-pw@127.0.0.1:{free_port()}/a2m"
    settings = load_settings(workspace, env={"A2M_DATABASE_URL": url})
    with pytest.raises(StoreError) as caught:
        Store.open(settings)
    message = str(caught.value.message)
    assert "cannot open the store" in message and "127.0.0.1" in message
    assert "s3cret-pw" not in message and "***" in message
