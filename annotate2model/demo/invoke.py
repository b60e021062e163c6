"""How to run this install of `a2m` from a shell, for the commands the demo prints.

`pip install -e .` into a virtual environment puts the `a2m` script beside that environment's
Python, not on PATH: a printed `a2m runs` would answer "command not found", or run another
install. What is printed is `a2m` only when PATH finds this very script.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

SCRIPT = "a2m.exe" if os.name == "nt" else "a2m"


def a2m_command(
    which: Callable[[str], str | None] = shutil.which, executable: str = sys.executable
) -> str:
    """`a2m` when PATH leads to this install's script, else the script's full path (quoted for
    the shell), else `PYTHON -m annotate2model` (an install whose script lies elsewhere)."""
    here = Path(executable).parent / SCRIPT
    found = which("a2m")
    if here.is_file():
        if found and _same(Path(found), here):
            return "a2m"
        return shlex.quote(str(here))
    return f"{shlex.quote(executable)} -m annotate2model"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
