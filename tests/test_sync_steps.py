"""The pure steps of a sync (find changes, resolve labels) on plain records: no server, no store."""

from __future__ import annotations

from annotate2model.labelstudio.config import LabelingConfig
from annotate2model.labelstudio.results import annotation
from annotate2model.labelstudio.sync import TaskImages, find_changes, resolve_labels
from annotate2model.settings import SplitFractions
from annotate2model.store.tasks import TaskRecord

CONFIG = LabelingConfig(image_field="image", from_name="label", to_name="image", labels=("a", "b"))
T0, T1 = "2026-11-20T10:00:00Z", "2026-11-20T11:00:00Z"


def stored(tid: int, updated: str = T0, **kw: object) -> TaskRecord:
    fields: dict[str, object] = {
        "task_id": tid,
        "image_url": f"/data/upload/{tid}.png",
        "image_sha256": f"{tid:064x}",
        "remote_updated_at": updated,
        "label": "a",
        "problem": None,
    }
    fields.update(kw)
    return TaskRecord(**fields)  # type: ignore[arg-type]


def test_find_changes_picks_new_changed_undeleted_and_failed_images_only() -> None:
    remote = {1: T0, 2: T1, 3: T0, 4: T0, 5: T0, 6: T0}
    known = {
        1: stored(1),  # unchanged
        2: stored(2),  # updated since
        3: stored(3, deleted=True),  # came back
        4: stored(4, image_sha256=None, problem="image: HTTP 404 from host"),  # retry
        5: stored(5, image_sha256=None, problem="skipped: every annotation was cancelled"),
        9: stored(9),  # gone: not fetched, reconciled as deleted
    }
    assert find_changes(remote, known, relabel_all=False) == {2, 3, 4, 6}
    assert find_changes(remote, known, relabel_all=True) == set(remote)


def _task(tid: int, *labels: str) -> dict[str, object]:
    return {
        "id": tid,
        "updated_at": T1,
        "annotations": [
            {"id": tid * 10 + i, "updated_at": T1, **annotation(CONFIG, label)}
            for i, label in enumerate(labels)
        ],
    }


def test_resolve_labels_finds_conflicts_keeps_unfetched_rows_and_marks_deletions() -> None:
    same = "f" * 64
    images = TaskImages(
        urls={1: "/x/1", 2: "/x/2", 3: "/x/3"},
        shas={1: same, 2: same, 3: None},
        problems={3: "image: not an image Pillow can read"},
        staged=[],
    )
    known = {7: stored(7, label="b"), 8: stored(8)}
    plan = resolve_labels(
        {1: _task(1, "a"), 2: _task(2, "b"), 3: _task(3, "a")},
        {1: T1, 2: T1, 3: T1, 7: T0},  # task 8 is gone
        known,
        images,
        CONFIG,
        "latest",
        split=SplitFractions(),
    )
    problems = dict(plan.skipped)
    # One image, two tasks, two labels: both left out, each naming the other.
    assert problems[1].startswith("conflict:") and "task 2 says 'b'" in problems[1]
    assert problems[2].startswith("conflict:") and "task 1 says 'a'" in problems[2]
    assert problems[3] == "image: not an image Pillow can read"
    # The unfetched task keeps its stored row and label; the gone one is marked deleted.
    assert [(i.image_sha256, i.label) for i in plan.items] == [(f"{7:064x}", "b")]
    assert [r.task_id for r in plan.deleted] == [8] and plan.deleted[0].deleted
    assert {r.task_id for r in plan.changes} == {1, 2, 3, 8}
    assert sorted(plan.annotations) == [1, 2, 3] and plan.watermark == T1
    assert plan.labeled == 1 and plan.unlabeled == 0
