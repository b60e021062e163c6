"""A re-sync lists only the tasks changed since the last one, and still finds every deletion."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.sync import sync_project
from annotate2model.store import Store
from tests.conftest import image_bytes
from tests.labelstudio.conftest import LiveServer, choice

pytestmark = [pytest.mark.labelstudio, pytest.mark.both_dialects]


def listings(client: LabelStudioClient) -> list[str]:
    """Records each task listing the client sends: ids of the "changed" tasks (updated_at
    filter), ids of "all" tasks, or "full" tasks of the whole project (`fields=all`, which a
    sync narrows with `include` to the keys it reads)."""
    seen: list[str] = []

    def record(request: httpx.Request) -> None:
        if request.url.path != "/api/tasks":
            return
        query = request.url.params.get("query") or ""
        if request.url.params.get("fields") != "all":
            seen.append("changed" if "filter:tasks:updated_at" in query else "all")
        elif "selectedItems" not in query:
            seen.append("full")

    client._http.event_hooks["request"].append(record)
    return seen


def test_resync_lists_changed_tasks_and_counts_find_deletions(
    ls_server: LiveServer, store: Store, image_server: tuple[str, Path]
) -> None:
    base, served = image_server
    for i in range(13):
        (served / f"c{i}.png").write_bytes(image_bytes(700 + i))
    project = ls_server.create_project(["a", "b"])
    with ls_server.client() as c:
        ids = c.import_tasks(
            project,
            [
                {"data": {"image": f"{base}/c{i}.png"}, "annotations": [choice("a")]}
                for i in range(12)
            ],
        )
        seen = listings(c)
        first = sync_project(store, c, project)
        assert first.version is not None and first.tasks_total == 12
        assert seen == ["full"]  # nothing stored yet: every task in full, no id listing first

        seen.clear()
        again = sync_project(store, c, project)
        assert again.version is not None and not again.version.created
        assert (again.tasks_total, again.tasks_fetched) == (12, 0)
        assert seen == ["changed"]

        task = ls_server.api("GET", f"/api/tasks/{ids[2]}")
        ls_server.api(
            "PATCH", f"/api/annotations/{task['annotations'][0]['id']}/", json=choice("b")
        )
        seen.clear()
        relabeled = sync_project(store, c, project)
        assert (relabeled.relabeled, relabeled.tasks_fetched, relabeled.tasks_total) == (1, 1, 12)
        assert seen == ["changed"]

        # One task deleted and one created: the count alone is unchanged, yet the deletion is
        # found (the new task is among the changed ones, so the stored ones are one short).
        ls_server.api("DELETE", f"/api/tasks/{ids[5]}/")
        c.import_tasks(
            project, [{"data": {"image": f"{base}/c12.png"}, "annotations": [choice("b")]}]
        )
        seen.clear()
        swapped = sync_project(store, c, project)
        assert seen == ["changed", "all"]
        assert (swapped.deleted_tasks, swapped.added, swapped.removed) == (1, 1, 1)
        assert swapped.tasks_total == 12

        seen.clear()
        settled = sync_project(store, c, project)
        assert settled.version is not None and not settled.version.created
        assert seen == ["changed"]
        assert json.dumps(settled.skipped) == "[]"
