"""A local Label Studio for the workspace: start, stop, status, logs.

Data lives under `.a2m/labelstudio/` (data/, home/, server.log, server.json, port). The server
is bound to 127.0.0.1, runs SQLite, and gets a clean environment (Label Studio reads bare names
such as PORT and USERNAME and writes into $HOME). `server.json` names the process this tool
started, so `stop` never touches a server someone else runs; `port` keeps the port it last ran
on, tried again when the one asked for is busy, so its URL stays the same across restarts.

Its database holds every user's token in clear: the folders are the owner's only (0700), and the
server runs under umask 077, so what it creates is too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from annotate2model.errors import InputError, LabelStudioError
from annotate2model.fsutil import (
    PRIVATE_FILE_MODE,
    atomic_write_bytes,
    make_private,
    private_dir,
)
from annotate2model.processes import running
from annotate2model.progress import NullProgress, Progress

DEFAULT_PORT = 8080
START_TIMEOUT = 180.0
# A first start runs Label Studio's database migrations: ~30 s on an idle machine, but over
# three minutes on two busy cores. Waiting longer beats failing halfway through a demo.
FIRST_START_TIMEOUT = 600.0
_LISTENING = re.compile(r"Starting development server at http://[\d.]+:(\d+)/")
# What the server process creates (its database, uploads, logs) is its owner's only.
SERVER_UMASK = 0o077


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    pid: int | None = None
    url: str | None = None
    port: int | None = None
    # Something worth saying: a stale pid file was cleared, the server had died...
    note: str | None = None
    # The folder Label Studio may serve files from (Local Files); None: serving is off.
    files_root: str | None = None


@dataclass(frozen=True)
class StartResult:
    url: str
    pid: int
    port: int
    # False when a server of this workspace was already running (nothing was started).
    started: bool
    # The port asked for when it was busy and another one was used.
    moved_from: int | None = None
    files_root: str | None = None


def label_studio_executable() -> str:
    beside = Path(sys.executable).parent / "label-studio"
    if beside.is_file():
        return str(beside)
    found = shutil.which("label-studio")
    if found is None:
        raise LabelStudioError(
            "Label Studio is not installed here; install it with "
            "`pip install 'annotate2model[studio]'`."
        )
    return found


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server itself binds: a port held only by closed connections (TIME_WAIT) is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_environment(
    data_dir: Path, home: Path, username: str, password: str, token: str, files_root: Path | None
) -> dict[str, str]:
    """The whole environment of the server process: nothing is inherited from ours.

    Local Files serving is on only under `files_root`; without one it is off and every image
    reaches Label Studio as an upload.
    """
    serving = {
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true" if files_root else "false",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root or data_dir / "no-local-files"),
    }
    return {
        # This Python's bin folder (where label-studio lives), then the system's default path.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.defpath]),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        **serving,
        # The workspace's model server (`a2m serve`) is an ML backend on this machine's loopback,
        # which Label Studio refuses by default (its guard against requests to local addresses).
        # Registering a backend also makes a webhook to it, checked by the general guard: both go.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }


_SECRET_KEY_LINE = re.compile(r"^\s*(?:export\s+)?SECRET_KEY\s*=\s*(.*?)\s*$")


def _secret_key_value(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def _key_readable(value: str) -> bool:
    # django-environ, which Label Studio reads `.env` with, takes a value starting with `$` as
    # the name of another variable: such a key reads back empty.
    return bool(value) and not value.startswith("$")


def settle_secret_key(data_dir: Path) -> bool:
    """Make the server's `.env` end with a SECRET_KEY Label Studio can read back; True if changed.

    Label Studio signs personal access tokens with SECRET_KEY, read from `data/.env` at every
    start (its last SECRET_KEY line). Where there is none, it draws one and appends it. One key in
    fifty starts with `$`, which it reads back as empty: the next start draws another, and every
    personal access token made until then (and every login) stops working. So a2m writes a
    readable key before the first start, and replaces an unreadable one before any later start.
    """
    path = data_dir / ".env"
    try:
        # Bytes that are not UTF-8 are kept as they are (surrogateescape, both ways).
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except FileNotFoundError:
        lines = []
    keys = [
        (number, _secret_key_value(match.group(1)))
        for number, line in enumerate(lines)
        if (match := _SECRET_KEY_LINE.match(line))
    ]
    if keys and _key_readable(keys[-1][1]):
        return False
    dropped = {number for number, _ in keys}
    kept = [line for number, line in enumerate(lines) if number not in dropped]
    # token_urlsafe: letters, digits, `-` and `_`; nothing django-environ reads specially.
    kept.append(f"SECRET_KEY={secrets.token_urlsafe(50)}")
    text = "\n".join(kept) + "\n"
    atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"), mode=0o600)
    return True


class LocalServer:
    """The Label Studio process of one folder (the workspace's `.a2m/labelstudio/`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def pid_path(self) -> Path:
        return self.root / "server.json"

    @property
    def port_path(self) -> Path:
        """The port the server last answered on (kept after `stop`)."""
        return self.root / "port"

    def private_paths(self) -> list[Path]:
        """The folders and files that hold what only the owner may read (the database's tokens,
        the secret key, uploads); folders first."""
        sqlite = self.data_dir / "label_studio.sqlite3"
        return [
            self.root,
            self.data_dir,
            self.home,
            *(sqlite.with_name(sqlite.name + s) for s in ("", "-wal", "-shm", "-journal")),
            self.data_dir / ".env",
            self.log_path,
            self.pid_path,
            self.port_path,
        ]

    def last_port(self) -> int | None:
        try:
            port = int(self.port_path.read_text(encoding="ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return port if 0 < port < 65536 else None

    def pick_port(self, asked: int | None) -> tuple[int, int | None]:
        """The port to start on, and the one wanted when it was busy.

        `asked` None: the port of the last start (the URL saved in a2m.toml and open in the
        browser stays right), else DEFAULT_PORT. A busy wanted port gives way to the last one,
        then DEFAULT_PORT, then any free one."""
        last = self.last_port()
        wanted = asked if asked is not None else (last or DEFAULT_PORT)
        if port_is_free(wanted):
            return wanted, None
        for other in (last, DEFAULT_PORT):
            if other is not None and other != wanted and port_is_free(other):
                return other, wanted
        return free_port(), wanted

    def _read_pid_file(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.pid_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def status(self) -> ServerStatus:
        """Whether the server this tool started is alive; a stale pid file is cleared."""
        info = self._read_pid_file()
        if info is None:
            return ServerStatus(running=False)
        pid = info.get("pid")
        port = info.get("port")
        if not isinstance(pid, int) or not isinstance(port, int):
            self.pid_path.unlink(missing_ok=True)
            return ServerStatus(running=False, note="an unreadable pid file was removed")
        if not _is_label_studio(pid):
            self.pid_path.unlink(missing_ok=True)
            return ServerStatus(
                running=False, note=f"the server (pid {pid}) had stopped; its pid file was removed"
            )
        url = f"http://127.0.0.1:{port}"
        root = info.get("files_root")
        return ServerStatus(
            running=True,
            pid=pid,
            url=url,
            port=port,
            files_root=root if isinstance(root, str) else None,
        )

    def start(
        self,
        *,
        username: str,
        password: str,
        token: str,
        port: int | None = None,
        files_root: Path | None = None,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> StartResult:
        """Start the server (a no-op when it already runs) and wait until it answers /health.
        `port` None: the last start's port, else DEFAULT_PORT (see pick_port).

        `files_root`: the one folder whose files (and sub-folders) Label Studio may serve as Local
        Files; it must not hold this server's own data. None: Local Files serving is off.
        """
        progress = progress or NullProgress()
        current = self.status()
        if current.running and current.pid and current.port and current.url:
            return StartResult(
                url=current.url,
                pid=current.pid,
                port=current.port,
                started=False,
                files_root=current.files_root,
            )
        if files_root is not None:
            files_root = check_files_root(files_root, self.root)
        for folder in (self.root, self.data_dir, self.home):
            private_dir(folder)
        make_private(self.private_paths())
        port, moved_from = self.pick_port(port)
        first = not (self.data_dir / "label_studio.sqlite3").exists()
        settle_secret_key(self.data_dir)
        if timeout is None:
            timeout = FIRST_START_TIMEOUT if first else START_TIMEOUT
        env = server_environment(self.data_dir, self.home, username, password, token, files_root)
        command = [
            label_studio_executable(),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        log = os.fdopen(
            os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE), "ab"
        )
        log.write(f"\n--- a2m starting Label Studio on 127.0.0.1:{port}\n".encode())
        log.flush()
        offset = log.tell()
        try:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=SERVER_UMASK,
            )
        finally:
            log.close()
        progress.begin(
            "Starting Label Studio" + (" (the first start sets up its database)" if first else "")
        )
        try:
            actual = self._wait_ready(process, offset, port, timeout, progress)
        except BaseException:
            _terminate_group(process.pid)
            raise
        finally:
            progress.end()
        record = {
            "pid": process.pid,
            "port": actual,
            "started_at": time.time(),
            "files_root": str(files_root) if files_root else None,
        }
        atomic_write_bytes(self.pid_path, json.dumps(record).encode(), mode=PRIVATE_FILE_MODE)
        atomic_write_bytes(self.port_path, f"{actual}\n".encode(), mode=PRIVATE_FILE_MODE)
        if actual != port and moved_from is None:
            moved_from = port
        return StartResult(
            url=f"http://127.0.0.1:{actual}",
            pid=process.pid,
            port=actual,
            started=True,
            moved_from=moved_from,
            files_root=str(files_root) if files_root else None,
        )

    def _wait_ready(
        self,
        process: subprocess.Popen[bytes],
        offset: int,
        port: int,
        timeout: float,
        progress: Progress,
    ) -> int:
        deadline = time.monotonic() + timeout
        actual: int | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LabelStudioError(
                    f"Label Studio exited during start-up (code {process.returncode}); "
                    f"its log is {self.log_path}.",
                    hint="`a2m studio logs` shows the end of it.",
                )
            if actual is None:
                match = _LISTENING.search(self._log_since(offset))
                if match:
                    actual = int(match.group(1))
            if actual is not None:
                with contextlib.suppress(httpx.HTTPError):
                    response = httpx.get(f"http://127.0.0.1:{actual}/health", timeout=2.0)
                    if response.status_code == 200:
                        return actual
            progress.advance(0)
            time.sleep(0.25)
        raise LabelStudioError(
            f"Label Studio did not answer on port {actual or port} within {timeout:.0f} s; "
            f"see {self.log_path}."
        )

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> ServerStatus:
        """Stop the server this tool started (SIGTERM, then SIGKILL); returns what was running."""
        current = self.status()
        if not current.running or current.pid is None:
            return current
        _terminate_group(current.pid, timeout)
        self.pid_path.unlink(missing_ok=True)
        # Its workers outlive the leader by a moment, still listening: `studio down && studio up`
        # must find the port free again (the same URL), so stopping ends when they let it go.
        deadline = time.monotonic() + timeout
        while current.port and not port_is_free(current.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        return current

    def log_tail(self, lines: int = 50) -> list[str]:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[-lines:] if lines > 0 else text.splitlines()


def check_files_root(files_root: Path, server_root: Path) -> Path:
    """The resolved files root; InputError when it is missing or would expose the server's data.

    Any token holder can attach a Local Files storage anywhere under the root and read it, so the
    root must not contain Label Studio's own folder (its database holds every user's token).
    """
    root = files_root.expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"the files root {root} is not a folder.")
    data = server_root.resolve()
    if data == root or root in data.parents:
        raise InputError(
            f"the files root {root} contains {data} (Label Studio's database, this workspace's "
            "secrets), which anyone with a token could then read; choose a folder of images."
        )
    return root


def _is_label_studio(pid: int) -> bool:
    """Alive, not a zombie, and running label-studio (a pid may have been reused)."""
    return running(pid, commands=("label-studio", "label_studio")) is True


def _terminate_group(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group the server leads; SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _is_label_studio(pid):
                return
            time.sleep(0.1)
