"""The report pages as a person reads them: headless Chromium at 1280 px, real runs on the shared
scene weights. No text runs out of its box, every column header fits in two lines, and every plot
holds at least plots.MIN_POINTS points (fewer are left to the tables). Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from annotate2model.judging import plots
from annotate2model.judging.report import compare_report, run_report
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from tests.conftest import run_cli
from tests.judging.test_plots import _row, sample_comparison, sample_curve
from tests.judging.test_report import two_version_folders

VIEWPORT = {"width": 1280, "height": 900}
LABELS = ["ants", "a label long enough to need wrapping in a narrow table column"]


@dataclass(frozen=True)
class Pages:
    root: Path
    store: Store
    runs: list[int]


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    """Two versions (the second grown), a probe on each and a second one on the second (other
    seed, augmented views), all from the shared scene weights on 32 px inputs (seconds)."""
    from annotate2model.training.config import RunConfig
    from annotate2model.training.runs.runner import train
    from annotate2model.workspace import init_workspace
    from bench._shared import SCENES_WEIGHTS
    from tests.conftest import require_shared

    weights = require_shared(SCENES_WEIGHTS, "the ResNet-18 scenes weights")
    base = tmp_path_factory.mktemp("layout")
    ws, _ = init_workspace(base / "ws")
    store = Store.open(load_settings(ws, env={}))
    first, grown = two_version_folders(base, LABELS)
    import_folder(store, first)
    config = RunConfig(weights=str(weights), image_size=32)
    runs = [train(store, config, 1).run.id]
    import_folder(store, grown)
    runs.append(train(store, config, 2).run.id)
    runs.append(train(store, dataclasses.replace(config, seed=1, views=2), 2).run.id)
    yield Pages(root=ws.root, store=store, runs=runs)
    store.close()


# Every element whose content is wider than its box (scrollWidth past clientWidth): text cut off
# or spilling over its neighbours, or a table wider than the page that scrolls sideways.
_OVERFLOWING = """
() => Array.from(document.body.querySelectorAll('*'))
  .filter(el => el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)
  .map(el => `${el.tagName.toLowerCase()}#${el.id}.${el.className}: `
             + `${el.scrollWidth} > ${el.clientWidth}: ${el.innerText.slice(0, 60)}`)
"""

# Lines of text in each column header: the distinct tops of its text's line boxes.
_HEADER_LINES = """
() => Array.from(document.querySelectorAll('thead th')).map(th => {
  const range = document.createRange();
  range.selectNodeContents(th);
  const tops = new Set(Array.from(range.getClientRects())
    .filter(r => r.width > 0).map(r => Math.round(r.top)));
  return [th.closest('table').id, th.innerText.replace(/\\s+/g, ' '), tops.size];
})
"""

_PLOTS = """
() => Array.from(document.querySelectorAll('img.plot')).map(img => ({
  id: img.id, points: Number(img.dataset.points), natural: img.naturalWidth,
  shown: img.getBoundingClientRect().width, room: img.parentElement.clientWidth}))
"""


def _check_page(browser: Any, html: Path, screenshot: Path) -> list[dict[str, Any]]:
    """Open `html` at 1280 px, take its screenshot, assert the layout; returns its plots."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(screenshot), full_page=True)
        assert page.evaluate(_OVERFLOWING) == [], html
        headers = page.evaluate(_HEADER_LINES)
        assert headers, "no table header on the page"
        assert [h for h in headers if h[2] > 2] == [], "headers on more than two lines"
        assert all(h[2] >= 1 for h in headers)
        shown: list[dict[str, Any]] = page.evaluate(_PLOTS)
    finally:
        page.close()
    for plot in shown:
        # Loaded whole, within its column, and holding enough points to say more than a table.
        assert plot["natural"] == plots.WIDTH, plot
        assert 0 < plot["shown"] <= plot["room"], plot
        assert plot["points"] >= plots.MIN_POINTS, plot
    assert screenshot.stat().st_size > 0
    return shown


@pytest.mark.training
@pytest.mark.browser
def test_run_report_fits_at_1280(pages: Pages, browser: Any, artifacts: Path) -> None:
    files = run_report(pages.store, pages.runs[0])
    shown = _check_page(browser, files.html, artifacts / "layout-run.png")
    # A probe fitted its head for several C: that history is plotted; two classes' confusion
    # matrix is a table only.
    assert [p["id"] for p in shown] == ["history-plot"]


@pytest.mark.training
@pytest.mark.browser
def test_comparison_reports_fit_at_1280(
    pages: Pages, browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    first, second, third = pages.runs
    from typer.testing import CliRunner

    runner = CliRunner(env={"A2M_HOME": str(pages.root)})
    # Two runs, one per version: no plot (two points), the wording of two versions.
    code, out, err = run_cli(runner, "report", "--compare", "--versions", "1,2", "--json")
    assert code == 0, err
    two = json.loads(out)
    assert two["plots"] == {}
    assert _check_page(browser, Path(two["html"]), artifacts / "layout-compare-two.png") == []
    text = Path(two["html"]).read_text(encoding="utf-8")
    assert "2 versions" not in text and "2 runs" not in text

    # Three runs: three wall times make a plot; two sizes of training split do not.
    code, out, err = run_cli(
        runner, "report", "--compare", "--runs", f"{first},{second},{third}", "--json"
    )
    assert code == 0, err
    three = json.loads(out)
    shown = _check_page(browser, Path(three["html"]), artifacts / "layout-compare-three.png")
    assert {p["id"] for p in shown} == {"acc-time"}
    assert set(three["plots"]) == {"accuracy_vs_time"}


@pytest.mark.browser
def test_a_comparison_of_unlike_runs_fits_at_1280(
    browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    """The widest table: three runs with nothing in common (every column stays), markup labels,
    long weights paths and device names; a learning curve of three sizes."""
    comparison = sample_comparison()
    unlike = [
        replace(
            row,
            run=row.run + k,
            backbone=("resnet18", "efficientnet_b0", "mobilenet_v3")[k],
            mode=("probe", "finetune", "probe")[k],
            weights=("none", "imagenet", "/data/models/a-long-folder/scenes-weights-v2.pth")[k],
            device=("cpu: 2 cores, 2 threads", "cuda: NVIDIA H100 80GB HBM3", "mps")[k],
        )
        for k, row in enumerate([*comparison.rows, _row(6, 3, 320, 0.84, 33.0)])
    ]
    comparison = replace(comparison, rows=unlike)
    files = compare_report(comparison, sample_curve(), tmp_path / "report.html")
    shown = _check_page(browser, files.html, artifacts / "layout-compare-unlike.png")
    assert {p["id"] for p in shown} == {"acc-images", "acc-time", "learning-curve-plot"}
    headers = files.html.read_text(encoding="utf-8")
    assert "<th>model</th>" in headers and "<th>device</th>" in headers
