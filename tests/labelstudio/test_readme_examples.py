"""The README's examples run as written: its ```bash blocks, in order, in one shell session each
(the working folder carries over), as whole `a2m` processes against a real Label Studio.

What a reader would bring is made here: a home folder of its own (so `~/signs` and `~/photos` are
this test's), generated street-sign photos in class folders with a few deliberately wrong labels,
and the ImageNet weights of ResNet-18 in the torch hub cache (the shared ResNet-18 weights under
torchvision's file name, as an offline machine would pre-fill it). What a person does in Label
Studio between two blocks (relabel the flagged tasks in the run's tab) is done through its API.

Two shortcuts keep this under two minutes, neither changing what the commands do: the workspace's
Label Studio data folder starts as a copy of the session's initialised one (its first start runs
30 s or more of database migrations), with the admin password and token `a2m studio up` would
otherwise make itself; and the photos are few. ```sh blocks (the demo, the test command, a remote
server) are not run here: the demo has its own test, and the test command is this suite.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from annotate2model.demo.signs import SIGN_CLASSES, sign_bytes
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.connection import (
    LOCAL_PASSWORD_SECRET,
    LOCAL_TOKEN_SECRET,
    local_server,
)
from annotate2model.settings import Secret, SplitFractions
from annotate2model.store.versions import split_for
from annotate2model.workspace import Workspace
from tests.labelstudio.conftest import LEGACY_TOKEN, PASSWORD, choice, copy_server

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio, pytest.mark.training]

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
# Images per class in each batch; per batch and class, this many train images go into the other
# class's folder (deliberately wrong labels).
PER_CLASS = 10
WRONG_PER_CLASS = 1


def bash_blocks(text: str) -> list[str]:
    return [m.group(1) for m in BLOCK.finditer(text)]


def make_photos(home: Path) -> dict[str, str]:
    """~/photos/signs and ~/photos/more-signs (two batches, a few labels wrong), ~/signs/photo.jpg;
    returns sha256 -> true class of every photo.

    Splits come from image hashes, so which images are test images is chosen here, not left to
    chance: each class's first batch holds a test image, which the second version keeps, so
    `a2m compare --versions 1,2` has common test images to judge on.
    """
    fractions = SplitFractions()
    truth: dict[str, str] = {}
    for label in SIGN_CLASSES:
        other = next(c for c in SIGN_CLASSES if c != label)
        pool = []
        for index in range(10 * PER_CLASS):
            data = sign_bytes(label, 3, index)
            sha = hashlib.sha256(data).hexdigest()
            pool.append((index, data, sha, split_for(sha, fractions)))
        first_test = next(p for p in pool if p[3] == "test")
        rest = [p for p in pool if p is not first_test]
        batches = {
            "signs": [first_test, *rest[: PER_CLASS - 1]],
            "more-signs": rest[PER_CLASS - 1 : 2 * PER_CLASS - 1],
        }
        for batch, photos in batches.items():
            wrong = [p for p in photos if p[3] == "train"][:WRONG_PER_CLASS]
            for photo in photos:
                index, data, sha, _ = photo
                folder = home / "photos" / batch / (other if photo in wrong else label)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{label}_{index:04d}.jpg").write_bytes(data)
                truth[sha] = label
    (home / "signs").mkdir()
    (home / "signs" / "photo.jpg").write_bytes(sign_bytes("stop", 4, 0))
    return truth


def seed_label_studio(template: tuple[Path, str], ws: Workspace) -> None:
    """The workspace's Label Studio data folder as a copy of the initialised template, with the
    password and token that `a2m studio up` would have made (and then keeps using)."""
    ws.data_dir.mkdir(parents=True)
    copy_server(template, local_server(ws).root)
    ws.write_secret(LOCAL_PASSWORD_SECRET, PASSWORD)
    ws.write_secret(LOCAL_TOKEN_SECRET, LEGACY_TOKEN)


def fill_hub_cache(torch_home: Path, weights: Path) -> None:
    """The ResNet-18 ImageNet file name in the torch hub cache, holding the shared weights."""
    from torchvision.models import ResNet18_Weights

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(weights, checkpoints / os.path.basename(ResNet18_Weights.DEFAULT.url))


class Shell:
    """Runs README blocks as bash scripts, each in its own process group, carrying the folder."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.cwd = home
        bin_dir = str(Path(sys.executable).parent)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("A2M_", "LABEL_STUDIO_", "TORCH_HOME"))
        }
        env.update(
            HOME=str(home),
            TORCH_HOME=str(home / "torch"),
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            COLUMNS="100",
            NO_COLOR="1",
        )
        self.env = env
        self.groups: list[int] = []
        self.where = home / "cwd"
        # Seconds each block took, in order (shown when a later check fails).
        self.seconds: list[float] = []

    def run(self, script: str) -> str:
        full = f"set -euo pipefail\n{script}\npwd > {self.where}\n"
        started = time.monotonic()
        proc = subprocess.Popen(
            ["bash", "-c", full],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.groups.append(proc.pid)
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"README block timed out:\n{script}\n--- output ---\n{out}")
        assert proc.returncode == 0, f"README block failed:\n{script}\n--- output ---\n{out}"
        self.seconds.append(round(time.monotonic() - started, 1))
        self.cwd = Path(self.where.read_text().strip())
        return out

    def a2m_json(self, *args: str) -> Any:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "a2m"), *args, "--json"],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)

    def stop_all(self) -> None:
        """Whatever a block left running (a backgrounded `a2m serve` after a failure)."""
        for pgid in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)


