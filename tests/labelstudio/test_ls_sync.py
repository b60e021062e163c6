"""connect, collect and sync against a real Label Studio: token kinds, URL kinds, policies."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.server import free_port
from annotate2model.labelstudio.sync import sync_project
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from annotate2model.store.tasks import load_tasks
from annotate2model.store.versions import version_items
from annotate2model.workspace import Workspace, init_workspace
from tests.conftest import image_bytes, make_image_folder, run_cli
from tests.labelstudio.conftest import LiveServer, choice

pytestmark = [pytest.mark.labelstudio, pytest.mark.both_dialects]


def connect(cli: CliRunner, ls: LiveServer, *args: str) -> dict[str, object]:
    code, out, err = run_cli(cli, "connect", ls.url, "--token", ls.legacy, *args, "--json")
    assert code == 0, err
    return dict(json.loads(out))


def test_connect_accepts_both_token_kinds_and_explains_failures(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace
) -> None:
    created = connect(cli, ls_server, "--create", "Connect test", "--labels", "ant,bee")
    assert created["labels"] == ["ant", "bee"] and created["token_kind"] == "legacy"
    project = str(created["project"])
    code, out, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.pat, "--project", project, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["token_kind"] == "pat"
    config = workspace.read_config()["labelstudio"]
    assert config == {"url": ls_server.url, "project": int(project)}
    assert ls_server.pat not in workspace.config_path.read_text()
    assert oct(workspace.secrets_path.stat().st_mode & 0o777) == "0o600"

    bad_url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_cli(cli, "connect", bad_url, "--token", "x" * 40, "--project", "1")
    assert code == 1 and "cannot reach Label Studio" in err
    wrong = "0" * 40
    code, _, err = run_cli(cli, "connect", ls_server.url, "--token", wrong, "--project", "1")
    assert code == 1 and "rejected the legacy API token" in err and wrong not in err
    fake_pat = ls_server.pat[:-4] + "AAAA"
    code, _, err = run_cli(cli, "connect", ls_server.url, "--token", fake_pat, "--project", "1")
    assert code == 1 and "personal access token" in err and fake_pat not in err
    code, _, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.legacy, "--project", "9999"
    )
    assert code == 1 and "no project 9999" in err
    short = ("--create", "ab", "--labels", "a")
    code, _, err = run_cli(cli, "connect", ls_server.url, "--token", ls_server.legacy, *short)
    assert code == 1 and err.endswith("title: Ensure this field has at least 3 characters.")
    text_project = ls_server.api(
        "POST",
        "/api/projects",
        json={
            "title": "text only",
            "label_config": '<View><Text name="t" value="$text"/>'
            '<Choices name="c" toName="t"><Choice value="x"/></Choices></View>',
        },
    )["id"]
    code, _, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(text_project)
    )
    assert code == 1 and "needs an <Image>" in err


def test_collect_then_sync_then_nothing_changed(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace, tmp_path: Path
) -> None:
    project = connect(cli, ls_server, "--create", "Collect test", "--labels", "cat,dog")["project"]
    folder = make_image_folder(tmp_path / "photos", {"cat": 4, "dog": 3, "owl": 1}, seed=11)
    (folder / "cat" / "broken.png").write_bytes(b"not an image")
    code, out, err = run_cli(cli, "collect", str(folder), "--labels-from-folders", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["mode"] == "upload"
    assert result["tasks_created"] == 8 and result["labeled"] == 7
    reasons = dict(result["skipped"])
    assert "cat/broken.png" in reasons and "not in the labeling config" in reasons["owl/owl_0.png"]
    # Folder labels go in as annotations that are not ground truth (Label Studio's default is).
    tasks = ls_server.api("GET", "/api/tasks", params={"project": project, "fields": "all"})
    flags = [a["ground_truth"] for t in tasks["tasks"] for a in t["annotations"]]
    assert flags == [False] * 7

    code, out, err = run_cli(cli, "sync", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["created"] and first["added"] == 7 and first["unlabeled"] == 1
    # Same folder again: every image is already in the project.
    code, out, _ = run_cli(cli, "collect", str(folder), "--json")
    assert json.loads(out)["tasks_created"] == 0
    assert json.loads(out)["already_in_project"] == 8
    code, out, _ = run_cli(cli, "sync")
    assert code == 0 and "Nothing changed" in out
    code, out, _ = run_cli(cli, "sync", "--json")
    again = json.loads(out)
    assert not again["created"] and again["fetched"] == 0 and again["version"] == first["version"]


def test_collect_as_predictions_gives_unlabeled_tasks(
    cli: CliRunner, ls_server: LiveServer, tmp_path: Path
) -> None:
    connect(cli, ls_server, "--create", "Predictions test", "--labels", "cat,dog")
    folder = make_image_folder(tmp_path / "p", {"cat": 2, "dog": 2}, seed=12)
    code, out, err = run_cli(
        cli, "collect", str(folder), "--labels-from-folders", "--as", "predictions", "--json"
    )
    assert code == 0, err
    code, out, _ = run_cli(cli, "sync", "--json")
    result = json.loads(out)
    assert result["unlabeled"] == 4 and result["added"] == 0
    # Nothing labeled on an empty store is no change: no empty version 1.
    assert result["version"] is None and result["created"] is False
    code, out, _ = run_cli(cli, "sync")
    assert code == 0 and "No version yet" in out


def test_every_url_kind_and_unreadable_images(
    ls_server: LiveServer, store: Store, image_server: tuple[str, Path]
) -> None:
    base, served = image_server
    project = ls_server.create_project(["a", "b"])
    local = ls_server.files_root / "local"
    local.mkdir(exist_ok=True)  # (once per dialect: the server outlives the test)
    (local / "l.png").write_bytes(image_bytes(201))
    (served / "h.png").write_bytes(image_bytes(202))
    (served / "garbage.png").write_bytes(b"\x89PNG but not really")
    with ls_server.client() as c:
        uploaded = c.upload_file(project, "u.png", image_bytes(203))
        assert c.add_local_storage(project, str(local))
        data_url = "data:image/png;base64," + base64.b64encode(image_bytes(204)).decode()
        tasks = [
            {"data": {"image": uploaded}, "annotations": [choice("a")]},
            {
                "data": {"image": "/data/local-files/?d=local/l.png"},
                "annotations": [choice("b")],
            },
            {"data": {"image": f"{base}/h.png"}, "annotations": [choice("a")]},
            {"data": {"image": data_url}, "annotations": [choice("b")]},
            # (named per project: the image server outlives the test, run once per dialect)
            {"data": {"image": f"{base}/missing-{project}.png"}, "annotations": [choice("a")]},
            {"data": {"image": f"{base}/garbage.png"}, "annotations": [choice("a")]},
        ]
        ids = c.import_tasks(project, tasks)
        result = sync_project(store, c, project)
    assert result.version is not None and result.version.version.item_count == 4
    problems = dict(result.skipped)
    assert "HTTP 404" in problems[ids[4]]
    assert "not an image" in problems[ids[5]] or "corrupt" in problems[ids[5]]
    with store.read() as session:
        items = version_items(session, result.version.version.number)
    assert {i.label for i in items} == {"a", "b"}
    # The broken image gets fixed on the server: the next sync retries and picks it up.
    (served / f"missing-{project}.png").write_bytes(image_bytes(205))
    with ls_server.client() as c:
        again = sync_project(store, c, project)
    assert again.version is not None and again.version.version.item_count == 5
    assert again.added == 1


def test_policies_cancelled_conflicts_and_foreign_labels(
    ls_server: LiveServer, store: Store, image_server: tuple[str, Path]
) -> None:
    base, served = image_server
    for i in range(7):
        (served / f"p{i}.png").write_bytes(image_bytes(300 + i))
    project = ls_server.create_project(["a", "b"])
    with ls_server.client() as c:
        ids = c.import_tasks(
            project,
            [
                # Two b, then one later a: latest says a, majority says b.
                {"data": {"image": f"{base}/p0.png"}, "annotations": [choice("b"), choice("b")]},
                # Ground truth b, later a.
                {
                    "data": {"image": f"{base}/p1.png"},
                    "annotations": [choice("b", ground_truth=True)],
                },
                # Only a cancelled (skipped) annotation.
                {
                    "data": {"image": f"{base}/p2.png"},
                    "annotations": [{"result": [], "was_cancelled": True}],
                },
                # A label outside the config.
                {"data": {"image": f"{base}/p3.png"}, "annotations": [choice("zebra")]},
                # The same image as task 0 under another task with another label: a conflict.
                {"data": {"image": f"{base}/p0.png?copy"}, "annotations": [choice("b")]},
                # Imported without a ground_truth key, then a later "a".
                {"data": {"image": f"{base}/p4.png"}, "annotations": [choice("b")]},
                # Imported with ground_truth false, then a later "a".
                {
                    "data": {"image": f"{base}/p5.png"},
                    "annotations": [choice("b", ground_truth=False)],
                },
                # Two imported answers, both ground truth: the later one counts.
                {"data": {"image": f"{base}/p6.png"}, "annotations": [choice("b"), choice("a")]},
            ],
        )
        for task_id in (ids[0], ids[1], ids[5], ids[6]):
            ls_server.api("POST", f"/api/tasks/{task_id}/annotations/", json=choice("a"))
        # Label Studio's own rule (tasks/serializers.py: `annotation.pop('ground_truth', True)`):
        # an annotation imported inline is ground truth unless the import says otherwise; one
        # created through the annotations API (or the UI) is not.
        flags = [
            [a["ground_truth"] for a in ls_server.api("GET", f"/api/tasks/{t}")["annotations"]]
            for t in (ids[5], ids[6], ids[7])
        ]
        assert flags == [[True, False], [False, False], [True, True]]
        latest = sync_project(store, c, project, policy="latest")
        problems = dict(latest.skipped)
        assert problems[ids[2]].startswith("skipped")
        assert "label outside config" in problems[ids[3]]
        assert "conflict" in problems[ids[4]] and "conflict" in problems[ids[0]]
        assert _task_labels(store, project, ids[:2]) == ["a", "a"]
        assert _task_labels(store, project, ids[5:8]) == ["a", "a", "a"]
        # Majority: task 0 is b (2 to 1), agreeing with its copy; task 1 ties and goes latest.
        majority = sync_project(store, c, project, policy="majority")
        assert not any("conflict" in r for _, r in majority.skipped)
        assert _task_labels(store, project, ids[:2]) == ["b", "a"]
        ls_server.api("DELETE", f"/api/tasks/{ids[4]}/")
        majority = sync_project(store, c, project, policy="majority")
        assert majority.deleted_tasks == 1
        truth = sync_project(store, c, project, policy="ground-truth")
        assert truth.deleted_tasks == 0
        # Ground truth wins over later answers (task 1's flagged "b", and task 5's "b" that
        # Label Studio flagged on import); without any (task 6) or among several (task 7,
        # and task 0's two imported "b"), the latest counts.
        assert _task_labels(store, project, ids[:2]) == ["b", "b"]
        assert _task_labels(store, project, ids[5:8]) == ["b", "a", "a"]


def _task_labels(store: Store, project: int, ids: list[int]) -> list[str | None]:
    with store.read() as session:
        tasks = load_tasks(session, project)
    return [tasks[i].label for i in ids]


def _labels(store: Store, result: object) -> list[str]:
    version = result.version.version.number  # type: ignore[attr-defined]
    with store.read() as session:
        return [i.label for i in version_items(session, version)]


def test_incremental_sync_fetches_only_changes_and_reconciles_deletions(
    ls_server: LiveServer, store: Store, image_server: tuple[str, Path]
) -> None:
    base, served = image_server
    for i in range(30):
        (served / f"i{i}.png").write_bytes(image_bytes(400 + i))
    project = ls_server.create_project(["a", "b"])
    with ls_server.client() as c:
        ids = c.import_tasks(
            project,
            [
                {"data": {"image": f"{base}/i{i}.png"}, "annotations": [choice("a")]}
                for i in range(30)
            ],
        )
        first = sync_project(store, c, project)
        assert first.tasks_fetched == 30 and first.version is not None
        task = ls_server.api("GET", f"/api/tasks/{ids[3]}")
        ls_server.api(
            "PATCH", f"/api/annotations/{task['annotations'][0]['id']}/", json=choice("b")
        )
        ls_server.api("DELETE", f"/api/tasks/{ids[7]}/")
        # Every task was touched within 2 s of the first sync (one bulk import): the re-sync
        # still asks the server for the changed task alone, by id, not for a full listing.
        full_reads: list[str] = []

        def record(request: httpx.Request) -> None:
            if request.url.params.get("fields") == "all" or "/api/tasks/" in request.url.path:
                full_reads.append(str(request.url.params.get("query") or request.url.path))

        c._http.event_hooks["request"].append(record)
        second = sync_project(store, c, project)
    assert [json.loads(q)["selectedItems"]["included"] for q in full_reads] == [[ids[3]]]
    assert second.tasks_fetched == 1 and second.images_downloaded == 0
    assert (second.added, second.removed, second.relabeled) == (0, 1, 1)
    assert (
        second.version is not None and second.version.version.parent == first.version.version.number
    )


def test_token_never_stored_in_the_database(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace, tmp_path: Path
) -> None:
    connect(cli, ls_server, "--create", "Token test", "--labels", "x,y")
    folder = make_image_folder(tmp_path / "t", {"x": 2}, seed=13)
    run_cli(cli, "collect", str(folder), "--labels-from-folders")
    code, out, err = run_cli(cli, "sync")
    assert code == 0, err
    db = b"".join(p.read_bytes() for p in workspace.data_dir.glob("store.db*"))
    assert ls_server.legacy.encode() not in db
    assert ls_server.legacy not in out + err


def test_env_names_follow_the_sdk(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.pat)
    code, out, err = run_cli(cli, "connect", "--create", "Env test", "--labels", "p,q", "--json")
    assert code == 0, err
    assert json.loads(out)["token_kind"] == "pat"
    settings = load_settings(workspace, env={})
    assert settings.labelstudio.url == ls_server.url
    with pytest.raises(LabelStudioError), ls_server.client(token="1" * 40) as c:
        c.project(1)


def _frames(fmt: str, n: int = 3, size: tuple[int, int] = (40, 30)) -> bytes:
    frames = [Image.new("RGB", size, (60 * i, 200 - 50 * i, 90)) for i in range(n)]
    out = io.BytesIO()
    frames[0].save(out, format=fmt, save_all=n > 1, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def bad_image_kinds() -> dict[str, bytes]:
    """The odd files people have, named as they arrive: {file name: bytes}."""
    huge = io.BytesIO()
    Image.new("RGB", (6000, 4000), (30, 120, 60)).save(huge, format="JPEG", quality=80)
    return {
        "page.jpg": b"<!DOCTYPE html><html><head><title>Login</title></head><body>Sign in</body>"
        b"</html>\n",
        "png_named.jpg": image_bytes(1501),
        "animated.gif": _frames("GIF"),
        "animated.webp": _frames("WEBP"),
        "still.webp": _frames("WEBP", n=1),
        "huge.jpg": huge.getvalue(),
        "fine.png": image_bytes(1502),
    }


def test_bad_images_through_sync_end_as_import_folder_treats_them(
    ls_server: LiveServer, store: Store, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = image_server
    kinds = bad_image_kinds()
    # The same bytes through import-folder, into a store of its own: the reference outcome.
    folder = tmp_path / "odd" / "a"
    folder.mkdir(parents=True)
    for name, data in kinds.items():
        (served / f"odd_{name}").write_bytes(data)
        (folder / name).write_bytes(data)
    ref_ws, _ = init_workspace(tmp_path / "reference")
    ref_store = Store.open(load_settings(ref_ws, env={}))
    try:
        imported = import_folder(ref_store, tmp_path / "odd")
        assert imported.version is not None
        with ref_store.read() as session:
            ref_shas = {
                i.image_sha256 for i in version_items(session, imported.version.version.number)
            }
    finally:
        ref_store.close()
    refused = {Path(rel).name: reason for rel, reason in imported.skipped}

    project = ls_server.create_project(["a", "b"])
    names = sorted(kinds)
    with ls_server.client() as c:
        ids = c.import_tasks(
            project,
            [{"data": {"image": f"{base}/odd_{n}"}, "annotations": [choice("a")]} for n in names],
        )
        result = sync_project(store, c, project)
    problems = dict(result.skipped)
    assert result.version is not None
    with store.read() as session:
        synced_shas = {
            i.image_sha256 for i in version_items(session, result.version.version.number)
        }
        tasks = load_tasks(session, project)
    for name, task_id in zip(names, ids, strict=True):
        if name in refused:
            # Refused by both, for the same reason, as a problem of that task alone.
            assert problems.get(task_id) == f"image: {refused[name]}", name
            assert tasks[task_id].image_sha256 is None
        else:
            assert task_id not in problems, (name, problems.get(task_id))
            assert tasks[task_id].image_sha256 in ref_shas, name
    assert synced_shas == ref_shas
    # Whatever the rule for the odd kinds, an HTML page is never an image, and the still WebP,
    # the PNG named .jpg and the large photo are.
    assert "not an image" in refused["page.jpg"]
    assert {"still.webp", "png_named.jpg", "huge.jpg", "fine.png"}.isdisjoint(refused)
    assert result.version.version.item_count == len(kinds) - len(refused)
