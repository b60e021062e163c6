"""`a2m train` refuses what cannot work before a run is recorded (one message, a hint, exit 1, no
failed run left in the ledger), fetches ImageNet weights before the run, warns about small
validation and test splits, and writes clean lines at 80 columns when nothing is a terminal."""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from annotate2model.errors import InputError, TrainingError
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.imports import import_folder
from annotate2model.training.features import weights as weights_module
from annotate2model.training.fit.preflight import small_split_warnings
from annotate2model.training.fit.version import load_version_data
from annotate2model.training.runs import runner
from annotate2model.workspace import Workspace
from tests.conftest import make_image_folder, run_cli
from tests.training.conftest import make_split_folder, small_config

pytestmark = pytest.mark.training

QUICK = ("--image-size", "32", "--epochs", "1")


def _runs(cli: CliRunner) -> list[dict[str, object]]:
    code, out, err = run_cli(cli, "runs", "--json")
    assert code == 0, err
    runs: list[dict[str, object]] = json.loads(out)
    return runs


def _refused_port() -> int:
    """A local port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache (torch hub reads TORCH_HOME when asked for its folder)."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def offline(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ImageNet weights cached and their host unreachable (whatever network CI has)."""
    url = f"http://127.0.0.1:{_refused_port()}/models/resnet18-f37072fd.pth"
    monkeypatch.setattr(weights_module, "imagenet_url", lambda _backbone: url)
    return torch_home


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def weights_host(
    tmp_path: Path, weights: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A real HTTP server holding the shared ResNet-18 state dict as resnet18's ImageNet file;
    yields the folder it serves."""
    served = tmp_path / "served"
    (served / "models").mkdir(parents=True)
    (served / "models" / "resnet18-f37072fd.pth").symlink_to(weights)
    handler = functools.partial(_Quiet, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/models/resnet18-f37072fd.pth"
    monkeypatch.setattr(weights_module, "imagenet_url", lambda _backbone: url)
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


def _text_file(tmp_path: Path, weights: Path) -> list[str]:
    path = tmp_path / "notes.pth"
    path.write_text("hello world\nthese are not weights\n")
    return ["--weights", str(path)]


def _empty_file(tmp_path: Path, weights: Path) -> list[str]:
    path = tmp_path / "empty.pth"
    path.touch()
    return ["--weights", str(path)]


def _whole_model(tmp_path: Path, weights: Path) -> list[str]:
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    return ["--weights", str(path)]


def _missing_file(tmp_path: Path, weights: Path) -> list[str]:
    return ["--weights", str(tmp_path / "missing.pth")]


def _other_backbone(tmp_path: Path, weights: Path) -> list[str]:
    return ["--weights", str(weights), "--backbone", "mobilenet_v3_large"]


def _too_many_blocks(tmp_path: Path, weights: Path) -> list[str]:
    return ["--weights", str(weights), "--mode", "finetune", "--unfreeze", "99"]


CANNOT_WORK: dict[str, tuple[Callable[[Path, Path], list[str]], str, str]] = {
    # case: (arguments, in the message, in the hint)
    "weights of another backbone": (
        _other_backbone,
        "do not fit mobilenet_v3_large: 310 missing",
        "--backbone resnet18",
    ),
    "unfreeze 99": (_too_many_blocks, "resnet18 has 5 blocks", "--unfreeze with 1 to 5"),
    "a text file": (
        _text_file,
        "is not a PyTorch weights file (it starts with 'hello world')",
        "--weights",
    ),
    "an empty file": (_empty_file, "is not a PyTorch weights file (it is empty)", "--weights"),
    "a whole pickled model": (_whole_model, "holds pickled Python objects", ""),
    "a missing file": (_missing_file, "missing.pth does not exist", "--weights"),
}


@pytest.mark.parametrize("case", list(CANNOT_WORK))
def test_settings_that_cannot_work_leave_no_run(
    case: str, cli: CliRunner, store: Store, version1: Path, weights: Path, tmp_path: Path
) -> None:
    arguments, message, hint = CANNOT_WORK[case]
    code, _, err = run_cli(cli, "train", *arguments(tmp_path, weights), *QUICK)
    assert code == 1
    assert message in err and hint in err
    assert "KeyError" not in err and "Traceback" not in err
    assert _runs(cli) == []


def test_no_weights_offline_says_what_to_do(
    cli: CliRunner, store: Store, version1: Path, offline: Path
) -> None:
    code, _, err = run_cli(cli, "train", *QUICK)
    message, hint = err.split("\n")
    checkpoint = offline / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert code == 1
    assert message.startswith("the ImageNet weights of resnet18 cannot be had")
    assert f"not cached at {checkpoint}" in message and "cannot be reached" in message
    assert "--weights PATH" in hint and "--weights none" in hint and str(checkpoint) in hint
    assert _runs(cli) == []


def test_imagenet_weights_are_fetched_before_the_run_then_a_cached_probe_needs_no_network(
    cli: CliRunner,
    store: Store,
    version1: Path,
    weights_host: Path,
    torch_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, err = run_cli(cli, "train", *QUICK, "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    checkpoint = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert checkpoint.read_bytes() == (weights_host / "models" / checkpoint.name).read_bytes()

    # Offline from now on, and the downloaded file gone: the probe's trunk is in the embedding
    # cache, so a probe still trains; fine-tuning needs the weights and is refused, no run left.
    checkpoint.unlink()
    url = f"http://127.0.0.1:{_refused_port()}/models/resnet18-f37072fd.pth"
    monkeypatch.setattr(weights_module, "imagenet_url", lambda _backbone: url)
    code, out, err = run_cli(cli, "train", *QUICK, "--lr", "0.02", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    code, _, err = run_cli(cli, "train", *QUICK, "--mode", "finetune")
    assert code == 1 and "cannot be had" in err
    assert [r["status"] for r in _runs(cli)] == ["succeeded", "succeeded"]


def test_small_splits_are_warned_about(store: Store, tmp_path: Path) -> None:
    folder = make_split_folder(
        tmp_path / "data", {"ants": 6, "bees": 6}, {"ants": 24, "bees": 2}, seed=3
    )
    make_image_folder(folder / "test", {"ants": 5, "bees": 5}, seed=90)
    import_folder(store, folder)
    val, test = small_split_warnings(load_version_data(store, None))
    assert val.startswith("the val split of version 1 has 26 images (ants 24, bees 2): 'bees' ")
    assert "fewer than 3" in val and "noisy" in val
    assert test.startswith("the test split of version 1 has 10 images (ants 5, bees 5): one ")
    assert "10 points" in test and "[split] of a2m.toml" in test


# Spinners, bars, a shortened cell, or a terminal control sequence: none belongs in a log.
_NOT_A_LOG = re.compile(r"[\u2800-\u28ff\u2501\u2578-\u257f…\x1b\r]")


def test_train_at_80_columns_without_a_terminal_writes_clean_lines(
    workspace: Workspace, store: Store, version1: Path, weights: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "TERM"))},
        "A2M_HOME": str(workspace.root),
        "COLUMNS": "80",
    }
    train = ["train", "--weights", str(weights), "--mode", "finetune", *QUICK[:2]]
    proc = subprocess.run(
        [sys.executable, "-m", "annotate2model", *train, "--epochs", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    for line in [*err, *proc.stdout.splitlines()]:
        assert len(line) <= 80 and not _NOT_A_LOG.search(line), line
    # No Python warning (torch's deprecations) in the middle of the lines.
    assert "Warning" not in proc.stderr
    # The small split's warning first, then one finished line per stage and per epoch.
    assert err[0].startswith("warning: the val split of version 1 has 8 images (ants 4, bees 4)")
    assert any(re.fullmatch(r"Running the frozen blocks: 32/32 in [\d.]+ s", ln) for ln in err)
    epochs = [ln for ln in err if ln.startswith("Epoch ")]
    assert [ln.split(":")[0] for ln in epochs] == ["Epoch 1/2", "Epoch 2/2"]
    assert all(re.search(r"val_acc \d\.\d{3}$", ln) for ln in epochs), epochs
    assert "Run 1 succeeded on version 1" in proc.stdout


def test_judging_on_classes_never_learned_is_refused_before_any_work(
    store: Store, version1: Path, weights: Path, tmp_path: Path
) -> None:
    first = runner.train(store, small_config(weights, epochs=1)).run
    second = runner.train(store, small_config(weights, epochs=1, lr=0.02)).run
    import_folder(store, make_split_folder(tmp_path / "more", {"wasps": 4}, {"wasps": 2}))
    # It was a raw KeyError: 'wasps' (and a failed ensemble run) for an ensemble.
    with pytest.raises(TrainingError, match="version 2 has classes runs 1, 2 never learned: wasps"):
        runner.ensemble(store, [first.id, second.id], 2)
    with pytest.raises(TrainingError, match="version 2 has classes run 1 never learned: wasps"):
        runner.evaluate_run(store, first.id, 2)
    with pytest.raises(InputError, match="run 1 is given more than once"):
        runner.ensemble(store, [first.id, first.id])
    with store.read() as session:
        assert [r.id for r in store_runs.list_runs(session)] == [first.id, second.id]


def test_a_broken_file_in_the_hub_cache_is_named_with_the_way_out(
    cli: CliRunner, store: Store, version1: Path, offline: Path
) -> None:
    checkpoint = offline / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK\x03\x04 a download cut short")
    code, _, err = run_cli(cli, "train", *QUICK)
    message, hint = err.split("\n")
    assert code == 1 and message.startswith(f"cannot read weights from {checkpoint}")
    assert hint.startswith(f"delete {checkpoint} to download it again")
    assert _runs(cli) == []