def relabel_flagged(shell: Shell, ws: Workspace, run: int, truth: dict[str, str]) -> int:
    """What the README asks of a person: open the run's tab, give each flagged task its right
    label (a confirmation where the label was right). Returns how many labels changed."""
    config = ws.read_config()["labelstudio"]
    token = ws.read_secrets()["labelstudio_token"]
    flags = shell.a2m_json("flags", str(run))["flags"]
    assert flags, "the run flagged nothing"
    changed = 0
    with LabelStudioClient(config["url"], Secret(token)) as client:
        for flag in flags:
            right = truth[flag["image_sha256"]]
            task = client.json("GET", f"/api/tasks/{flag['task']}", "read a flagged task")
            annotation = task["annotations"][-1]
            response = client.request(
                "PATCH", f"/api/annotations/{annotation['id']}", json=choice(right)
            )
            assert response.status_code < 300, response.text
            changed += right != flag["current_label"]
    return changed


def test_readme_bash_blocks_run_in_order(
    ls_template: tuple[Path, str], scenes_weights: Path, tmp_path: Path
) -> None:
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "the README has no ```bash block"
    home = tmp_path / "home"
    home.mkdir()
    truth = make_photos(home)
    fill_hub_cache(home / "torch", scenes_weights)
    ws = Workspace(home / "signs")
    seed_label_studio(ls_template, ws)
    shell = Shell(home)
    outputs: list[str] = []
    relabeled = 0
    try:
        for block in blocks:
            if re.search(r"^a2m loop", block, re.M):
                relabeled = relabel_flagged(shell, ws, 2, truth)
            outputs.append(shell.run(block))
        versions = shell.a2m_json("versions")
        runs = shell.a2m_json("runs")
        flags = shell.a2m_json("flags", "2")["flags"]
    finally:
        shell.stop_all()
        local_server(ws).stop()
    text = "\n".join(outputs) + f"\n(seconds per block: {shell.seconds})"
    # The flags of run 2 caught at least one deliberately wrong label, which the relabel fixed.
    assert relabeled >= 1, f"no wrong label among run 2's flags:\n{text}"
    outcomes = [f["outcome"] for f in flags]
    assert outcomes.count("relabeled") == relabeled, outcomes
    assert set(outcomes) <= {"relabeled", "confirmed"}, outcomes
    # Three versions (first batch, grown, relabeled) and a succeeded run on each.
    assert [v["number"] for v in _rows(versions)] == [1, 2, 3]
    assert [(r["version"], r["status"]) for r in _rows(runs)] == [
        (1, "succeeded"),
        (2, "succeeded"),
        (3, "succeeded"),
    ]
    assert "They wait in the tab a2m review, highest score first" in text
    # The served model answered the curl with its top labels for the photo.
    answer, _ = json.JSONDecoder().raw_decode(text[text.index('{"run"') :])
    assert answer["run"] == 3
    assert {t["label"] for t in answer["predictions"][0]["top"]} == {"stop", "not_stop"}
    assert "Stopped Label Studio" in outputs[-1]


def _rows(listing: Any) -> list[dict[str, Any]]:
    """A --json listing's rows, whether it is a list or {"versions"|"runs": [...]}."""
    if isinstance(listing, list):
        return listing
    (rows,) = [v for v in listing.values() if isinstance(v, list)]
    return rows
