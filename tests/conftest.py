"""Fixtures shared by every test: a workspace on a real SQLite file (or, in a both_dialects test,
a real PostgreSQL database too), generated images, the CLI."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from annotate2model.settings import Settings, load_settings
from annotate2model.store import Store
from annotate2model.workspace import Workspace, init_workspace
from bench._shared import HYMENOPTERA, SCENES_WEIGHTS, missing_message
from tests.postgres import PostgresServer
from tests.postgres import binaries as postgres_binaries


def in_ci() -> bool:
    """CI=true (or 1/yes), as GitHub Actions, GitLab and most CI systems set it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_shared(path: Path, what: str) -> Path:
    """`path` from ../shared, or the test stops: FAILS under CI, skips elsewhere, saying why.

    A CI that skips every test needing the real data or weights would go green without testing
    what matters, so there a missing file is an error.
    """
    if path.exists():
        return path
    message = missing_message(path, what)
    if in_ci():
        pytest.fail(f"{message} Under CI (CI=true) missing shared data fails the test.", False)
    pytest.skip(message)


@pytest.fixture
def hymenoptera() -> Path:
    """The real hymenoptera photos (train/ and val/, two classes) from ../shared."""
    return require_shared(HYMENOPTERA, "the hymenoptera data set")


@pytest.fixture
def scenes_weights() -> Path:
    """The shared ResNet-18 state dict trained on scene photos."""
    return require_shared(SCENES_WEIGHTS, "the ResNet-18 scenes weights")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `gpu` tests skip where there is no CUDA device: the one skip allowed under CI. Decided
    # before any fixture runs, so a GPU-less machine never asks for their shared data.
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(
            reason="gpu: no CUDA device here (torch.cuda.is_available() is False)"
        )
        for item in gpu_items:
            item.add_marker(skip)


def run_python(code: str, *args: str, timeout: float = 300) -> str:
    """Run `code` (dedented) in a fresh interpreter with `args` in sys.argv[1:], from the
    project's root; the test fails with its output unless it exits 0. Returns its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def image_bytes(
    seed: int, size: tuple[int, int] = (64, 48), fmt: str = "PNG", color: str | None = None
) -> bytes:
    """A small real image whose content (and so SHA-256) depends on `seed`."""
    rng = random.Random(seed)
    base = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    img = Image.new("RGB", size, color or base)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        img.paste((rng.randrange(256), 0, rng.randrange(256)), (x, y, x + 8, y + 8))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def make_image_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """root/<label>/<label>_<i>.png with counts[label] distinct images each."""
    for k, (label, n) in enumerate(sorted(counts.items())):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"{label}_{i}.png").write_bytes(image_bytes(seed * 100_000 + k * 1000 + i))
    return root


DIALECTS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test marked both_dialects (or in a module so marked) runs on each database; its
    # PostgreSQL half also carries the `postgresql` mark.
    if "dialect" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_dialects"
    ):
        metafunc.parametrize(
            "dialect",
            [
                pytest.param("sqlite", id="sqlite"),
                pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
            ],
        )


@pytest.fixture
def dialect() -> str:
    """The store's database for this test: SQLite unless the test is marked both_dialects."""
    return "sqlite"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server for the session (Debian's package; fails under CI when
    it is not installed, as tests/run.sh installs it)."""
    bin_dir = postgres_binaries()
    if bin_dir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql; tests/run.sh does)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(dialect: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A fresh PostgreSQL database's URL for the PostgreSQL half (dropped afterwards); None:
    the workspace's SQLite."""
    if dialect == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws, _ = init_workspace(tmp_path / "ws")
    return ws


@pytest.fixture
def settings(workspace: Workspace, database_url: str | None) -> Settings:
    return load_settings(workspace, env={"A2M_DATABASE_URL": database_url} if database_url else {})


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store.open(settings)
    yield s
    s.close()


@pytest.fixture
def cli(
    workspace: Workspace, database_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> CliRunner:
    """A runner whose commands act on the `workspace` fixture (through A2M_HOME), and on the
    test's database (A2M_DATABASE_URL) in a both_dialects test's PostgreSQL half."""
    monkeypatch.setenv("A2M_HOME", str(workspace.root))
    if database_url:
        monkeypatch.setenv("A2M_DATABASE_URL", database_url)
    else:
        monkeypatch.delenv("A2M_DATABASE_URL", raising=False)
    return CliRunner()


def run_cli(runner: CliRunner, *args: str) -> tuple[int, str, str]:
    """Invoke `a2m args...` in-process through main()'s error boundary; returns (code, out, err)."""
    from annotate2model.cli.app import app

    result = runner.invoke(app, list(args), catch_exceptions=True)
    exc = result.exception
    from annotate2model.errors import A2MError

    if isinstance(exc, A2MError):
        # As main() prints it: the message, then the hint (how to fix it) on a line of its own.
        return exc.exit_code, result.stdout, "\n".join(filter(None, (exc.message, exc.hint)))
    if exc is not None and not isinstance(exc, SystemExit):
        raise exc
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rich draws no colour codes into captured output; tests never see a user's A2M, Label
    # Studio or MLflow settings.
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    # As in the shell README command 1 leaves: this install's `a2m` first on PATH (hints and
    # printed commands then say `a2m`; tests/test_demo_output.py covers the other case).
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        monkeypatch.setenv("PATH", os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    for name in list(os.environ):
        if name.startswith(("A2M_", "LABEL_STUDIO_", "MLFLOW_")):
            monkeypatch.delenv(name, raising=False)


# A folder where tests leave what a person may want to look at afterwards (screenshots).
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def chromium_path() -> str:
    """Debian's chromium (tests/run.sh installs it); Playwright never downloads a browser here."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        # Not a skip: the pages are features, and the test command installs the browser.
        pytest.fail("chromium is missing: `bash tests/run.sh` installs Debian's package", False)
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Chromium for the session (a playwright.sync_api.Browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


@pytest.fixture
def artifacts() -> Path:
    """test-artifacts/ at the project root (ignored by git), for screenshots."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
