"""The training commands end to end through the CLI, plus a real Ctrl-C on a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.workspace import Workspace
from tests.conftest import make_image_folder, run_cli

pytestmark = pytest.mark.training

COMMANDS = ("train", "runs", "evaluate", "predict", "ensemble")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(cli: CliRunner, command: str) -> None:
    code, out, _ = run_cli(cli, command, "--help")
    assert code == 0 and "Example:" in out


def test_train_runs_evaluate_predict_ensemble(
    cli: CliRunner, store: Store, version1: Path, weights: Path
) -> None:
    base = ("train", "--weights", str(weights), "--image-size", "32", "--epochs", "2")
    code, out, err = run_cli(cli, *base, "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["status"] == "succeeded" and first["id"] == 1
    code, out, err = run_cli(cli, *base, "--optimizer", "adamw", "--lr", "0.001")
    assert code == 0, err
    assert "Run 2 succeeded" in out and "32 cached, 0 computed" in out

    code, out, _ = run_cli(cli, "runs", "--json")
    assert [r["id"] for r in json.loads(out)] == [1, 2]
    code, out, _ = run_cli(cli, "runs")
    assert code == 0 and "succeeded" in out and "resnet18 probe" in out

    code, out, _ = run_cli(cli, "evaluate", "1", "--split", "train", "--json")
    result = json.loads(out)
    assert code == 0 and result["n"] == 24 and len(result["confusion"]) == 2
    code, out, _ = run_cli(cli, "evaluate", "1")
    assert code == 0 and "Confusion" in out and "macro F1" in out

    image = next((version1 / "val" / "ants").iterdir())
    code, out, _ = run_cli(cli, "predict", "1", str(image), "--json", "--top-k", "2")
    top = json.loads(out)[0]["top"]
    assert code == 0 and {t["label"] for t in top} == {"ants", "bees"}
    code, out, _ = run_cli(cli, "predict", "1", str(image))
    assert code == 0 and "ants" in out

    code, out, err = run_cli(cli, "ensemble", "1", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["kind"] == "ensemble"
    code, out, _ = run_cli(cli, "predict", "3", str(image), "--json")
    assert code == 0 and len(json.loads(out)[0]["top"]) == 2


def test_cli_messages_for_bad_input(cli: CliRunner, store: Store, version1: Path) -> None:
    # A choice outside the listed ones is a usage error that names the choices.
    code, _, err = run_cli(cli, "train", "--backbone", "resnet7")
    assert code == 2 and "resnet7" in err and "resnet18" in err and "vgg16" in err
    from annotate2model.training import config

    # --help lists exactly the values the configuration accepts (wide, so nothing wraps).
    shown = subprocess.run(
        [sys.executable, "-m", "annotate2model", "train", "--help"],
        env={**os.environ, "COLUMNS": "400", "TERM": "dumb"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Each value is named whole, as `<a|b>` after the option or listed in its text.
    named = set(re.findall(r"\w+", shown))
    for values in (
        config.BACKBONES,
        config.MODES,
        config.OPTIMIZERS,
        config.SCHEDULES,
        config.PRECISIONS,
    ):
        assert set(values) <= named, set(values) - named
    code, _, err = run_cli(cli, "train", "--weights", "/nonexistent.pth")
    assert code == 1 and "does not exist" in err and "--weights none" in err
    code, _, err = run_cli(cli, "evaluate", "42")
    assert code == 1 and "there is no run 42" in err
    code, _, err = run_cli(cli, "ensemble", "1")
    assert code == 1 and "at least two runs" in err


def test_runs_closes_a_run_whose_process_died(cli: CliRunner, store: Store, version1: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with store.write() as session:
        run = store_runs.create_run(session, 1, "train", {"backbone": "resnet18"}, "cpu")
        session.get(store_runs.Run, run.id).pid = gone.pid  # type: ignore[union-attr]
    code, out, _ = run_cli(cli, "runs", "--json")
    (row,) = json.loads(out)
    assert code == 0 and row["status"] == "failed" and f"pid {gone.pid}" in row["error"]


@pytest.mark.parametrize("preset", ["resnet18-frozen-sgd", "resnet18-probe-adamw"])
def test_train_from_a_preset(
    cli: CliRunner, store: Store, version1: Path, weights: Path, preset: str
) -> None:
    """The notebooks' recipe and its AdamW twin: a frozen backbone and a head trained by the
    torch loop (fine-tuning with nothing unfrozen)."""
    code, out, err = run_cli(
        cli,
        "train",
        "--preset",
        preset,
        "--weights",
        str(weights),
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--views",
        "2",
        "--json",
    )
    assert code == 0, err
    run = json.loads(out)
    config = run["config"]
    assert config["preset"] == preset and config["mode"] == "finetune"
    assert config["unfreeze"] == "0" and config["epochs"] == 2
    expected = {
        "resnet18-frozen-sgd": ("sgd", "cyclic"),
        "resnet18-probe-adamw": ("adamw", "cosine"),
    }
    assert (config["optimizer"], config["schedule"]) == expected[preset]
    assert [row["epoch"] for row in run["history"]] == [1, 2] and run["status"] == "succeeded"
    code, _, err = run_cli(cli, "train", "--preset", "nope")
    assert code == 1 and "unknown preset 'nope'" in err


def test_a_probe_says_the_optimiser_options_do_not_apply(
    cli: CliRunner, store: Store, version1: Path, weights: Path
) -> None:
    code, out, err = run_cli(
        cli, "train", "--weights", str(weights), "--image-size", "32", "--lr", "0.1", "--json"
    )
    assert code == 0, err
    assert "--lr apply to fine-tuning" in err and "L-BFGS" in err
    run = json.loads(out)
    assert run["config"]["mode"] == "probe" and any(row.get("kept") for row in run["history"])


@pytest.mark.slow
def test_kill_9_during_extraction_leaves_a_usable_cache(
    cli: CliRunner, workspace: Workspace, store: Store, tmp_path: Path, weights: Path
) -> None:
    import sqlite3

    from annotate2model.store.imports import import_folder

    folder = make_image_folder(tmp_path / "many", {"ants": 200, "bees": 200})
    import_folder(store, folder)
    env = {**os.environ, "A2M_HOME": str(workspace.root)}
    args = ["train", "--weights", str(weights), "--image-size", "128"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "annotate2model", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = workspace.cache_dir / "embeddings" / "embeddings.sqlite"
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline and stored == 0:
        time.sleep(0.2)
        if db.is_file():
            with contextlib.suppress(sqlite3.Error):
                conn = sqlite3.connect(db, timeout=5)
                stored = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
                conn.close()
    proc.kill()
    proc.wait(timeout=30)
    assert 0 < stored < 400, "the process must be killed in the middle of extraction"
    conn = sqlite3.connect(db, timeout=5)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    before = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    conn.close()
    assert before % 32 == 0  # whole extraction batches only

    code, out, err = run_cli(cli, *args, "--json")
    assert code == 0, err
    extraction = json.loads(out)["metrics"]["timing"]["extraction"]
    assert extraction["cached"] == before and extraction["computed"] == 400 - before
    code, out, _ = run_cli(cli, "runs", "--json")
    statuses = [r["status"] for r in json.loads(out)]
    assert statuses == ["failed", "succeeded"]
