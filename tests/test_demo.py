"""`a2m demo`: the whole loop from an empty folder, as a newcomer runs it.

The end-to-end test runs the real command in a child process: it starts its own Label Studio, trains
on the CPU, and flags into that Label Studio, which the test then reads through its API.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from annotate2model.demo.signs import SIGN_CLASSES
from annotate2model.demo.tour import SMALL, DemoState, write_batch
from annotate2model.labelstudio.flags import REVIEW_TAB
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.versions import list_versions
from annotate2model.workspace import Workspace


def _a2m(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "annotate2model", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("A2M_", "LABEL_STUDIO_")) and k != "COLUMNS"
    }
    # A torch hub cache without the ImageNet weights: the offline path every CI machine takes.
    env["TORCH_HOME"] = str(tmp_path / "torch")
    env["COLUMNS"] = "80"
    return env


def test_a_batch_puts_a_known_handful_in_the_other_class_folder(tmp_path: Path) -> None:
    signs = write_batch(tmp_path, start=5, per_class=10, wrong=2)
    assert len(signs) == 20 and len({s.sha256 for s in signs}) == 20
    wrong = [s for s in signs if s.wrong]
    assert sorted(s.truth for s in wrong) == sorted([*SIGN_CLASSES, *SIGN_CLASSES])
    for s in signs:
        # The folder gives the label; the file name still says what the image shows.
        assert s.path.parent.name == s.label and s.path.name.startswith(s.truth)
    again = write_batch(tmp_path / "again", start=5, per_class=10, wrong=2)
    assert [(s.sha256, s.label) for s in again] == [(s.sha256, s.label) for s in signs]


def test_a_folder_that_is_not_a_demo_or_a_demo_cut_short_is_refused_with_what_to_do(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    done = _a2m("demo", str(busy), env=env, timeout=120)
    assert done.returncode == 1
    assert "not empty and holds no demo" in done.stderr and "another folder" in done.stderr
    assert list(busy.iterdir()) == [busy / "notes.txt"]  # nothing written

    cut = tmp_path / "cut"
    (cut / ".a2m").mkdir(parents=True)
    DemoState(step="train 1").save(cut / ".a2m" / "demo.json")
    done = _a2m("demo", str(cut), env=env, timeout=120)
    assert done.returncode == 1
    assert "stopped before the end (at: train 1)" in done.stderr and "rm -rf" in done.stderr


def _task_path(task: dict[str, Any]) -> str:
    """The image's path under the demo folder, from the task's Local Files URL."""
    return str(parse_qs(urlsplit(task["data"]["image"]).query)["d"][0])


@pytest.mark.slow
@pytest.mark.labelstudio
@pytest.mark.training
# Label Studio's first start (its database migrations) and two trainings: minutes on a busy machine.
@pytest.mark.timeout(1800)
def test_demo_small_runs_the_whole_loop_and_flags_the_wrong_labels(tmp_path: Path) -> None:
    env = _env(tmp_path)
    root = tmp_path / "demo"
    try:
        done = _a2m("demo", str(root), "--small", "--json", env=env, timeout=1500)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout)
        _check_demo(root, out, env)
        # A second run in the same folder says what is there, and runs nothing again.
        again = _a2m("demo", str(root), env=env, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "already ran" in again.stdout and "another folder" in again.stdout
        assert out["url"] in again.stdout
        _check_next_lines(root, again.stdout, env)
        store = Store.open(load_settings(Workspace(root), {}))
        with store.read() as session:
            assert len(list_versions(session)) == 2
        store.close()
    finally:
        # The demo leaves its Label Studio running for the user; the test stops it.
        _a2m("-w", str(root), "studio", "down", env=env, timeout=120)


def _check_next_lines(root: Path, text: str, env: dict[str, str]) -> None:
    """The demo's text fits 80 columns, but for a line that is one word (a path, a URL); the
    commands it prints next run as printed, from the folder it says to `cd` into."""
    lines = text.splitlines()
    assert [line for line in lines if len(line) > 80 and len(line.split()) > 1] == []
    commands = lines[lines.index(next(line for line in lines if line.startswith("Next"))) + 1 :]
    assert commands[0].strip() == f"cd {root}"
    runs = next(line for line in commands if " runs" in line).split("#")[0].strip()
    assert runs.endswith(" runs") or runs == "a2m runs"
    done = subprocess.run(
        ["bash", "-c", f"{commands[0].strip()} && {runs} --json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["id"] for r in json.loads(done.stdout)] == [1, 2]


def _check_demo(root: Path, out: dict[str, Any], env: dict[str, str]) -> None:
    assert out["finished"] and out["offline"] and out["weights"] == "none"
    assert out["versions"] == [1, 2] and out["runs"] == [1, 2]
    per_batch = SMALL.first * len(SIGN_CLASSES)
    store = Store.open(load_settings(Workspace(root), {}))
    with store.read() as session:
        assert [v.item_count for v in list_versions(session)] == [per_batch, 2 * per_batch]
    store.close()

    # The comparison: both runs judged on the same common test images.
    rows = out["comparison"]["rows"]
    assert [(r["run"], r["version"]) for r in rows] == [(1, 1), (2, 2)]
    assert len({r["common_images"] for r in rows}) == 1 and rows[0]["common_images"] > 0
    assert all(0.5 < r["accuracy"] <= 1.0 for r in rows)  # both learned the task
    assert Path(out["report"]).is_file()

    # Label Studio, read through its API: the tab lists exactly the flagged tasks.
    ws = Workspace(root)
    token = ws.read_secrets()["labelstudio_token"]
    headers = {"Authorization": f"Token {token}"}
    with httpx.Client(base_url=out["url"], headers=headers, timeout=30) as http:

        def api(path: str, **params: Any) -> Any:
            response = http.get(path, params=params)
            response.raise_for_status()
            return response.json()

        views = api("/api/dm/views", project=out["project"])
        (view,) = [v for v in views if v["data"]["title"] == REVIEW_TAB]
        assert view["data"]["title"] == out["tab"]
        listed = api("/api/tasks", project=out["project"], view=view["id"], page_size=1000)
        flagged = {_task_path(t) for t in listed["tasks"]}
        every = api("/api/tasks", project=out["project"], page_size=1000)["tasks"]
    assert len(every) == 2 * per_batch and len(flagged) == out["flagged"] > 0

    # The wrong labels as Label Studio holds them: an image in the other class's folder.
    def wrong(path: str) -> bool:
        folder, name = Path(path).parent.name, Path(path).name
        return not name.startswith(folder + "_")

    truly_wrong = {p for p in (_task_path(t) for t in every) if wrong(p)}
    assert len(truly_wrong) == out["wrong"] == 2 * SMALL.wrong * len(SIGN_CLASSES)
    caught = truly_wrong & flagged
    assert sorted(Path(p).name for p in caught) == sorted(
        Path(p).name for p in out["caught_labels"]
    )
    assert len(caught) == out["caught"]
    # Most of the deliberately wrong labels are caught.
    assert len(caught) >= math.ceil(len(truly_wrong) / 2)


def test_the_demo_trains_the_default_probe_when_imagenet_weights_are_cached_and_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from annotate2model.demo.tour import _choose_config
    from annotate2model.training.features import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # Offline even on a machine with network: nothing listens on port 9 of the loopback.
    url = "http://127.0.0.1:9/models/resnet18-f37072fd.pth"
    monkeypatch.setattr(weights, "imagenet_url", lambda _backbone: url)
    config, why = _choose_config(timeout=1.0)
    assert config.weights == "none" and config.mode == "probe" and why and "not cached" in why
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stands in for the file torchvision would have downloaded")
    config, why = _choose_config(timeout=1.0)
    assert why is None and config.weights == "imagenet" and config.mode == "probe"
