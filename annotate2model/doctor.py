"""`a2m doctor`: what this machine and workspace can do, as a list of checks.

Each check says what it found and, for a problem, the command (or the step) that fixes it. The
slow ones (the weights' download host, the Label Studio server) run side by side with bounded
timeouts, so the whole doctor takes a few seconds even offline. No check shows a token.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from annotate2model.errors import A2MError
from annotate2model.settings import Settings
from annotate2model.workspace import DATA_DIR_NAME

Status = Literal["ok", "warn", "fail"]

# Below this much free disk beside the blob store, a sync of a few thousand photos may not fit.
LOW_DISK_BYTES = 1 << 30
# Seconds each network check may take (the weights' host, the Label Studio server).
NETWORK_TIMEOUT = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    # "ok"; "warn": works, with a limit worth knowing; "fail": does not work.
    status: Status
    detail: str
    # For a problem: the command (or step) that fixes it.
    fix: str | None = None
    # A required check that fails makes `a2m doctor` exit non-zero.
    required: bool = True

    @property
    def ok(self) -> bool:
        return self.status != "fail"


def _package(name: str, why: str, fix: str, required: bool = True) -> Check:
    try:
        return Check(name, "ok", importlib.metadata.version(name), required=required)
    except importlib.metadata.PackageNotFoundError:
        status: Status = "fail" if required else "warn"
        return Check(name, status, f"not installed ({why})", fix=fix, required=required)


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _torch() -> list[Check]:
    try:
        import torch
    except ImportError as exc:
        return [
            Check("torch", "fail", f"cannot import: {exc}", fix="pip install torch torchvision")
        ]
    checks = [Check("torch", "ok", f"{torch.__version__}, {torch.get_num_threads()} CPU threads")]
    devices: list[str] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(i)
            try:
                free, total = torch.cuda.mem_get_info(i)
                devices.append(f"cuda:{i} {name}, {_gib(free)} free of {_gib(total)}")
            except RuntimeError as exc:
                devices.append(f"cuda:{i} {name} (memory unknown: {exc})")
    if torch.backends.mps.is_available():
        recommended = getattr(torch.mps, "recommended_max_memory", None)
        devices.append(f"mps, {_gib(recommended())} usable" if recommended else "mps")
    if devices:
        checks.append(Check("devices", "ok", "; ".join(devices) + "; cpu"))
    else:
        checks.append(
            Check(
                "devices",
                "ok",
                f"cpu only ({torch.get_num_threads()} threads): probes train in seconds to "
                "minutes, fine-tuning is slow",
            )
        )
    return checks


def _default_backbone(settings: Settings | None) -> str:
    """The backbone `a2m loop` trains next: the latest succeeded run's when it used ImageNet
    weights, else the run configuration's default."""
    from annotate2model.training.config import RunConfig

    default = RunConfig().backbone
    if settings is None:
        return default
    try:
        from annotate2model.store import Store
        from annotate2model.store.runs import list_runs

        store = Store.open(settings, migrate=False)
        try:
            with store.read() as session:
                runs = list_runs(session)
        finally:
            store.close()
    except A2MError:
        return default
    trained = [r for r in runs if r.kind == "train" and r.status == "succeeded"]
    if trained and trained[-1].config.get("weights", "imagenet") == "imagenet":
        return str(trained[-1].config.get("backbone") or default)
    return default


def _weights(backbone: str, timeout: float) -> Check:
    from annotate2model.training.features.weights import imagenet_weights_status

    name = f"weights ({backbone})"
    try:
        status = imagenet_weights_status(backbone, timeout=timeout)
    except A2MError as exc:
        return Check(name, "warn", exc.message, required=False)
    except ImportError as exc:
        return Check(name, "warn", f"torch hub is missing: {exc}", required=False)
    if status.state == "cached":
        return Check(name, "ok", f"ImageNet weights cached: {status.detail}", required=False)
    if status.state == "downloadable":
        return Check(name, "ok", f"ImageNet weights {status.detail}", required=False)
    return Check(
        name,
        "warn",
        f"ImageNet weights not cached and not downloadable: offline ({status.detail}). "
        "`a2m demo` falls back to probes on a random network's features; `a2m train` stops "
        "before the run unless given a local state_dict file or random weights (which learn far "
        "less from few images)",
        fix=f"a2m train --weights FILE (or --weights none), or copy {status.checkpoint.name} "
        f"into {status.checkpoint.parent} from a machine online",
        required=False,
    )


