"""The review tab as a reviewer sees it: Label Studio's own page in headless Chromium, logged in as
a person would, lists the flagged tasks highest score first, shows the six columns a2m sets and
no others, and loads every thumbnail. A screenshot goes to test-artifacts/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from annotate2model.labelstudio.flags import (
    LABEL_FIELD,
    REASON_FIELD,
    RUN_FIELD,
    SUGGESTED_FIELD,
    PushItem,
    push_flags,
    tab_url,
)
from tests.labelstudio.conftest import ADMIN, PASSWORD, LiveServer

pytestmark = [pytest.mark.labelstudio, pytest.mark.browser]

RUN = 7


def _log_in(page: Any, url: str) -> None:
    page.goto(f"{url}/user/login/")
    page.fill("input[name=email]", ADMIN)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_load_state("networkidle")


def test_the_review_tab_in_a_browser(ls_server: LiveServer, browser: Any, artifacts: Path) -> None:
    project = ls_server.local_files_project("review-tab", 6, seed=7100, size=(64, 48))
    with ls_server.client() as c:
        ids = [int(t["id"]) for _total, page in c.task_pages(project) for t in page]
        scores = [0.42, 0.97, 0.63, 0.88]
        items = [
            PushItem(n, task, "label-issue" if n % 2 else "misclassified", score, "b", "a")
            for n, (task, score) in enumerate(zip(ids, scores, strict=False))
        ]
        pushed = push_flags(c, project, RUN, items)
        url = tab_url(c, project, pushed.view_id)
    expected = [task for task, _ in sorted(zip(ids, scores, strict=False), key=lambda p: -p[1])]

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        _log_in(page, ls_server.url)
        page.goto(url)
        page.wait_for_selector("[data-testid=table-row]", timeout=60_000)
        page.wait_for_load_state("networkidle")

        # The columns: the image, the score and a2m's four fields; nothing else of the task.
        headers = {
            text.split("\n")[0].strip()
            for text in page.locator(".lsf-table-head .lsf-th").all_inner_texts()
        }
        headers.discard("")
        assert headers == {
            "image",
            "Prediction score",
            LABEL_FIELD,
            SUGGESTED_FIELD,
            REASON_FIELD,
            RUN_FIELD,
        }, headers

        # The rows: exactly the flagged tasks, highest score first, with their reasons.
        rows = page.locator("[data-testid=table-row]")
        assert rows.count() == len(items)
        labels = rows.locator("input[type=checkbox]").evaluate_all(
            "boxes => boxes.map(b => b.getAttribute('aria-label'))"
        )
        assert [int(re.sub(r"\D", "", label)) for label in labels] == expected
        texts = rows.all_inner_texts()
        shown = [float(re.search(r"\b\d\.\d{3}\b", t).group()) for t in texts]  # type: ignore[union-attr]
        assert shown == sorted(scores, reverse=True)
        assert all(str(RUN) in t and "b" in t for t in texts)

        # Every thumbnail loaded, through Label Studio with the person's session.
        page.wait_for_function(
            "n => [...document.querySelectorAll('[data-testid=table-row] img')]"
            ".filter(i => i.complete && i.naturalWidth > 0).length >= n",
            arg=len(items),
            timeout=30_000,
        )
        widths = page.eval_on_selector_all(
            "[data-testid=table-row] img", "imgs => imgs.map(i => i.naturalWidth)"
        )
        assert len(widths) == len(items) and all(w > 0 for w in widths)
        page.screenshot(path=str(artifacts / "review-tab.png"), full_page=True)
    finally:
        page.close()
    assert (artifacts / "review-tab.png").stat().st_size > 0
