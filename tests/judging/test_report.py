"""`a2m report`: the HTML page of a real run (and of a comparison), opened in headless Chromium.

One small real workspace for the module: generated images in train/val/test folders, two classes
(one named with markup, as a user could), a real probe run with random weights on 32 px inputs
(seconds), then a grown second version and its run for the comparison.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from annotate2model.judging.report import compare_report, run_report
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.imports import import_folder
from annotate2model.training.context import RunContext
from tests.conftest import make_image_folder, run_cli
from tests.judging.test_plots import (
    SIZE,
    assert_png,
    sample_comparison,
    sample_curve,
    three_runs,
)
from tests.training.conftest import make_split_folder

# A label that is markup, shown as typed, never run (labels and file names are user input).
MARKUP = "<img src=x onerror=alert(1)>"
LABELS = ["ants", MARKUP]


@dataclass(frozen=True)
class Trained:
    root: Path
    store: Store
    run: int
    run2: int

    def cli(self) -> CliRunner:
        return CliRunner(env={"A2M_HOME": str(self.root)})

    def record(self, run: int) -> store_runs.RunRecord:
        with self.store.read() as session:
            return store_runs.get_run(session, run)


def _train(store: Store, version: int) -> int:
    from annotate2model.training.config import RunConfig
    from annotate2model.training.runs.runner import train

    config = RunConfig(weights="none", image_size=32, epochs=3)
    return train(store, config, version).run.id


def two_version_folders(base: Path, labels: list[str]) -> tuple[Path, Path]:
    """Folders of two versions: 10 training, 5 val and 8 test images per label, then the same
    images and 10 more training images per label."""
    counts = {label: 10 for label in labels}
    first = make_split_folder(base / "v1", counts, {label: 5 for label in labels})
    make_image_folder(first / "test", {label: 8 for label in labels}, seed=90)
    grown = make_split_folder(base / "v2", counts, {label: 5 for label in labels})
    make_image_folder(grown / "test", {label: 8 for label in labels}, seed=90)
    make_image_folder(base / "extra", {label: 10 for label in labels}, seed=7)
    for label in labels:
        for i, image in enumerate(sorted((base / "extra" / label).iterdir())):
            image.rename(grown / "train" / label / f"more_{i}.png")
    return first, grown


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    from annotate2model.workspace import init_workspace

    base = tmp_path_factory.mktemp("report")
    ws, _ = init_workspace(base / "ws")
    store = Store.open(load_settings(ws, env={}))
    first, grown = two_version_folders(base, LABELS)
    import_folder(store, first)
    run = _train(store, 1)
    import_folder(store, grown)
    run2 = _train(store, 2)
    yield Trained(root=ws.root, store=store, run=run, run2=run2)
    store.close()


def _html_checks(html: Path) -> str:
    text = html.read_text(encoding="utf-8")
    # Opens offline: nothing is fetched from anywhere.
    assert not re.search(r"https?://", text), "the page refers to the network"
    assert "<script" not in text.replace("&lt;script", "")
    return text


def _open(browser: Any, html: Path) -> tuple[Any, list[str], list[str]]:
    """A page showing `html`, the URLs it requested and the dialogs anything tried to open."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(html.as_uri())
    page.wait_for_load_state("load")
    return page, requests, dialogs


def _loaded(page: Any, selector: str) -> list[int]:
    """naturalWidth of every image matching `selector` (0: it did not load)."""
    widths: list[int] = page.eval_on_selector_all(
        selector, "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
    )
    return widths


def _cells(page: Any, selector: str) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        f"{selector} tbody tr",
        "rows => rows.map(r => Array.from(r.children).map(c => c.innerText.trim()))",
    )
    return rows