def _workspace(settings: Settings) -> list[Check]:
    from annotate2model.store import Store
    from annotate2model.store.db import SCHEMA_HEAD
    from annotate2model.store.dialect import redacted_url

    ws = settings.workspace
    checks = [Check("workspace", "ok", str(ws.root))]
    default_sqlite = settings.database_url == f"sqlite:///{ws.store_path}"
    if default_sqlite and not ws.store_path.exists():
        checks.append(
            Check(
                "store",
                "fail",
                f"no store yet at {ws.store_path} (code schema {SCHEMA_HEAD})",
                fix=f"a2m init {ws.root}",
            )
        )
        return checks
    where = "SQLite in .a2m/" if default_sqlite else redacted_url(settings.database_url)
    try:
        store = Store.open(settings, migrate=False)
    except A2MError as exc:
        checks.append(Check("store", "fail", f"{where}: {exc.message}", fix=f"a2m init {ws.root}"))
        return checks
    try:
        revision = store.current_revision()
    finally:
        store.close()
    checks.append(Check("store", "ok", f"{where}, schema {revision} (code: {SCHEMA_HEAD})"))
    return checks


def _disk(settings: Settings) -> Check:
    ws = settings.workspace
    folder = ws.data_dir if ws.data_dir.is_dir() else ws.root
    try:
        usage = shutil.disk_usage(folder)
    except OSError as exc:
        return Check("disk", "warn", f"cannot read free space of {folder}: {exc.strerror}")
    detail = f"{_gib(usage.free)} free of {_gib(usage.total)} for the blob store ({folder})"
    if usage.free < LOW_DISK_BYTES:
        return Check(
            "disk",
            "warn",
            detail + "; images, runs and the embedding cache may not fit",
            fix=f"free space on the disk of {folder}, or move the workspace",
            required=False,
        )
    return Check("disk", "ok", detail, required=False)


def _permissions(settings: Settings) -> Check:
    """Whether other users of this machine can open the workspace's secrets: the tokens in
    secrets.toml and in the local Label Studio's database, the store, the images."""
    ws = settings.workspace
    name = "permissions"

    def shown(paths: Iterable[Path]) -> str:
        return ", ".join(str(p.relative_to(ws.root)) for p in paths)

    still = ws.exposed()
    if still:
        quoted = " ".join(shlex.quote(str(p)) for p in still)
        return Check(
            name,
            "fail",
            f"other users of this machine can open {shown(still)}: the Label Studio tokens, "
            "the store and the images are in there",
            fix=f"chmod go-rwx {quoted} (any a2m command its owner runs here does it)",
        )
    if ws.repaired:
        return Check(
            name,
            "warn",
            f"{shown(ws.repaired)} could be opened by other users of this machine: made private "
            "now (folders 0700, files 0600)",
            fix="if someone may have read a token, make a new one in Label Studio (Account & "
            "Settings) and run `a2m connect --token -`",
            required=False,
        )
    return Check(name, "ok", f"{DATA_DIR_NAME}/ and its secrets are only yours (0700, 0600)")


