"""`a2m compare`, `a2m curve` and the ledger's evaluations on a real workspace.

One small workspace for the module: generated images with hash splits, version 1 and a grown
version 2, real probe runs (random weights, 32 px: seconds each). Every number the comparison
shows is checked against the Predictor and the ledger.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from annotate2model.errors import InputError
from annotate2model.judging.compare import choose_runs, compare
from annotate2model.judging.curve import latest_curve, learning_curve
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store import versions as store_versions
from annotate2model.store.imports import import_folder
from annotate2model.training.context import RunContext
from annotate2model.training.runs.predictor import Predictor
from tests.conftest import image_bytes, run_cli

pytestmark = [pytest.mark.training, pytest.mark.slow, pytest.mark.both_dialects]


@dataclass(frozen=True)
class Workspace2:
    root: Path
    store: Store
    run1: int  # version 1
    run2: int  # version 2
    run3: int  # version 2, another input size

    def cli(self) -> CliRunner:
        return CliRunner(env={"A2M_HOME": str(self.root), "NO_COLOR": "1", "COLUMNS": "120"})


def _write(folder: Path, label: str, seeds: range) -> None:
    (folder / label).mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / label / f"{label}_{seed}.png").write_bytes(
            image_bytes(seed, color="red" if label == "red" else None)
        )


def _train(store: Store, version: int, image_size: int = 32) -> int:
    from annotate2model.training.config import RunConfig
    from annotate2model.training.runs.runner import train

    config = RunConfig(weights="none", image_size=image_size, epochs=3)
    return train(store, config, version).run.id


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace2]:
    from annotate2model.workspace import init_workspace

    base = tmp_path_factory.mktemp("compare")
    workspace, _ = init_workspace(base / "ws")
    store = Store.open(load_settings(workspace, env={}))
    data = base / "data"
    _write(data, "red", range(0, 60))
    _write(data, "other", range(1000, 1060))
    import_folder(store, data)
    _write(data, "red", range(60, 150))
    _write(data, "other", range(1060, 1150))
    import_folder(store, data)
    run1 = _train(store, 1)
    run2 = _train(store, 2)
    run3 = _train(store, 2, image_size=48)
    yield Workspace2(workspace.root, store, run1, run2, run3)
    store.close()


def _items(store: Store, version: int, split: str) -> dict[str, str]:
    with store.read() as session:
        return {
            i.image_sha256: i.label for i in store_versions.version_items(session, version, split)
        }


def _predictor_labels(ws: Workspace2, run: int, shas: list[str]) -> list[str]:
    """What the run's Predictor says about these images, straight from its files."""
    ctx = RunContext.from_store(ws.store)
    predictor = Predictor.load(ctx.run_dir(run), "cpu")
    result = predictor.predict([ctx.blob_path(s) for s in shas])
    assert not result.errors
    return [predictor.labels[int(k)] for k in np.argmax(result.probs, axis=1)]


def test_shared_test_set_is_the_intersection_and_the_numbers_are_the_predictors(
    ws: Workspace2,
) -> None:
    result = compare(ws.store, runs=[ws.run1, ws.run2], shared=True)
    test1, test2 = _items(ws.store, 1, "test"), _items(ws.store, 2, "test")
    assert test1 and len(test2) > len(test1)
    expected = sorted(set(test1) & set(test2))
    assert result.test_set.images == expected
    assert result.test_set.split == "test" and result.test_set.version == 2
    assert result.test_set.labels == [test2[s] for s in expected]
    assert f"({len(expected)} images" in result.test_set.description
    truth = result.test_set.labels
    predicted = {}
    for row, run in zip(result.rows, (ws.run1, ws.run2), strict=True):
        assert row.run == run
        predicted[run] = _predictor_labels(ws, run, expected)
        assert result.predicted[run] == predicted[run]
        hits = [t == p for t, p in zip(truth, predicted[run], strict=True)]
        assert row.accuracy == pytest.approx(sum(hits) / len(hits))
        # Wilson's interval: it holds the accuracy and never shrinks to a point.
        assert row.interval.low <= row.accuracy <= row.interval.high
        assert row.interval.low < row.interval.high
        # The ledger's own prediction rows for these images say the same.
        with ws.store.read() as session:
            stored = {
                p.image_sha256: p.predicted for p in store_runs.read_predictions(session, run)
            }
        assert [stored[s] for s in expected] == predicted[run]
        record = next(r for r in result.rows if r.run == run)
        assert record.counts["train"] == len(_items(ws.store, record.version, "train"))
    (pair,) = result.pairs
    before, after = predicted[ws.run1], predicted[ws.run2]
    fixed = sum(1 for t, a, b in zip(truth, before, after, strict=True) if a != t and b == t)
    broken = sum(1 for t, a, b in zip(truth, before, after, strict=True) if a == t and b != t)
    assert (pair.before, pair.after, pair.fixed, pair.broken) == (ws.run1, ws.run2, fixed, broken)
    assert len(pair.changes) == fixed + broken
    # The test set is small: the table says the intervals are wide.
    assert any("intervals are wide" in w for w in result.warnings)
    # Each judgement is kept, on the same set of images.
    with ws.store.read() as session:
        kept = [
            e
            for run in (ws.run1, ws.run2)
            for e in store_runs.list_evaluations(session, run)
            if e.source == "compare"
        ]
    assert {e.images_hash for e in kept} == {store_runs.images_hash(expected)}
    assert {e.run_id: e.accuracy for e in kept} == {r.run: r.accuracy for r in result.rows}