@pytest.mark.training
@pytest.mark.browser
def test_run_report_in_chromium(trained: Trained, browser: Any, artifacts: Path) -> None:
    code, out, err = run_cli(trained.cli(), "report", str(trained.run), "--json")
    assert code == 0, err
    import json

    written = json.loads(out)
    html = Path(written["html"])
    assert html == trained.root / ".a2m" / "runs" / str(trained.run) / "report.html"
    # Two classes: the confusion matrix is a table, shown once, no plot of it.
    assert set(written["plots"]) == {"history"}
    for name, path in written["plots"].items():
        assert Path(path) == html.with_name(f"{name}.png")
        assert_png(Path(path))
    text = _html_checks(html)
    assert "&lt;img src=x onerror=alert(1)&gt;" in text

    run = trained.record(trained.run)
    test = run.metrics["splits"]["test"]
    page, requests, dialogs = _open(browser, html)
    try:
        # The configuration, visible, as the ledger holds it.
        assert page.locator("#config").is_visible()
        config = dict(row[:2] for row in _cells(page, "#config"))
        assert config["backbone"] == "resnet18"
        assert config["mode"] == "probe"
        # "none" explained; a probe's page lists no fine-tuning-only setting, and says which of
        # them were given a value it ignores.
        assert config["weights"].startswith("none: random initial weights (seed 0)")
        assert "from random weights" in page.locator(".lead").first.inner_text()
        for unused in ("epochs", "lr", "optimizer", "unfreeze", "head_init", "momentum"):
            assert unused not in config
        assert page.locator("#ignored-settings").inner_text() == (
            "Set, but a probe does not use them: epochs=3."
        )
        assert config["dataset version"] == "1"
        assert config["test accuracy"] == f"{test['accuracy']:.3f}"

        # Per class on the test split: the labels as typed, the ledger's figures.
        assert page.locator("#per-class-test").is_visible()
        per_class = _cells(page, "#per-class-test")
        assert [row[0] for row in per_class] == list(test["per_class"])
        assert MARKUP in [row[0] for row in per_class]
        for row in per_class:
            figures = test["per_class"][row[0]]
            assert row[2] == f"{figures['recall']:.3f}"
            assert int(row[4]) == figures["support"] == 8

        # The confusion matrix as a table (equal to the ledger's), once per split: no plot too.
        assert page.locator("#confusion-test").is_visible()
        confusion = _cells(page, "#confusion-test")
        assert [row[0] for row in confusion] == list(test["per_class"])
        assert [[int(v) for v in row[1:]] for row in confusion] == test["confusion"]
        assert page.locator("#confusion-plot").count() == 0
        sections = page.locator("section[id^=split-]").count()
        assert sections >= 2 and page.locator("table.confusion").count() == sections
        assert _loaded(page, "#history-plot") == [SIZE[0]]
        # A probe's history: a row per C its head was fitted with, the one it kept marked.
        history = _cells(page, "#history-table")
        assert len(history) == len(run.history)
        assert [row[0].endswith("(kept)") for row in history].count(True) == 1

        # The gallery: every misclassified val/test image, worst first, thumbnails loaded.
        with trained.store.read() as session:
            predictions = store_runs.read_predictions(session, trained.run, 1)
        wrong = [p for p in predictions if p.split in ("val", "test") and p.predicted != p.label]
        assert wrong, "the run made no mistake: the gallery test needs one"
        figures = page.locator("#gallery figure")
        assert figures.count() == len(wrong)
        widths = _loaded(page, "#gallery figure img")
        assert len(widths) == len(wrong) and all(0 < w <= 128 for w in widths)
        captions = page.eval_on_selector_all(
            "#gallery figcaption", "cs => cs.map(c => c.innerText)"
        )
        shown = [float(m) for c in captions for m in re.findall(r"predicted: .*\((\d\.\d+)\)", c)]
        assert len(shown) == len(wrong)
        assert shown == sorted(shown, reverse=True)
        # File names a person recognises (the imported paths), labels shown as typed.
        assert all(re.search(r"(ants|more)?_?\d+\.png", c) for c in captions)
        assert any(f"true: {MARKUP}" in c or f"predicted: {MARKUP}" in c for c in captions)

        # Nothing ran, nothing was fetched.
        assert dialogs == []
        assert page.locator('img[src="x"]').count() == 0
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
        page.screenshot(path=str(artifacts / "report-run.png"), full_page=True)
    finally:
        page.close()
    assert (artifacts / "report-run.png").stat().st_size > 0


@pytest.mark.training
def test_gallery_is_capped_and_plots_follow_the_page_name(trained: Trained, tmp_path: Path) -> None:
    with trained.store.read() as session:
        predictions = store_runs.read_predictions(session, trained.run, 1)
    wrong = sum(p.split in ("val", "test") and p.predicted != p.label for p in predictions)
    assert wrong >= 2
    out = tmp_path / "mine.html"
    files = run_report(trained.store, trained.run, out=out, gallery_limit=1)
    assert files.html == out
    assert files.plots == {"history": tmp_path / "mine-history.png"}
    text = _html_checks(out)
    assert text.count("<figure>") == 1
    assert f"{wrong - 1} more misclassified images not shown." in text


