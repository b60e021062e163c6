"""Where the shared data sets and weights are: `<project>/../shared`, or $A2M_SHARED_DIR.

The one place that tests and benchmarks find them. They are not part of the project (see
DESIGN.md, "Pretrained weights"), so nothing names a machine's absolute path: a checkout whose
parent folder holds `shared/` finds it, any other sets A2M_SHARED_DIR.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "A2M_SHARED_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = PROJECT_ROOT.parent / "shared"


def shared_dir(env: Mapping[str, str] = os.environ) -> Path:
    """$A2M_SHARED_DIR when set, else the `shared` folder beside the project's folder."""
    value = env.get(ENV_VAR, "").strip()
    return Path(value).expanduser().resolve() if value else DEFAULT_SHARED


SHARED = shared_dir()
# Read once, at import: tests clear A2M_* variables around each test.
_FROM_ENV = bool(os.environ.get(ENV_VAR, "").strip())
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"
SCENES_1200 = SHARED / "datasets" / "scenes_1200"
SCENES_WEIGHTS = SHARED / "weights" / "resnet18-scenes.pth"


def missing_message(path: Path, what: str) -> str:
    """What is missing, where it was looked for, and the two ways to provide it."""
    source = f"from {ENV_VAR}" if _FROM_ENV else f"{ENV_VAR} is not set"
    return (
        f"{what} is missing: {path} does not exist (shared folder {SHARED}, {source}). "
        f"Put the shared folder at {DEFAULT_SHARED} or set {ENV_VAR} to the folder that holds "
        "datasets/ and weights/."
    )


def require(path: Path, what: str) -> Path:
    """`path` if it exists; otherwise a benchmark stops with `missing_message`."""
    if not path.exists():
        raise SystemExit(missing_message(path, what))
    return path


def run_as_installed() -> None:
    """Make this benchmark's a2m processes load annotate2model as an installed copy does.

    pip compiles an installed package's modules to bytecode, and Python keeps the bytecode of
    what it compiles later; a checkout run with PYTHONDONTWRITEBYTECODE set (as some sandboxes
    and containers do) instead compiles annotate2model's modules again in every process (30 ms
    of `a2m versions` here, more for commands that load more of them). Benchmarks call this
    first: the package is compiled once, and the processes they start (both sides of every
    ratio) may keep bytecode as a user's do.
    """
    import compileall

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    compileall.compile_dir(PROJECT_ROOT / "annotate2model", quiet=1)
