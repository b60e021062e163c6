"""What the workspace keeps for its owner only: `.a2m/` (the store, the images, the tokens in
secrets.toml and in the local Label Studio's database) is made private (folders 0700, files 0600)
when created, repaired when a workspace made readable by hand is opened, and reported by `a2m
doctor`. Temp files name their writer, so those of a killed writer go at the next open, not an
hour later. `a2m connect --token -` reads the token from stdin (never from the command line), and
what is typed at a terminal for `-` (a token, a database URL) is not echoed.

Where the tests run as root, a second user (nobody) really tries to read the files; elsewhere the
mode bits are what is checked.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import TextClause, text
from typer.testing import CliRunner

from annotate2model import doctor
from annotate2model.cli.app import app
from annotate2model.fsutil import TEMP_PREFIX, TEMP_SUFFIX, atomic_write, temp_writer_alive
from annotate2model.labelstudio import connection
from annotate2model.labelstudio.server import DEFAULT_PORT, LocalServer, port_is_free
from annotate2model.settings import Secret, Settings, load_settings
from annotate2model.store import Store
from annotate2model.store.blobs import BlobStore
from annotate2model.workspace import Workspace, find_workspace, init_workspace
from tests.conftest import run_cli

OTHERS = stat.S_IRWXG | stat.S_IRWXO
NOBODY = 65534


def open_to_others(root: Path) -> list[str]:
    """Everything at or under `root` whose mode lets group or other users in."""
    found = []
    for path in [root, *root.rglob("*")]:
        if path.lstat().st_mode & OTHERS and not path.is_symlink():
            found.append(f"{path.relative_to(root)} {stat.filemode(path.lstat().st_mode)}")
    return found


def readable_by_another_user(paths: list[Path]) -> list[Path] | None:
    """Which of `paths` user nobody (no groups) can read (a file) or list (a folder); None when
    this process cannot run anything as another user (not root, or root without the right)."""
    if os.geteuid() != 0:
        return None
    script = (
        'for f; do if [ -d "$f" ]; then ls "$f"; else cat "$f"; fi >/dev/null 2>&1 && echo "$f"; '
        "done; echo done"
    )
    try:
        done = subprocess.run(
            ["sh", "-c", script, "sh", *map(str, paths)],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    *readable, last = done.stdout.splitlines()
    assert last == "done"
    return [Path(line) for line in readable]


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder every user may enter (pytest's own tmp folders are 0700: nobody could read
    anything below them, whatever the modes under test)."""
    folder = Path(tempfile.mkdtemp(prefix="a2m-private-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, whatever the test runner's: the workspace must not depend on it."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _noop() -> TextClause:
    """A statement for a write session: the store's -wal and -shm files exist while it runs."""
    return text("SELECT 1")


def test_a_new_workspace_and_store_are_private(public_dir: Path, umask_022: None) -> None:
    ws, _ = init_workspace(public_dir / "ws")
    settings = load_settings(ws, env={})
    store = Store.open(settings)
    try:
        sha = store.blobs.put(b"image bytes")
        with store.write() as session:
            session.execute(_noop())
        ws.write_secret("labelstudio_token", "a-secret-token")
        names = {p.name for p in ws.data_dir.iterdir()}
        assert {"store.db", "store.db-wal", "store.db-shm", "secrets.toml"} <= names
        assert open_to_others(ws.data_dir) == []
        assert stat.S_IMODE(store.blobs.path(sha).stat().st_mode) == 0o600
        assert stat.S_IMODE(ws.data_dir.stat().st_mode) == 0o700
        # a2m.toml is the person's to share; it holds no secret.
        assert ws.config_path.stat().st_mode & 0o044 == 0o044
        others = readable_by_another_user([ws.config_path, ws.secrets_path, ws.store_path])
        if others is not None:
            assert others == [ws.config_path]
    finally:
        store.close()
    # Nothing to repair on the next open.
    assert find_workspace(ws.root, None, public_dir).repaired == ()


def test_a_workspace_made_readable_is_repaired_on_open(public_dir: Path, umask_022: None) -> None:
    ws, _ = init_workspace(public_dir / "ws")
    store = Store.open(load_settings(ws, env={}))
    try:
        sha = store.blobs.put(b"image bytes")
        with store.write() as session:
            session.execute(_noop())
        ws.write_secret("labelstudio_token", "a-secret-token")
        studio = LocalServer(ws.labelstudio_dir)
        studio.data_dir.mkdir(parents=True)
        (studio.data_dir / "label_studio.sqlite3").write_bytes(b"tokens in clear")
        (studio.data_dir / "media" / "upload").mkdir(parents=True)
        (studio.data_dir / "media" / "upload" / "photo.jpg").write_bytes(b"an upload")
        # As an older a2m (or a copy with `cp -r` under umask 022) left it.
        for path in [ws.data_dir, *ws.data_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        blob = store.blobs.path(sha)
        files = [
            ws.secrets_path,
            ws.store_path,
            ws.store_path.with_name("store.db-wal"),
            studio.data_dir / "label_studio.sqlite3",
            studio.data_dir / "media" / "upload" / "photo.jpg",
            blob,
        ]
        before = readable_by_another_user(files)
        if before is not None:
            assert before == files  # the test really opened them up

        opened = find_workspace(None, str(ws.root), public_dir)

        repaired = {p.relative_to(ws.root).as_posix() for p in opened.repaired}
        assert {
            ".a2m",
            ".a2m/blobs",
            ".a2m/secrets.toml",
            ".a2m/store.db",
            ".a2m/store.db-wal",
            ".a2m/labelstudio",
            ".a2m/labelstudio/data",
            ".a2m/labelstudio/data/label_studio.sqlite3",
        } <= repaired
        # Only the few top-level paths were visited: the blobs and uploads below them keep their
        # modes, and the private folders above keep everyone else out of them.
        assert ".a2m/labelstudio/data/media/upload/photo.jpg" not in repaired
        assert not any(p.startswith(".a2m/blobs/") for p in repaired)
        assert opened.exposed() == []
        for path in opened.private_paths():
            if path.exists():
                assert stat.S_IMODE(path.stat().st_mode) & OTHERS == 0, path
        after = readable_by_another_user(files)
        if after is not None:
            assert after == []
        # The store still works after the repair.
        assert store.blobs.read(sha) == b"image bytes"
    finally:
        store.close()


def test_doctor_reports_secrets_open_to_others(
    cli: CliRunner, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    workspace.write_secret("labelstudio_token", "a-secret-token")
    Store.open(load_settings(workspace, env={})).close()
    assert doctor._permissions(load_settings(workspace, env={})).status == "ok"
    workspace.data_dir.chmod(0o755)
    workspace.secrets_path.chmod(0o644)
    workspace.store_path.chmod(0o664)

    # A workspace object that was not opened (nothing repaired): a failure, with the fix.
    check = doctor._permissions(load_settings(Workspace(workspace.root), env={}))
    assert check.status == "fail" and check.required
    for name in (".a2m", ".a2m/secrets.toml", ".a2m/store.db"):
        assert name in check.detail
    assert check.fix is not None and check.fix.startswith("chmod go-rwx ")
    fix = check.fix.split(" (")[0]
    subprocess.run(fix, shell=True, check=True)
    assert workspace.exposed() == []
    assert doctor._permissions(load_settings(workspace, env={})).status == "ok"

    # Through the command: opening the workspace repairs it, and the row says what it made
    # private. No network: the weights' download address refuses at once.
    workspace.data_dir.chmod(0o750)
    workspace.secrets_path.chmod(0o640)
    from annotate2model.labelstudio.server import free_port
    from annotate2model.training.features import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    refused = f"http://127.0.0.1:{free_port()}/w.pth"
    monkeypatch.setattr(weights, "imagenet_url", lambda _backbone: refused)
    code, out, err = run_cli(cli, "doctor", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0, err
    row = rows["permissions"]
    assert row["status"] == "warn" and not row["required"]
    assert ".a2m, .a2m/secrets.toml could be opened by other users" in row["detail"]
    assert "made private now" in row["detail"] and "a2m connect --token -" in row["fix"]
    assert stat.S_IMODE(workspace.secrets_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(workspace.data_dir.stat().st_mode) == 0o700


# -- temp files of a killed writer --------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from annotate2model.fsutil import atomic_write

def write(tmp):
    tmp.write_bytes(b"half an image")
    print("writing", flush=True)
    time.sleep(600)

atomic_write(Path(sys.argv[1]), write)
"""


def _partials(blobs: BlobStore) -> list[Path]:
    return sorted(blobs.root.glob(f"*/{TEMP_PREFIX}*{TEMP_SUFFIX}"))


def test_temps_of_a_killed_writer_go_at_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    sha = "ab" * 32
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(blobs.path(sha))],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        (partial,) = _partials(blobs)
        assert str(writer.pid) in partial.name
        # Its writer is at work: the file stays, fresh or not (an hour is the limit).
        assert temp_writer_alive(partial.name) is True
        assert blobs.remove_partials() == 0 and partial.exists()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert temp_writer_alive(partial.name) is False
    assert time.time() - partial.stat().st_mtime < 60
    assert blobs.remove_partials() == 1
    assert _partials(blobs) == [] and not blobs.has(sha)


def test_temps_whose_writer_cannot_be_told_wait_for_their_age(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    folder = blobs.root / "ab"
    folder.mkdir(parents=True)
    pid, start, where = temp_tag(tmp_path)
    # This process's pid started 10 s later: the pid was reused, its writer is dead.
    reused = folder / f"{TEMP_PREFIX}p{pid}.{int(start) + 1000}.{where}-{'ab' * 32}-x{TEMP_SUFFIX}"
    living = folder / f"{TEMP_PREFIX}p{pid}.{start}.{where}-{'ab' * 32}-y{TEMP_SUFFIX}"
    other = "0" * 8 if where != "0" * 8 else "1" * 8
    elsewhere = folder / f"{TEMP_PREFIX}p{pid}.{start}.{other}-{'ab' * 32}-z{TEMP_SUFFIX}"
    older_name = folder / f"{TEMP_PREFIX}{'ab' * 32}-q{TEMP_SUFFIX}"
    # An older a2m's tag (`w`, its start in clock ticks after boot): its writer is not told.
    ticks = folder / f"{TEMP_PREFIX}w{pid}.123.{where}-{'ab' * 32}-t{TEMP_SUFFIX}"
    for path in (reused, living, elsewhere, older_name, ticks):
        path.write_bytes(b"half")
    assert temp_writer_alive(reused.name) is False
    assert temp_writer_alive(living.name) is True
    assert temp_writer_alive(elsewhere.name) is None  # another machine or pid namespace
    assert temp_writer_alive(older_name.name) is None
    assert temp_writer_alive(ticks.name) is None
    assert blobs.remove_partials() == 1 and not reused.exists()
    for path in (elsewhere, older_name, ticks):
        os.utime(path, (0, 0))
    assert blobs.remove_partials() == 3
    assert _partials(blobs) == [living]


def temp_tag(tmp_path: Path) -> tuple[str, str, str]:
    """(pid, start time, place) as this process names its temp files."""
    seen: list[str] = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)

    atomic_write(tmp_path / "probe", write)
    tag = seen[0][len(TEMP_PREFIX) :].split("-", 1)[0]
    pid, start, where = tag[1:].split(".")
    assert tag[0] == "p" and int(pid) == os.getpid()
    return pid, start, where


# -- the port of the last start -----------------------------------------------------------------


def _held() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_busy_port_gives_way_to_the_last_one_used(tmp_path: Path) -> None:
    server = LocalServer(tmp_path / "labelstudio")
    with _held() as asked_sock, _held() as last_sock:
        asked = asked_sock.getsockname()[1]
        last = last_sock.getsockname()[1]
        # Never started: a free port, any.
        port, moved = server.pick_port(asked)
        assert moved == asked and port not in (asked, last)
        server.root.mkdir()
        server.port_path.write_text(f"{last}\n")
        assert server.last_port() == last
        # The last port, busy too: any free one.
        port, moved = server.pick_port(asked)
        assert moved == asked and port not in (asked, last)
    # The last port free again: taken, so the saved URL stays right.
    with _held() as asked_sock:
        asked = asked_sock.getsockname()[1]
        assert server.pick_port(asked) == (last, asked)
    # The port asked for, free: always first.
    assert server.pick_port(asked) == (asked, None)


# -- connect --token - -------------------------------------------------------------------------


def test_connect_reads_the_token_from_stdin(
    cli: CliRunner, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Secret | None] = []

    def connect(settings: Settings, **_kwargs: object) -> NoReturn:
        seen.append(settings.labelstudio.token)
        raise connection.NotConnected("stop here", "project")

    monkeypatch.setattr(connection, "connect", connect)
    result = cli.invoke(app, ["connect", "http://127.0.0.1:9", "--token", "-"], input="t0k3n\n")
    assert seen == [Secret("t0k3n")], result.output
    # Nothing on standard input: a usage error, not an empty token.
    result = cli.invoke(app, ["connect", "http://127.0.0.1:9", "--token", "-"], input="")
    assert result.exit_code == 2 and "standard input" in result.output
    assert len(seen) == 1
    # The environment variable still works, and `--token T` too.
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "from-env")
    cli.invoke(app, ["connect", "http://127.0.0.1:9"])
    cli.invoke(app, ["connect", "http://127.0.0.1:9", "--token", "t"])
    assert seen[1:] == [Secret("from-env"), Secret("t")]


@pytest.mark.parametrize(
    "args",
    [["store", "migrate-to", "-"], ["connect", "http://127.0.0.1:9", "--token", "-"]],
    ids=["database-url", "token"],
)
def test_a_secret_typed_at_a_terminal_does_not_show(workspace: Workspace, args: list[str]) -> None:
    """`-` at a terminal: what is typed is not echoed (a database URL holds its password)."""
    secret = "pw-5ecret"
    typed = f"mysql://a2m:{secret}@127.0.0.1/x" if args[0] == "store" else secret
    master, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "annotate2model", "-w", str(workspace.root), *args],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    os.close(terminal)
    try:
        # Type only once the command has turned the echo off: before, the terminal would show it.
        deadline = time.monotonic() + 60
        while termios.tcgetattr(master)[3] & termios.ECHO:
            assert proc.poll() is None and time.monotonic() < deadline, "echo never turned off"
            time.sleep(0.05)
        os.write(master, typed.encode() + b"\n")
        out, err = proc.communicate(timeout=60)
        shown = b""
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command has closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert proc.returncode != 0  # nothing listens there, nor is MySQL a store
    assert secret.encode() not in shown + out + err
    if args[0] == "store":
        assert b"SQLite or PostgreSQL" in err  # the URL was read


def test_without_a_port_asked_the_last_one_is_kept_while_it_is_free(tmp_path: Path) -> None:
    """`studio up` with no --port comes back where it was (8081 stays 8081 though 8080 is free):
    the URL saved in a2m.toml and the tab links made with it keep working."""
    server = LocalServer(tmp_path / "labelstudio")
    # Never started: Label Studio's own 8080 when it is free.
    port, moved = server.pick_port(None)
    assert (port, moved) == (DEFAULT_PORT, None) or moved == DEFAULT_PORT
    server.root.mkdir()
    with _held() as last_sock:
        last = last_sock.getsockname()[1]
    server.port_path.write_text(f"{last}\n")
    assert server.pick_port(None) == (last, None)
    with _held() as last_sock:
        last = last_sock.getsockname()[1]
        server.port_path.write_text(f"{last}\n")
        port, moved = server.pick_port(None)
        assert moved == last and port != last
        assert port == DEFAULT_PORT or not port_is_free(DEFAULT_PORT)