@pytest.mark.training
def test_ensemble_report(trained: Trained, tmp_path: Path) -> None:
    """An ensemble has no epochs: no history plot or table (and none left from before), the rest
    as for any run."""
    from annotate2model.training.runs.runner import ensemble

    run = ensemble(trained.store, [str(trained.run), str(trained.run2)], "1")
    out = tmp_path / "report.html"
    (tmp_path / "history.png").write_bytes(b"an earlier page's plot")
    (tmp_path / "confusion.png").write_bytes(b"an earlier page's plot")
    files = run_report(trained.store, run.id, out=out)
    assert files.plots == {}
    assert not (tmp_path / "history.png").exists()
    assert not (tmp_path / "confusion.png").exists()
    text = _html_checks(out)
    assert f"An ensemble of runs {trained.run}, {trained.run2}" in text
    assert 'id="history"' not in text
    assert 'id="confusion-test"' in text


def test_report_errors(cli: CliRunner, store: Store, tmp_path: Path) -> None:
    import_folder(store, make_image_folder(tmp_path / "data", {"ants": 3, "bees": 3}))
    with store.write() as session:
        failed = store_runs.create_run(session, 1, "train", {"backbone": "resnet18"}, "cpu")
        store_runs.finish_run(session, failed.id, "failed", error="the disk filled up")
        bare = store_runs.create_run(session, 1, "train", {"backbone": "resnet18"}, "cpu")
        store_runs.finish_run(session, bare.id, "succeeded", artifact_dir="runs/2")

    code, _, err = run_cli(cli, "report", "41")
    assert code == 1 and "there is no run 41" in err
    code, _, err = run_cli(cli, "report", str(failed.id))
    assert code == 1
    assert f"run {failed.id} is failed: the disk filled up" in err
    code, _, err = run_cli(cli, "report", str(bare.id))
    assert code == 1
    assert f"run {bare.id} has no predictions" in err
    assert f"a2m evaluate {bare.id}" in err
    code, _, err = run_cli(cli, "report")
    assert code == 2
    code, _, err = run_cli(cli, "report", "3", "--compare")
    assert code == 2
    code, _, err = run_cli(cli, "report", "3", "--versions", "1,2")
    assert code == 2


