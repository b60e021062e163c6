"""`a2m doctor`: what this machine and workspace can do, as a list of checks."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from dataclasses import dataclass

from annotate2model.errors import A2MError
from annotate2model.settings import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    # A failed required check makes `a2m doctor` exit non-zero.
    required: bool = True


def _package(name: str, required: bool, why: str) -> Check:
    try:
        return Check(name, True, importlib.metadata.version(name), required)
    except importlib.metadata.PackageNotFoundError:
        return Check(name, False, f"not installed ({why})", required)


def _torch() -> list[Check]:
    try:
        import torch
    except ImportError as exc:
        return [Check("torch", False, f"cannot import: {exc}")]
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [
            f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
        ]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return [
        Check("torch", True, f"{torch.__version__}, {torch.get_num_threads()} threads"),
        Check("devices", True, ", ".join(devices)),
    ]


def run_checks(settings: Settings | None) -> list[Check]:
    checks = [Check("python", sys.version_info >= (3, 10), platform.python_version())]
    checks += _torch()
    checks.append(_package("torchvision", True, "needed for backbones"))
    checks.append(_package("label-studio-sdk", True, "needed for sync"))
    checks.append(
        _package("label-studio", False, "pip install 'annotate2model[studio]' for a2m studio up")
    )
    if settings is None:
        checks.append(Check("workspace", False, "none found; run `a2m init`"))
        return checks
    from annotate2model.store import Store

    checks.append(Check("workspace", True, str(settings.workspace.root)))
    try:
        store = Store.open(settings, migrate=False)
        checks.append(
            Check("store", True, f"{settings.database_url} at {store.current_revision()}")
        )
        store.close()
    except A2MError as exc:
        checks.append(Check("store", False, f"{exc.message} {exc.hint or ''}".strip()))
    ls = settings.labelstudio
    detail = f"{ls.url} project {ls.project_id}" if ls.url else "not connected (a2m connect)"
    checks.append(Check("label studio", bool(ls.url), detail, required=False))
    return checks