def test_a_pinned_test_split_judges_images_a_run_never_saw(ws: Workspace2) -> None:
    test2 = _items(ws.store, 2, "test")
    with ws.store.read() as session:
        before = {p.image_sha256 for p in store_runs.read_predictions(session, ws.run1)}
    assert set(test2) - before, "run 1 has not judged version 2's new test images yet"
    result = compare(ws.store, runs=[ws.run1, ws.run2], test_of=2)
    assert result.test_set.images == sorted(test2)
    assert result.test_set.pinned
    expected = _predictor_labels(ws, ws.run1, sorted(test2))
    assert result.predicted[ws.run1] == expected
    # The new predictions are now in the ledger, beside the old ones.
    with ws.store.read() as session:
        after = {p.image_sha256: p.predicted for p in store_runs.read_predictions(session, ws.run1)}
    assert before <= set(after)
    assert [after[s] for s in sorted(test2)] == expected


def test_differences_between_runs_are_said_out_loud(ws: Workspace2) -> None:
    result = compare(ws.store, runs=[ws.run2, ws.run3], record=False)
    assert any("differ in input size" in w and "48" in w for w in result.warnings)
    same = compare(ws.store, runs=[ws.run1, ws.run2], record=False)
    assert not any("differ in" in w for w in same.warnings)


def test_choosing_runs(ws: Workspace2) -> None:
    with ws.store.read() as session:
        everything = store_runs.list_runs(session)
    # By version: the latest succeeded run of each.
    assert [r.id for r in choose_runs(everything, versions=[1, 2])] == [ws.run1, ws.run3]
    assert [r.id for r in choose_runs(everything)] == [ws.run1, ws.run3]
    with pytest.raises(InputError, match="at least two"):
        choose_runs(everything, runs=[ws.run1])
    with pytest.raises(Exception, match="no run 999"):
        choose_runs(everything, runs=[ws.run1, 999])
    with pytest.raises(Exception, match="version 7 has no succeeded run"):
        choose_runs(everything, versions=[1, 7])


def test_cli_compare_table_json_csv(ws: Workspace2) -> None:
    runner = ws.cli()
    code, out, _ = run_cli(runner, "compare", "--runs", f"{ws.run1},{ws.run2}", "--json")
    assert code == 0
    data = json.loads(out)
    assert [r["run"] for r in data["rows"]] == [ws.run1, ws.run2]
    assert data["pairs"][0]["sentence"]
    for path in data["plots"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run_cli(runner, "compare", "--versions", "1,2", "--csv", "--no-plots")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["run"]) for r in rows] == [ws.run1, ws.run3]
    assert float(rows[0]["common_accuracy"]) == pytest.approx(
        next(r["accuracy"] for r in data["rows"] if r["run"] == ws.run1)
    )
    code, out, _ = run_cli(runner, "compare", "--runs", f"{ws.run1},{ws.run2}", "--no-plots")
    assert code == 0
    # Hash splits: every test image of version 2 is unseen by both runs, not only the shared ones.
    n = len(_items(ws.store, 2, "test"))
    assert (
        f"Judged on the images neither run trained on or chose its epoch on ({n} images"
        in " ".join(out.split())
    )
    assert "Training images per class: run" in out and "other " in out and "red " in out
    assert f"run {ws.run2} (v2)" in out or "no evidence of a difference" in out.lower()
    code, _, err = run_cli(runner, "compare", "--runs", "1,2", "--versions", "1,2")
    assert code == 2 and "not both" in err


def test_runs_tells_the_truth_about_test_sets(ws: Workspace2) -> None:
    runner = ws.cli()
    code, out, _ = run_cli(runner, "runs")
    assert code == 0
    assert "judged on different images" in out and "a2m compare" in out
    code, out, _ = run_cli(runner, "evaluate", str(ws.run1), "--version", "2", "--split", "test")
    assert code == 0
    code, out, _ = run_cli(runner, "runs", str(ws.run1), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["run"]["id"] == ws.run1
    sources = {(e["source"], e["version"], e["split"]) for e in shown["evaluations"]}
    assert ("evaluate", 2, "test") in sources
    code, out, _ = run_cli(runner, "runs", str(ws.run1))
    assert code == 0 and "Evaluations" in out and "evaluate" in out


def test_learning_curve_is_kept_and_its_points_are_nested(ws: Workspace2) -> None:
    curve = learning_curve(ws.store, 2, fractions=[0.5, 1.0], repeats=2)
    assert len(curve.points) == 4
    train_n = len(_items(ws.store, 2, "train"))
    full = [p for p in curve.points if p.fraction == 1.0]
    assert all(p.train_images == train_n for p in full)
    half = [p for p in curve.points if p.fraction == 0.5]
    assert all(p.train_images < train_n for p in half)
    assert [s.fraction for s in curve.summary] == [0.5, 1.0]
    assert curve.test_n == len(_items(ws.store, 2, "test"))
    assert curve.verdict
    # An images-per-point figure only where the last gain exceeds the spread of the repeats.
    before, last = curve.summary
    if curve.images_per_point is not None:
        assert last.mean - before.mean > max(before.std, last.std)
        assert f"roughly {curve.images_per_point} more" in curve.verdict
    else:
        assert "more labeled images" not in curve.verdict
    kept = latest_curve(ws.store, 2)
    assert kept is not None and kept.id == curve.id
    assert kept.points == curve.points and kept.verdict == curve.verdict
    # A curve trains no run: the ledger is unchanged.
    with ws.store.read() as session:
        assert max(r.id for r in store_runs.list_runs(session)) == ws.run3