def _label_studio(settings: Settings, timeout: float) -> Check:
    from annotate2model.errors import LabelStudioError
    from annotate2model.labelstudio import connection
    from annotate2model.labelstudio.client import (
        LabelStudioClient,
        ServerUnreachable,
        TokenRejected,
    )

    name = "label studio"
    ls = settings.labelstudio
    if not ls.url:
        return Check(
            name,
            "warn",
            "not connected (only needed for collect, sync and flags)",
            fix="a2m studio up (a local server), or a2m connect URL --token - --project ID",
            required=False,
        )
    local = connection.is_local_server(settings)
    if ls.token is None:
        return Check(
            name,
            "fail",
            f"{ls.url}: no token saved",
            fix="a2m studio up" if local else f"a2m connect {ls.url} --token -",
        )
    client = LabelStudioClient(ls.url, ls.token, timeout=timeout, attempts=1, backoff=0.1)
    with client:
        try:
            client.health()
        except ServerUnreachable as exc:
            return Check(
                name,
                "fail",
                f"not reachable at {ls.url} ({exc.why})",
                fix="a2m studio up"
                if local
                else f"start the server at {ls.url}, or a2m connect URL --token -",
            )
        except LabelStudioError as exc:
            return Check(name, "fail", exc.message, fix="a2m connect URL --token -")
        try:
            user = client.check()
            version = client.version()
        except TokenRejected as exc:
            # The message names the server and the kind of token, never the token.
            return Check(name, "fail", exc.message, fix=f"a2m connect {ls.url} --token -")
        who = f"{user.get('email') or 'a user'} ({client.kind} token)"
        server = f"Label Studio {version}" if version else "Label Studio"
        where = f"{server} at {ls.url}" + (" (this workspace's)" if local else "")
        if ls.project_id is None:
            return Check(
                name,
                "warn",
                f"{where}, token of {who}; no project chosen",
                fix="a2m connect --project ID, or a2m connect --create TITLE --labels a,b",
                required=False,
            )
        try:
            project = client.project(ls.project_id)
        except LabelStudioError as exc:
            return Check(
                name,
                "fail",
                f"{where}, token of {who}; {exc.message}",
                fix="a2m connect --project ID, or a2m connect --create TITLE --labels a,b",
            )
    return Check(
        name,
        "ok",
        f"{where}, token of {who}; project {project.id} “{project.title}” "
        f"({project.task_count} tasks)",
    )


def _python() -> Check:
    # An interpreter older than pyproject's requires-python never gets this far.
    return Check("python", "ok", f"{platform.python_version()} ({sys.executable})")


def run_checks(
    settings: Settings | None,
    *,
    workspace_problem: A2MError | None = None,
    timeout: float = NETWORK_TIMEOUT,
    started: Callable[[str], None] | None = None,
    done: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Every check, in the order shown. `settings` None: no usable workspace, and
    `workspace_problem` says why (none found, or a2m.toml not readable).

    `started(what)` is told what the doctor waits on next ("importing torch"), `done(check)` each
    check as soon as it is known, in the order of the list: the command shows them as they come
    instead of keeping silent for the seconds torch and the network take.

    The network waits overlap: Label Studio is asked while torch loads and the store is read,
    the weights' host once torch is loaded (its hub knows the cache folder). Modules load on
    this thread only: two threads importing torch at once break its import.
    """
    from annotate2model.labelstudio import (
        client,  # noqa: F401
        connection,  # noqa: F401 - loaded here, used there
    )

    checks: list[Check] = []

    def step(what: str) -> None:
        if started is not None:
            started(what)

    def add(*found: Check) -> None:
        for check in found:
            checks.append(check)
            if done is not None:
                done(check)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="a2m-doctor") as pool:
        studio = pool.submit(_label_studio, settings, timeout) if settings is not None else None
        add(_python())
        step("importing torch")
        add(*_torch())
        add(_package("torchvision", "needed for backbones", "pip install torchvision"))
        add(
            _package(
                "label-studio",
                "only needed to run a local server",
                "pip install 'annotate2model[studio]'",
                required=False,
            )
        )
        step("reading the workspace")
        workspace = _workspace(settings) if settings is not None else []
        import annotate2model.training.config  # noqa: F401

        backbone = _default_backbone(settings)
        weights = pool.submit(_weights, backbone, timeout)
        if settings is None:
            problem = workspace_problem
            detail = problem.message if problem else "none found here or above"
            fix = problem.hint if problem and problem.hint else "a2m init"
            workspace = [Check("workspace", "fail", detail, fix=fix)]
        else:
            workspace.append(_permissions(settings))
            workspace.append(_disk(settings))
        step(f"looking for the {backbone} weights (their download host: up to {timeout:g} s)")
        add(_guarded("weights", weights.result))
        add(*workspace)
        if studio is not None:
            step(f"asking Label Studio (up to {timeout:g} s)")
            add(_guarded("label studio", studio.result))
    return checks


def _guarded(name: str, result: Callable[[], Check]) -> Check:
    """A check whose own failure (an unexpected answer) is shown as its result, not a crash."""
    try:
        return result()
    except A2MError as exc:
        return Check(name, "fail", exc.message, fix=exc.hint)


def failed(checks: list[Check]) -> list[Check]:
    """The required checks that failed (a non-zero exit)."""
    return [c for c in checks if c.required and c.status == "fail"]
