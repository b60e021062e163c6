"""The page at `/` in headless Chromium against a real `a2m serve`: pick an image, see it and the
top classes as bars with their probabilities; nothing is fetched from anywhere else; a server with
a token asks for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from annotate2model.training import Predictor
from tests.serve.conftest import LABELS, TOKEN, Served, Trained

pytestmark = [pytest.mark.browser, pytest.mark.training, pytest.mark.slow]


def _open(browser: Any, url: str) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    return page, requests, errors


def test_pick_an_image_and_see_bars_and_labels(
    trained: Trained, onnx_server: Served, browser: Any, artifacts: Path
) -> None:
    image = sorted((trained.images / "bees").iterdir())[0]
    expected = Predictor.load(trained.run_dir(1), "cpu").predict([image]).probs[0]
    page, requests, errors = _open(browser, onnx_server.url)
    try:
        page.wait_for_function("document.getElementById('model').textContent.includes('run 1')")
        assert "dataset version 1" in page.text_content("#model")
        page.set_input_files("#file", str(image))
        page.wait_for_selector(".bar-row")
        labels = page.locator(".bar-row .label").all_text_contents()
        shown = page.locator(".bar-row .probability").all_text_contents()
        widths = page.eval_on_selector_all(".bar", "bars => bars.map(b => b.style.width)")
        # Both classes, likeliest first, with the probabilities the Predictor gives.
        order = np.argsort(-expected)
        assert labels == [LABELS[i] for i in order]
        assert shown == [f"{100 * expected[i]:.1f}%" for i in order]
        assert widths == [f"{100 * expected[i]:.1f}%" for i in order]
        assert page.locator("#drop img").count() == 1
        assert page.eval_on_selector("#drop img", "img => img.naturalWidth") > 0
        assert page.text_content("#error") == ""
        page.screenshot(path=str(artifacts / "serve-page.png"), full_page=True)
        # A file that is not an image: the server's reason is shown, no bars.
        page.set_input_files(
            "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"words"}]
        )
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "not an image" in page.text_content("#error")
        assert "415" in page.text_content("#error")
        assert page.locator(".bar-row").count() == 0
    finally:
        page.close()
    assert errors == []
    assert all(url.startswith(onnx_server.url) or url.startswith("blob:") for url in requests)


def test_the_page_asks_for_the_token_of_a_protected_server(
    trained: Trained, torch_server: Served, browser: Any, artifacts: Path
) -> None:
    image = sorted((trained.images / "ants").iterdir())[0]
    page, _, errors = _open(browser, torch_server.url)
    try:
        page.wait_for_selector("#auth", state="visible")
        assert "401" in page.text_content("#model")
        page.fill("#token", TOKEN)
        page.click("#auth button")
        page.wait_for_function("document.getElementById('model').textContent.includes('run 1')")
        assert page.is_hidden("#auth")
        # Two runs served: the page offers both; choosing run 2 predicts with run 2.
        assert page.locator("#run option").all_text_contents() == [
            "run 1 (ants, bees)",
            "run 2 (ants, bees)",
        ]
        page.select_option("#run", "2")
        page.set_input_files("#file", str(image))
        page.wait_for_selector(".bar-row")
        expected = Predictor.load(trained.run_dir(2), "cpu").predict([image]).probs[0]
        top = page.locator(".bar-row .probability").first.text_content()
        assert top == f"{100 * expected.max():.1f}%"
        page.screenshot(path=str(artifacts / "serve-page-token.png"), full_page=True)
    finally:
        page.close()
    assert errors == []
