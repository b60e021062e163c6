"""Training as several processes (DistributedDataParallel, gloo on the CPU): `a2m train --gpus 2
--device cpu` and torchrun itself, on real images and the shared scenes weights.

Two processes with the same seed and data train what one process trains: each rank steps on half
of every global batch (torch's DistributedSampler), so the figures differ only by the order in
which floating-point sums are taken. Tolerance: 1e-3 on every loss of the history, the same
accuracy and the same predicted class for every image.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.imports import import_folder
from annotate2model.training.context import RunContext
from annotate2model.workspace import Workspace
from tests.training.conftest import make_split_folder

pytestmark = [pytest.mark.training, pytest.mark.slow, pytest.mark.distributed]

LOSS_TOLERANCE = 1e-3


@pytest.fixture
def version(store: Store, tmp_path: Path) -> int:
    """16 training and 6 validation images of each of two classes."""
    folder = make_split_folder(tmp_path / "data", {"ants": 16, "bees": 16}, {"ants": 6, "bees": 6})
    import_folder(store, folder)
    return 1


def a2m(workspace: Workspace, *args: str, torchrun: int = 0) -> subprocess.Popen[str]:
    """`a2m args...` on `workspace`, or `torchrun --nproc-per-node N -m annotate2model args...`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "RANK", "WORLD"))}
    env["A2M_HOME"] = str(workspace.root)
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"]
        if torchrun
        else []
    )
    return subprocess.Popen(
        [sys.executable, *launcher, "-m", "annotate2model", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # `finish` can stop it with every process it started
    )


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The process's stdout and stderr once it ends. Past `timeout`, its whole process group
    (ranks, torchrun, decoding workers) is killed and the test fails, so a hung run does not
    outlive it."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        pytest.fail(f"a2m ran past {timeout:.0f} s and was killed; its stderr:\n{err[-3000:]}")


def train(workspace: Workspace, *args: str) -> dict[str, Any]:
    process = a2m(workspace, "train", "--device", "cpu", "--json", *args)
    out, err = finish(process, 420)
    assert process.returncode == 0, err
    run: dict[str, Any] = json.loads(out)
    return run


def predictions(store: Store, run: int) -> dict[str, str]:
    with store.read() as session:
        rows = store_runs.read_predictions(session, run)
    return {row.image_sha256: row.predicted for row in rows}


def assert_same_training(one: dict[str, Any], two: dict[str, Any]) -> None:
    assert [row.get("epoch") for row in one["history"]] == [
        row.get("epoch") for row in two["history"]
    ]
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert abs(a[key] - b[key]) <= LOSS_TOLERANCE, (key, a, b)
        assert a.get("train_images") == b.get("train_images")
        assert a.get("kept") == b.get("kept")
    assert one["metrics"]["val_accuracy"] == two["metrics"]["val_accuracy"]
    val_one, val_two = one["metrics"]["splits"]["val"], two["metrics"]["splits"]["val"]
    assert abs(val_one["loss"] - val_two["loss"]) <= LOSS_TOLERANCE
    assert val_one["confusion"] == val_two["confusion"]


@pytest.mark.parametrize("unfreeze", ["1", "all"])
def test_two_processes_train_what_one_process_trains(
    workspace: Workspace, store: Store, version: int, weights: Path, unfreeze: str
) -> None:
    # unfreeze 1: the frozen blocks' outputs are computed once, shared out and summed over the
    # ranks; all: images are decoded every epoch, each rank its share.
    args = (
        "--weights", str(weights), "--image-size", "32", "--mode", "finetune",
        "--unfreeze", unfreeze, "--head-init", "random", "--epochs", "2", "--batch-size", "8",
    )  # fmt: skip
    one = train(workspace, *args)
    two = train(workspace, *args, "--gpus", "2")
    assert one["config"]["processes"] == 1 and two["config"]["processes"] == 2
    assert two["device"].startswith("2 processes; rank 0 on cpu")
    assert_same_training(one, two)
    assert predictions(store, two["id"]) == predictions(store, one["id"])
    assert len(predictions(store, two["id"])) == 44

    # Rank 0 alone recorded: one run row and one run folder per command.
    with store.read() as session:
        assert [r.id for r in store_runs.list_runs(session)] == [one["id"], two["id"]]
    runs = workspace.runs_dir
    assert sorted(p.name for p in runs.iterdir()) == [str(one["id"]), str(two["id"])]


def test_extraction_is_shared_out_and_merged_into_one_cache(
    workspace: Workspace, store: Store, version: int, weights: Path
) -> None:
    args = ("--weights", str(weights), "--image-size", "32", "--views", "2")
    two = train(workspace, *args, "--gpus", "2")
    extraction = two["metrics"]["timing"]["extraction"]
    # 32 training images in two views and 12 validation images, each computed once.
    assert extraction["requested"] == 76 and extraction["computed"] == 76
    cache = RunContext.from_store(store).embedding_cache()
    try:
        assert cache.count() == 76
    finally:
        cache.close()
    one = train(workspace, *args)
    assert one["metrics"]["timing"]["extraction"]["cached"] == 76
    val_one, val_two = one["metrics"]["splits"]["val"], two["metrics"]["splits"]["val"]
    assert val_one["loss"] == pytest.approx(val_two["loss"], abs=1e-6)
    assert predictions(store, one["id"]) == predictions(store, two["id"])


def _rank_process(launcher: int, rank: int) -> psutil.Process | None:
    for child in psutil.Process(launcher).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child
        except psutil.Error:
            continue
    return None


def test_a_rank_killed_mid_run_leaves_the_run_failed(
    workspace: Workspace, store: Store, version: int, weights: Path
) -> None:
    process = a2m(
        workspace,
        "train", "--device", "cpu", "--weights", str(weights), "--image-size", "32",
        "--mode", "finetune", "--unfreeze", "all", "--head-init", "random",
        "--epochs", "60", "--batch-size", "8",
        torchrun=2,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        victim = None
        while time.monotonic() < deadline and process.poll() is None:
            with store.read() as session:
                runs = store_runs.list_runs(session)
            if runs and any(row.get("epoch") for row in runs[0].history):
                victim = _rank_process(process.pid, 1)
                break
            time.sleep(0.2)
        assert victim is not None, finish(process, 120)[1]
        victim.send_signal(signal.SIGKILL)
        _, err = finish(process, 120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    with store.read() as session:
        runs = store_runs.list_runs(session)
    assert len(runs) == 1
    run = runs[0]
    assert run.status == "failed", run
    assert run.error is not None
    # Rank 0 lost its connection to rank 1, or torchrun stopped it first.
    assert "another process of this run" in run.error and "torchrun" in run.error
    assert not (workspace.runs_dir / str(run.id) / "model.json").exists()
    # One line from rank 0, and no traceback of ours (torchrun prints its own report).
    assert "error: another process of this run" in err or "error: torchrun stopped" in err, err
    assert not re.search(r'File ".*annotate2model', err), err


def test_gpus_refuses_what_cannot_run(workspace: Workspace, version: int, weights: Path) -> None:
    base = ("train", "--weights", str(weights), "--image-size", "32", "--mode", "finetune")
    uneven = a2m(workspace, *base, "--device", "cpu", "--gpus", "2", "--batch-size", "7")
    _, err = finish(uneven, 120)
    assert uneven.returncode == 1 and "--batch-size 7 does not split evenly over 2" in err

    # Refused once, before any process starts, not once per process.
    absent = a2m(workspace, *base, "--device", "cpu", "--gpus", "2", "--version", "9")
    _, err = finish(absent, 120)
    assert absent.returncode == 1 and err.count("there is no dataset version 9") == 1, err

    import torch

    if not torch.cuda.is_available():
        missing = a2m(workspace, *base, "--gpus", "2")
        _, err = finish(missing, 120)
        assert missing.returncode == 1, err
        assert "--gpus 2 asks for 2 GPUs; this machine has 0" in err
        assert "--device cpu" in err
