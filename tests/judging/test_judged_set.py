"""What `a2m compare` judges on by default, and what it says about ensembles, on a real workspace.

Version 1 and a grown version 2 have hash splits; version 3 is version 2 with six of version 1's
training images moved into its test split (as a re-split by folders would). Runs on versions 1
and 3, and an ensemble of the two. The default judged set must leave out every image any compared
run trained on or chose its epoch on, and hold every one none of them did, more than the
intersection of the test splits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.judging.compare import compare
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store import versions as store_versions
from annotate2model.store.imports import import_folder
from annotate2model.store.records import VersionItemRecord
from tests.conftest import image_bytes, run_cli

pytestmark = [pytest.mark.training, pytest.mark.slow, pytest.mark.both_dialects]

MOVED = 6


@dataclass(frozen=True)
class Resplit:
    root: Path
    store: Store
    run1: int  # version 1
    run3: int  # version 3
    ensemble: int  # runs 1 and 3, recorded on version 3
    moved: set[str]  # version 1 training images in version 3's test split

    def cli(self) -> CliRunner:
        return CliRunner(env={"A2M_HOME": str(self.root), "NO_COLOR": "1", "COLUMNS": "120"})

    def split(self, version: int, *splits: str) -> set[str]:
        with self.store.read() as session:
            items = store_versions.version_items(session, version)
        return {i.image_sha256 for i in items if i.split in splits}


def _write(folder: Path, label: str, seeds: range) -> None:
    (folder / label).mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / label / f"{label}_{seed}.png").write_bytes(
            image_bytes(seed, color="red" if label == "red" else None)
        )


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resplit]:
    from annotate2model.training.config import RunConfig
    from annotate2model.training.runs.runner import ensemble, train
    from annotate2model.workspace import init_workspace

    base = tmp_path_factory.mktemp("judged")
    workspace, _ = init_workspace(base / "ws")
    store = Store.open(load_settings(workspace, env={}))
    data = base / "data"
    _write(data, "red", range(0, 40))
    _write(data, "other", range(1000, 1040))
    import_folder(store, data)
    _write(data, "red", range(40, 100))
    _write(data, "other", range(1040, 1100))
    import_folder(store, data)
    with store.read() as session:
        train1 = sorted(i.image_sha256 for i in store_versions.version_items(session, 1, "train"))
        grown = store_versions.version_items(session, 2)
    moved = set(train1[:MOVED])
    resplit = [
        VersionItemRecord(i.image_sha256, i.label, "test" if i.image_sha256 in moved else i.split)
        for i in grown
    ]
    with store.write() as session:
        made = store_versions.create_version(
            session, resplit, source="test", note="re-split", fractions=store.settings.split
        )
    assert made.created and made.version.number == 3
    config = RunConfig(weights="none", image_size=32, epochs=3)
    run1 = train(store, config, 1).run.id
    run3 = train(store, config, 3).run.id
    both = ensemble(store, [run1, run3], 3).id
    yield Resplit(workspace.root, store, run1, run3, both, moved)
    store.close()


def test_default_judges_every_image_no_run_learned_from(ws: Resplit) -> None:
    test3 = ws.split(3, "test")
    learned = ws.split(1, "train", "val") | ws.split(3, "train", "val")
    expected = sorted(test3 - learned)
    result = compare(ws.store, runs=[ws.run1, ws.run3], record=False)
    assert result.test_set.images == expected
    assert result.test_set.kind == "unseen" and result.test_set.version == 3
    # Run 1 trained on the moved images: they are not judged, though version 3 calls them test.
    assert ws.moved <= test3 and not ws.moved & set(result.test_set.images)
    # Version 3's new test images (unseen by run 1 too) are judged: more than the intersection.
    shared = ws.split(1, "test") & test3
    new = test3 - ws.split(1, "train", "val", "test")
    assert new and new <= set(expected) and len(expected) > len(shared)
    assert result.test_set.description.startswith(
        f"the images neither run trained on or chose its epoch on ({len(expected)} images"
    )
    assert not any(" saw " in w for w in result.warnings)
    assert "images none of the runs trained on" in result.pairs[0].sentence
    # The old set is still there on request, and so is one version's test split, with the leak.
    old = compare(ws.store, runs=[ws.run1, ws.run3], shared=True, record=False)
    assert old.test_set.images == sorted(shared) and old.test_set.kind == "shared"
    pinned = compare(ws.store, runs=[ws.run1, ws.run3], test_of=3, record=False)
    assert pinned.test_set.images == sorted(test3)
    assert any(
        f"run {ws.run1} (v1) saw {MOVED} of the judged images" in w and f"({MOVED} in its" in w
        for w in pinned.warnings
    )


def test_an_ensemble_learned_what_its_members_learned(ws: Resplit) -> None:
    """Compared with its member, an ensemble on version 3 is judged without the images its other
    member (version 1) trained on, and draws no warning about settings it does not have."""
    result = compare(ws.store, runs=[ws.run3, ws.ensemble], record=False)
    learned = ws.split(1, "train", "val") | ws.split(3, "train", "val")
    assert result.test_set.images == sorted(ws.split(3, "test") - learned)
    assert not any("runs differ" in w for w in result.warnings), result.warnings
    assert [r.kind for r in result.rows] == ["train", "ensemble"]


def test_cli_says_what_it_judged_on(ws: Resplit) -> None:
    runner = ws.cli()
    n = len(ws.split(3, "test") - ws.split(1, "train", "val") - ws.split(3, "train", "val"))
    runs = f"{ws.run1},{ws.run3}"
    code, out, err = run_cli(runner, "compare", "--runs", runs, "--no-plots")
    assert code == 0, err
    assert (
        f"Judged on the images neither run trained on or chose its epoch on ({n} images, "
        "labels of version 3)." in " ".join(out.split())
    )
    # Wilson's interval: even a perfect score keeps a lower end below 1.
    assert "(1.00-1.00)" not in out
    code, out, err = run_cli(runner, "compare", "--runs", runs, "--shared", "--no-plots")
    assert code == 0, err
    assert "Judged on the test images both versions share" in out
    code, _, err = run_cli(runner, "compare", "--runs", runs, "--shared", "--test-of", "3")
    assert code == 2 and "not both" in err
    code, _, err = run_cli(runner, "compare", "--runs", f"{ws.run3},{ws.ensemble}", "--no-plots")
    assert code == 0 and "runs differ" not in err, err
