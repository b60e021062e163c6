"""`a2m store migrate-to URL`: a workspace's SQLite store copied into a real PostgreSQL, whole
and verified; a non-empty target refused before anything is written to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from annotate2model.labelstudio.server import free_port
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.flags import list_flags, record_flags
from annotate2model.store.models import Run
from annotate2model.store.runs import create_run, finish_run, list_runs
from annotate2model.store.versions import list_versions, version_items
from annotate2model.workspace import Workspace
from tests.conftest import make_image_folder, run_cli
from tests.postgres import PostgresServer
from tests.review.test_store_flags import _flags, _setup

pytestmark = pytest.mark.postgresql


def _pg_store(workspace: Workspace, url: str) -> Store:
    return Store.open(load_settings(workspace, env={"A2M_DATABASE_URL": url}))


def test_a_sqlite_store_moves_to_postgresql_whole(
    cli: CliRunner,
    store: Store,
    workspace: Workspace,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    # Flags on three tasks (a version and a run), then two imported versions and a finished run.
    run, rows = _setup(store)
    with store.write() as session:
        record_flags(session, run, _flags(rows))
    for i, count in enumerate((5, 8)):
        folder = make_image_folder(tmp_path / f"v{i}", {"ants": count, "bees": count}, seed=i)
        assert run_cli(cli, "import-folder", str(folder))[0] == 0
    with store.write() as session:
        done = create_run(session, 2, "train", {"backbone": "resnet18"}, "cpu")
        finish_run(session, done.id, "succeeded", metrics={"val_accuracy": 0.75})
    url = postgres_server.new_database()

    code, out, err = run_cli(cli, "store", "migrate-to", url, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["versions_verified"] == 3
    counted = {t["name"]: t["rows"] for t in result["tables"]}
    assert counted["dataset_versions"] == 3 and counted["flags"] == 3 and counted["runs"] == 2

    copy = _pg_store(workspace, url)
    try:
        with store.read() as here, copy.read() as there:
            assert list_versions(here) == list_versions(there)
            for v in list_versions(here):
                assert version_items(here, v.number) == version_items(there, v.number)
            assert list_runs(here) == list_runs(there)
            assert list_flags(here, run) == list_flags(there, run)
        # The copy goes on where the store left off: the next run takes the next id.
        with copy.write() as session:
            assert create_run(session, 2, "train", {}, "cpu").id == done.id + 1
            assert session.scalar(select(func.count()).select_from(Run)) == 3
    finally:
        copy.close()

    # A second copy into the same database is refused, and the target keeps its 3 runs.
    code, _, err = run_cli(cli, "store", "migrate-to", url)
    assert code == 1 and "already holds a2m data" in err and "createdb" in err
    copy = _pg_store(workspace, url)
    try:
        with copy.read() as session:
            assert len(list_runs(session)) == 3
    finally:
        copy.close()


def test_a_bad_or_unreachable_target_is_a_clear_error(cli: CliRunner, store: Store) -> None:
    code, _, err = run_cli(
        cli, "store", "migrate-to", f"postgresql+psycopg://a2m:pw123@127.0.0.1:{free_port()}/x"
    )
    assert code == 1 and "cannot reach" in err and "pw123" not in err
    code, _, err = run_cli(cli, "store", "migrate-to", "mysql://a2m@127.0.0.1/x")
    assert code != 0 and "SQLite or PostgreSQL" in err
