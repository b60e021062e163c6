"""What `a2m demo` prints, without running the demo: commands that run as printed, lines that fit
80 columns without cutting a value, where its folder goes, and what it says while Label Studio
starts."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from annotate2model.cli.demo import WIDTH, fill, next_lines
from annotate2model.demo.invoke import a2m_command
from annotate2model.demo.tour import StudioWait, default_folder, studio_phase

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"


def _script(folder: Path) -> Path:
    script = folder / "a2m"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("#!/bin/sh\n")
    return script


def test_a2m_is_printed_bare_only_when_path_finds_this_install(tmp_path: Path) -> None:
    ours = _script(tmp_path / "venv" / "bin")
    python = str(tmp_path / "venv" / "bin" / "python")
    assert a2m_command(lambda _: str(ours), python) == "a2m"
    # Not on PATH (a venv not activated), or PATH finds another install: the full path.
    assert a2m_command(lambda _: None, python) == str(ours)
    other = _script(tmp_path / "elsewhere")
    assert a2m_command(lambda _: str(other), python) == str(ours)
    # A path with a space is quoted for the shell.
    spaced = _script(tmp_path / "my venv" / "bin")
    assert a2m_command(lambda _: None, str(spaced.parent / "python")) == shlex.quote(str(spaced))
    # No script beside the interpreter: the module, through that interpreter.
    bare = str(tmp_path / "bare" / "python")
    assert a2m_command(lambda _: str(other), bare) == f"{bare} -m annotate2model"


@pytest.mark.skipif(not (VENV / "bin" / "activate").is_file(), reason="no .venv")
def test_readme_setup_leaves_a2m_working_and_the_demo_prints_it_runnable() -> None:
    """README command 1 activates .venv in the user's shell; after it, `a2m` runs and the demo
    prints it bare. Without it (PATH as a fresh shell has it), the demo prints a command that
    runs too."""
    readme = (ROOT / "README.md").read_text()
    setup = next(line for line in readme.splitlines() if line.startswith("python3 -m venv .venv"))
    steps = setup.split(" && ")
    assert ". .venv/bin/activate" in steps and steps[-1] == "a2m demo"
    assert steps.index(". .venv/bin/activate") < steps.index("a2m demo")
    # The steps after the activation, but the install (done) and the demo (too slow here).
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/bin:/bin"
    shown = "from annotate2model.demo.invoke import a2m_command; print(a2m_command())"
    done = subprocess.run(
        ["bash", "-c", f". .venv/bin/activate && a2m --help >/dev/null && python -c '{shown}'"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "a2m"
    # Not activated: the full path, which runs as printed.
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", shown], env=env, capture_output=True, text=True
    )
    printed = done.stdout.strip()
    assert printed == shlex.quote(str(VENV / "bin" / "a2m"))
    ran = subprocess.run(
        ["bash", "-c", f"{printed} --help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0 and "demo" in ran.stdout


def test_next_lines_are_whole_commands_that_fit_80_columns(tmp_path: Path) -> None:
    root = tmp_path / "a2m-demo"
    lines = next_lines("a2m", root, again=False)
    assert lines[0].startswith("Next")
    commands = [line.split("#")[0].strip() for line in lines[1:]]
    assert commands == [
        f"cd {root}",
        "a2m runs",
        "a2m flags",
        "a2m loop",
        "a2m studio down",
    ]
    assert all(len(line) <= WIDTH for line in lines)
    assert sum("# " in line for line in lines) == 4
    # A long invocation: still one whole command a line, each comment on a line of its own.
    long = "/srv/someone/projects/annotate2model/.venv/bin/a2m"
    lines = next_lines(long, root, again=True)
    commands = [line.strip() for line in lines[1:] if line.startswith("  ") and "#" not in line]
    assert commands == [
        f"cd {root}",
        f"{long} runs",
        f"{long} flags",
        f"{long} loop",
        f"{long} studio down",
        f"{long} demo {root}-2",
    ]
    assert sum(line.startswith("  # ") for line in lines) == 4
    # Only a command longer than the width itself goes past it.
    assert all(len(line) <= WIDTH or "#" not in line for line in lines)


def test_fill_wraps_at_spaces_and_never_cuts_a_value() -> None:
    names = [f"images/batch-{b}/not_stop/stop_{i:04d}.jpg" for b in (1, 2) for i in range(5)]
    text = "Not flagged: " + ", ".join(names) + ". val_acc=0.774"
    out = fill(text, WIDTH, rest="  ")
    lines = out.splitlines()
    assert len(lines) > 1 and all(len(line) <= WIDTH for line in lines)
    words = out.split()
    assert all(f"{name}," in words or f"{name}." in words for name in names)
    assert "val_acc=0.774" in words
    # A word longer than the width stays whole, on a line of its own.
    url = "http://127.0.0.1:8080/" + "x" * 100
    assert url in fill(f"Open {url} now", WIDTH).splitlines()


def test_the_demo_folder_defaults_to_the_home_folder_not_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    assert default_folder() == tmp_path / "home" / "a2m-demo"
    assert ROOT not in default_folder().parents


def test_a2m_demo_without_a_folder_works_in_the_home_folder_and_says_so(tmp_path: Path) -> None:
    """Run from the repository with no folder, the demo goes to ~/a2m-demo (here a folder that
    holds something else, so it stops at once, naming it)."""
    home = tmp_path / "home"
    busy = home / "a2m-demo"
    busy.mkdir(parents=True)
    (busy / "notes.txt").write_text("mine")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}
    env["HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-m", "annotate2model", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"The demo's workspace: {busy}" in " ".join(done.stdout.split())
    assert str(busy) in done.stderr and "not empty and holds no demo" in done.stderr
    assert list(busy.iterdir()) == [busy / "notes.txt"]


MARK = "\n--- a2m starting Label Studio on 127.0.0.1:8080\n"


def test_studio_phase_reads_what_label_studio_is_doing_from_its_last_start() -> None:
    earlier = MARK + "Initializing database..\nStarting development server at http://x:1/\n"
    assert studio_phase(earlier + MARK) == "starting its process"
    assert studio_phase(earlier + MARK + "=> Database and media directory: /d\n") == (
        "loading Label Studio"
    )
    assert studio_phase(earlier + MARK + "Initializing database..\n") == "setting up its database"
    assert studio_phase(earlier) == "waiting for it to answer"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def begin(self, description: str, total: float | None = None) -> None:
        self.calls.append(("begin", description))

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        self.calls.append(("advance", status))

    def end(self) -> None:
        self.calls.append(("end", None))

    def note(self, message: str) -> None:
        self.calls.append(("note", message))


def test_waiting_for_label_studio_shows_the_step_and_the_time_so_far(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(MARK + "Initializing database..\n")
    now = [100.0]
    inner, heard = Recorder(), []
    wait = StudioWait(inner, log, heard.append, every=15.0, clock=lambda: now[0])
    wait.begin("Starting Label Studio (the first start sets up its database, ~30 s)")
    for _ in range(4):
        now[0] += 10.0
        wait.advance(0)
    wait.end()
    # No promised duration in the stage's name.
    assert inner.calls[0] == ("begin", "Starting Label Studio")
    statuses = [s for kind, s in inner.calls if kind == "advance"]
    assert statuses[:4] == [f"setting up its database, {t} s so far" for t in (10, 20, 30, 40)]
    # The stage's closing line gives its own time: no stale "so far" is left in it.
    assert statuses[-1] == "" and inner.calls[-1] == ("end", None)
    # Output that is not redrawn hears it every 15 s.
    assert heard == [
        "Still starting Label Studio: setting up its database, 20 s so far.",
        "Still starting Label Studio: setting up its database, 40 s so far.",
    ]


def test_hints_name_a2m_as_it_runs_from_this_shell(tmp_path: Path) -> None:
    """Issue 25: a hint's `a2m ...` ran as "command not found" where the virtual environment was
    not activated. It names this install's script then, and as printed, it runs."""
    from annotate2model.workspace import init_workspace

    ws, _ = init_workspace(tmp_path / "ws")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}
    env.update(A2M_HOME=str(ws.root), PATH="/usr/bin:/bin", COLUMNS="400")

    def failed_sync_hint() -> str:
        done = subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "annotate2model", "sync"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0
        return next(line for line in done.stderr.splitlines() if line.startswith("hint:"))

    hint = failed_sync_hint()
    script = shlex.quote(str(VENV / "bin" / "a2m"))
    assert f"`{script} studio up`" in hint, hint
    assert "`a2m " not in hint
    # The command in the hint runs as printed (its --help, so that nothing starts).
    command = hint.split("`")[1]
    ran = subprocess.run(
        ["bash", "-c", f"{command} --help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0 and "Label Studio" in ran.stdout
    # With this install on PATH, hints say `a2m`.
    env["PATH"] = f"{VENV / 'bin'}:/usr/bin:/bin"
    assert "`a2m studio up`" in failed_sync_hint()