@pytest.mark.training
@pytest.mark.browser
def test_compare_report_escapes_and_shows_everything(
    trained: Trained, browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    """A comparison whose labels, names and warnings are markup, on real images (thumbnails)."""
    with trained.store.read() as session:
        shas = [
            p.image_sha256 for p in store_runs.read_predictions(session, trained.run, 1, "test")
        ]
    comparison = sample_comparison(shas)
    context = RunContext.from_store(trained.store)
    files = compare_report(comparison, sample_curve(), tmp_path / "compare.html", context)
    # Two runs are two points: the table says it, no accuracy plot. The curve has three.
    assert set(files.plots) == {"learning_curve"}
    for path in files.plots.values():
        assert path.parent == tmp_path
        assert_png(path)
    text = _html_checks(files.html)
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "photos/&lt;i&gt;0&lt;/i&gt;.jpg" in text

    page, requests, dialogs = _open(browser, files.html)
    try:
        warnings = page.locator("#warnings")
        assert warnings.is_visible()
        assert "<script>alert('warned')</script> the runs use different weights" in (
            warnings.inner_text()
        )
        rows = _cells(page, "#comparison")
        assert [(r[0], r[1], r[2]) for r in rows] == [
            ("3", "1", "87/21/40"),
            ("4", "2", "197/49/40"),
        ]
        # What both runs share is said once, in the caption, not in a column of its own.
        headers = page.eval_on_selector_all(
            "#comparison thead th", "ths => ths.map(t => t.innerText.replace(/\\s+/g, ' '))"
        )
        assert "model" not in headers and "weights" not in headers and "device" not in headers
        caption = page.locator("#comparison caption").inner_text()
        assert "Both runs: model resnet18 probe; weights scenes.pth; device cpu." in caption
        assert rows[1][headers.index("test accuracy")] == "0.815 [0.715, 0.895]"
        assert "<b>x</b>: 98" in rows[1][3]
        assert _cells(page, "#per-class") == [
            ["<b>x</b>", "8", "0.775", "0.815"],
            ["$5 bill", "8", "0.775", "0.815"],
        ]
        assert page.locator("#pairs .sentence").inner_text().startswith("no evidence")
        assert _cells(page, "#per-class-delta-0") == [["<b>x</b>", "+0.050"], ["$5 bill", "-0.050"]]
        assert _loaded(page, "#fixed-0 img") != [] and all(_loaded(page, "#fixed-0 img"))
        assert all(_loaded(page, "#broken-0 img"))
        assert page.locator("#acc-images, #acc-time").count() == 0
        assert _loaded(page, "#learning-curve-plot") == [SIZE[0]]
        assert "flattening" in page.locator("#curve-verdict").inner_text()
        assert dialogs == []
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
        page.screenshot(path=str(artifacts / "report-compare-escaping.png"), full_page=True)
    finally:
        page.close()


def test_compare_report_without_curve_or_images(tmp_path: Path) -> None:
    """No learning curve, no image folder (names only), no warnings: those sections are left out."""
    comparison = three_runs(replace(sample_comparison(), warnings=[]))
    files = compare_report(comparison, None, tmp_path / "report.html")
    assert set(files.plots) == {"accuracy_vs_images", "accuracy_vs_time"}
    assert files.plots["accuracy_vs_images"] == tmp_path / "accuracy_vs_images.png"
    text = _html_checks(files.html)
    assert 'id="warnings"' not in text and 'id="learning-curve"' not in text
    assert text.count("image unavailable") == 2
    with Image.open(files.plots["accuracy_vs_time"]) as img:
        assert img.size == SIZE


@pytest.mark.training
@pytest.mark.browser
def test_compare_report_of_two_versions(
    trained: Trained, browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    """`a2m report --compare`: both versions' runs judged on the test images they share, and the
    learning curve of the newer version (a real `a2m curve`)."""
    code, _, err = run_cli(
        trained.cli(), "curve", "2", "--fractions", "0.5,1.0", "--repeats", "1", "--no-plots"
    )
    assert code == 0, err
    runs = f"{trained.run},{trained.run2}"
    code, out, err = run_cli(trained.cli(), "report", "--compare", "--runs", runs, "--json")
    assert code == 0, err
    import json

    written = json.loads(out)
    html = Path(written["html"])
    assert html.parent.parent == trained.root / ".a2m" / "reports"
    # Two runs, a curve of two sizes: every figure is in a table, no plot of two points.
    assert written["plots"] == {}
    _html_checks(html)
    page, requests, dialogs = _open(browser, html)
    try:
        rows = _cells(page, "#comparison")
        assert [(r[0], r[1]) for r in rows] == [(str(trained.run), "1"), (str(trained.run2), "2")]
        # Both judged on the 16 test images the versions share (v1's test split is in v2's).
        assert "16" in page.locator("#test-set").inner_text()
        assert "neither run" in page.locator("#test-set").inner_text()
        assert [r[2] for r in rows] == ["20/10/16", "40/10/16"]
        # The figures are compare()'s (recorded judgements reused, nothing recomputed here).
        from annotate2model.judging.compare import compare

        expected = compare(trained.store, runs=[trained.run, trained.run2], record=False)
        assert [r[5] for r in rows] == [
            f"{r.accuracy:.3f} [{r.interval.low:.3f}, {r.interval.high:.3f}]" for r in expected.rows
        ]
        per_class = _cells(page, "#per-class")
        assert [row[0] for row in per_class] == list(expected.rows[0].per_class)
        assert [row[2:] for row in per_class] == [
            [f"{r.per_class[label]:.3f}" for r in expected.rows]
            for label in expected.rows[0].per_class
        ]
        assert page.locator("#pairs .sentence").all_inner_texts() == [
            p.sentence for p in expected.pairs
        ]
        assert page.locator("img.plot").count() == 0
        from annotate2model.judging.curve import latest_curve

        curve = latest_curve(trained.store, 2)
        assert curve is not None
        assert page.locator("#curve-verdict").inner_text() == curve.verdict
        assert [r[1] for r in _cells(page, "#curve-table")] == [
            str(s.train_images) for s in sorted(curve.summary, key=lambda s: s.fraction)
        ]
        assert dialogs == []
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
        page.screenshot(path=str(artifacts / "report-compare.png"), full_page=True)
    finally:
        page.close()

    # The comparison's judgement is kept in the ledger, and the run's own page shows it.
    files = run_report(trained.store, trained.run, out=tmp_path / "run.html")
    page, _, _ = _open(browser, files.html)
    try:
        judged = [r for r in _cells(page, "#evaluations-table") if r[6] == "compare"]
        assert judged and judged[-1][3] == "16"
        assert judged[-1][4] == f"{expected.rows[0].accuracy:.3f}"
    finally:
        page.close()
