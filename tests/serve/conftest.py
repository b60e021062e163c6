"""Serving fixtures: one workspace with two tiny trained runs, and real `a2m serve` processes.

The runs are ResNet-18 probes with `--weights none` on 32 px images (seconds to train); they are
trained once per session. Servers are whole `a2m serve` processes (uvicorn) on free loopback ports,
stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from annotate2model.labelstudio.server import free_port
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from annotate2model.training.config import RunConfig
from annotate2model.training.runs import runner
from annotate2model.workspace import init_workspace
from tests.conftest import make_image_folder

TOKEN = "serve-test-token-0123456789"
LABELS = ["ants", "bees"]


@dataclass(frozen=True)
class Trained:
    """A workspace holding runs 1 and 2 (both on version 1; run 1 has a model.onnx)."""

    root: Path
    images: Path

    def run_dir(self, run: int) -> Path:
        return self.root / ".a2m" / "runs" / str(run)


def a2m(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One whole `a2m` process acting on `workspace`."""
    env = _env(workspace)
    proc = subprocess.run(
        [sys.executable, "-m", "annotate2model", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"a2m {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _env(workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}
    env.update({"A2M_HOME": str(workspace), "NO_COLOR": "1", "COLUMNS": "200"})
    return env


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    base = tmp_path_factory.mktemp("serve")
    ws, _ = init_workspace(base / "ws")
    images = make_image_folder(base / "images", {"ants": 10, "bees": 10}, seed=7)
    store = Store.open(load_settings(ws, env={}))
    try:
        import_folder(store, images)
        for seed in (0, 1):
            # fp32: the exported files are fp32, and a CPU with native bf16 would run the
            # Predictor in bf16 (about 1e-3 away from them).
            config = RunConfig(
                weights="none", image_size=32, epochs=2, seed=seed, workers=0, precision="fp32"
            )
            runner.train(store, config)
    finally:
        store.close()
    a2m(ws.root, "export", "1", "--format", "onnx")
    return Trained(root=ws.root, images=images)


@dataclass(frozen=True)
class Served:
    url: str
    pid: int
    log: Path

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@contextlib.contextmanager
def serving(
    workspace: Path,
    *args: str,
    log: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> Iterator[Served]:
    """`a2m serve ARGS` on a free loopback port until the block ends (SIGTERM, then SIGKILL);
    `env` is added to the process's environment, `stdin` written to its standard input."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "annotate2model", "serve", *args, "--port", str(port)],
            env={**_env(workspace), **(env or {})},
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if stdin is not None and proc.stdin is not None:
        proc.stdin.write(stdin.encode())
        proc.stdin.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"a2m serve exited {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"a2m serve did not answer /health:\n{log.read_text()}")
            time.sleep(0.2)
        yield Served(url=url, pid=proc.pid, log=log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def torch_server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Runs 1 (default) and 2 on torch, with a token and small limits."""
    log = tmp_path_factory.mktemp("logs") / "torch-server.log"
    with serving(
        trained.root,
        "1",
        "2",
        "--token",
        TOKEN,
        "--max-upload-mb",
        "1",
        "--max-files",
        "4",
        log=log,
    ) as served:
        yield served


@pytest.fixture(scope="session")
def onnx_server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Run 1's model.onnx on ONNX Runtime, no token."""
    log = tmp_path_factory.mktemp("logs") / "onnx-server.log"
    with serving(trained.root, "1", "--onnx", log=log) as served:
        yield served
