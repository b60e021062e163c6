"""The command line's manners (issue 12): flags read as flags in help, `-w` on either side of the
command, images named as a person knows them, tables that read at 80 columns, one `error:` line
instead of a traceback, shell completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotate2model.cli.commands import COMMANDS
from annotate2model.store import Store
from annotate2model.store import versions as store_versions
from annotate2model.store.imports import import_folder
from annotate2model.workspace import Workspace, init_workspace
from tests.conftest import make_image_folder, run_cli

# Every command line that has its own help: the commands and the `studio` group's.
HELP_PAGES = [[name] for name in COMMANDS] + [
    ["studio", sub] for sub in ("up", "down", "status", "logs")
]


def test_flags_show_no_type_in_help(cli: CliRunner) -> None:
    """`--json`, not `--json <bool>`: a flag takes no value, and its help must not ask for one."""
    pages = [[], *HELP_PAGES]
    for args in pages:
        code, out, err = run_cli(cli, *args, "--help")
        assert code == 0, (args, err)
        assert "<bool>" not in out, f"a2m {' '.join(args)} --help:\n{out}"
    _, out, _ = run_cli(cli, "versions", "--help")
    json_line = next(line for line in out.splitlines() if "--json " in line and "│" in line)
    assert "Print JSON" in json_line and "<" not in json_line
    # Options that take a value still say what kind.
    _, out, _ = run_cli(cli, "diff", "--help")
    assert "<int>" in next(line for line in out.splitlines() if "--limit" in line)


def _env_without_a2m() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    env.update(NO_COLOR="1", COLUMNS="200")
    return env


def test_workspace_option_before_or_after_the_command(
    tmp_path: Path, workspace: Workspace, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`a2m -w DIR versions` and `a2m versions -w DIR` name the same workspace; the later wins."""
    first = workspace
    second, _ = init_workspace(tmp_path / "second")
    import_folder(store, make_image_folder(tmp_path / "d", {"a": 2, "b": 2}), note="only one")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no a2m.toml upwards, no A2M_HOME: only -w finds one
    runner = CliRunner()

    def notes(*args: str) -> list[str]:
        code, out, err = run_cli(runner, *args)
        assert code == 0, (args, err)
        return [v["note"] for v in json.loads(out)]

    assert notes("-w", str(first.root), "versions", "--json") == ["only one"]
    assert notes("versions", "-w", str(first.root), "--json") == ["only one"]
    assert notes("versions", "--json", "--workspace", str(first.root)) == ["only one"]
    assert notes("-w", str(first.root), "versions", "-w", str(second.root), "--json") == []
    assert notes("-w", str(second.root), "versions", "-w", str(first.root), "--json") == [
        "only one"
    ]
    # A command of a group (`studio status`) and one with arguments (`show 1`) take it as well.
    code, out, err = run_cli(runner, "show", "1", "-w", str(first.root), "--json")
    assert code == 0 and json.loads(out)["version"]["note"] == "only one", err
    code, out, err = run_cli(runner, "studio", "status", "-w", str(first.root), "--json")
    assert code == 0, err
    # Without it the command says there is no workspace (so -w above really did the work).
    code, _, err = run_cli(runner, "versions")
    assert code == 1 and "workspace" in err.lower()
    # Help shows it on the root and on every command that uses a workspace.
    for args in [[], *HELP_PAGES]:
        _, out, _ = run_cli(runner, *args, "--help")
        assert ("--workspace" in out) == (args != ["demo"]), args


def test_workspace_option_in_a_real_process(tmp_path: Path, workspace: Workspace) -> None:
    """The installed entry point (main()) parses -w after the command the same way."""
    proc = subprocess.run(
        [sys.executable, "-m", "annotate2model", "versions", "-w", str(workspace.root), "--json"],
        env=_env_without_a2m(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout) == [], proc.stderr
    # Without its value -w is a usage error whose hint names the command's own help.
    proc = subprocess.run(
        [sys.executable, "-m", "annotate2model", "versions", "-w"],
        env=_env_without_a2m(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: option '-w' requires an argument.",
        "hint: `a2m versions --help` lists the arguments and options.",
    ]


# Runs `a2m versions` through main() in a fresh process, with the store's listing replaced by a
# function that raises what the first argument names: failures no one foresaw (a bug, a full
# disk, a database locked by another program, Ctrl-C).
FAILING_A2M = """
import sqlite3, sys
from sqlalchemy.exc import OperationalError
import annotate2model.store.versions as versions

kind = sys.argv.pop(1)

def fail(*args, **kwargs):
    if kind == "KeyError":
        raise KeyError(101)
    if kind == "OSError":
        raise OSError(28, "No space left on device")
    if kind == "sqlite":
        raise OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    raise KeyboardInterrupt

versions.list_versions = fail
from annotate2model.cli.app import main
main()
"""


def _failing_a2m(kind: str, workspace: Workspace, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FAILING_A2M, kind, "versions"],
        env={**_env_without_a2m(), "A2M_HOME": str(workspace.root), **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("KeyError", "KeyError: 101"),
        ("OSError", "OSError: [Errno 28] No space left on device"),
        ("sqlite", "OperationalError: (sqlite3.OperationalError) database is locked"),
    ],
)
def test_an_unexpected_failure_is_one_line(kind: str, what: str, workspace: Workspace) -> None:
    proc = _failing_a2m(kind, workspace)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: a2m versions failed: {what} (run with A2M_TRACEBACK=1 for the traceback)."
    ]
    asked = _failing_a2m(kind, workspace, A2M_TRACEBACK="1")
    assert (
        asked.returncode == 1
        and "Traceback" in asked.stderr
        and what.split(":")[0] in (asked.stderr)
    )


def test_ctrl_c_says_interrupted(workspace: Workspace) -> None:
    proc = _failing_a2m("KeyboardInterrupt", workspace)
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "interrupted.\n")


# -- images by name, tables at 80 columns ---------------------------------------------------------

PROJECT = 7
LABEL_STUDIO = "http://127.0.0.1:8080"


def _a2m_at_80(workspace: Workspace, *args: str) -> str:
    """`a2m args...` as a person runs it in an 80-column terminal, connected to Label Studio."""
    env = _env_without_a2m()
    env.update(A2M_HOME=str(workspace.root), COLUMNS="80", LABEL_STUDIO_URL=LABEL_STUDIO)
    proc = subprocess.run(
        [sys.executable, "-m", "annotate2model", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, (args, proc.stderr)
    if "--json" in args:
        return proc.stdout
    wide = [line for line in proc.stdout.splitlines() if len(line) > 80]
    assert not wide, (args, wide)
    assert "…" not in proc.stdout, f"a2m {' '.join(args)} cut a cell:\n{proc.stdout}"
    return proc.stdout


def _column(out: str, name: str, after: str) -> str:
    """The cells of the first table's left-aligned column `name` (the one before `after`), each
    cell's lines joined: what a reader sees in that column, however it folded."""
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if name in line and after in line)
    start, end = lines[at].index(name), lines[at].index(after)
    cells = []
    for line in lines[at + 2 :]:  # past the header and its rule
        if not line.strip():
            break
        cells.append(line[start:end].strip())
    return "".join(cells)


def _sync_like(store: Store, tasks: dict[int, tuple[str, int, str]]) -> None:
    """A new version holding the latest one's rows plus images that came from Label Studio
    tasks, written as `a2m sync` writes them: the blob, its row with the task's image URL as
    origin, the task row, the version. tasks: task id -> (uploaded file name, seed, label)."""
    from datetime import UTC, datetime

    from annotate2model.store.images import record_images, stage_image
    from annotate2model.store.models import Task
    from annotate2model.store.records import VersionItemRecord
    from annotate2model.store.versions import create_version, latest_version, split_for
    from tests.conftest import image_bytes

    now = datetime.now(UTC)
    staged = {
        task: stage_image(
            store.blobs,
            image_bytes(seed),
            f"/data/upload/{PROJECT}/{seed:08x}-{name}",
            store.settings.max_image_pixels,
        )
        for task, (name, seed, _) in tasks.items()
    }
    with store.write() as session:
        record_images(session, staged.values())
        for task, image in staged.items():
            session.add(
                Task(
                    project_id=PROJECT,
                    task_id=task,
                    image_sha256=image.sha256,
                    image_url=image.origin,
                    label=tasks[task][2],
                    synced_at=now,
                )
            )
        latest = latest_version(session)
        assert latest is not None
        items = store_versions.version_items(session, latest.number)
        items += [
            VersionItemRecord(
                image.sha256, tasks[task][2], split_for(image.sha256, store.settings.split)
            )
            for task, image in staged.items()
        ]
        create_version(session, items, source="sync", note="", fractions=store.settings.split)


def test_diff_names_each_image_by_task_or_file_then_hash(
    tmp_path: Path, workspace: Workspace, store: Store
) -> None:
    import_folder(store, make_image_folder(tmp_path / "photos", {"ants": 2, "bees": 2}))
    # A label longer than any column has room for: it folds onto more lines, never "…".
    long_label = "ant_nest_under_a_stone_in_the_garden_at_noon_in_july"
    _sync_like(store, {11: ("hive at dawn.png", 900, "bees"), 12: ("nest.jpg", 901, long_label)})
    with store.read() as session:
        added = store_versions.diff_versions(session, 1, 2).added
    assert len(added) == 2
    out = _a2m_at_80(workspace, "diff", "1", "2")
    by_hash = {a.image_sha256[:10]: a for a in added}
    lines = {sha: next(ln for ln in out.splitlines() if sha in ln) for sha in by_hash}
    names = {by_hash[sha].label: line.split() for sha, line in lines.items()}
    # The task first, then the file name Label Studio was given (its upload prefix dropped).
    assert names["bees"][:5] == ["task", "11", "(hive", "at", "dawn.png)"]
    assert names[long_label][:3] == ["task", "12", "(nest.jpg)"]
    assert long_label in _column(out, "label", "split")
    assert long_label in _column(_a2m_at_80(workspace, "show"), "label", "train")
    assert f"Tasks open in Label Studio at {LABEL_STUDIO}/projects/{PROJECT}/data?task=ID" in out
    body = json.loads(_a2m_at_80(workspace, "diff", "1", "2", "--json"))
    (hive,) = [row for row in body["added"] if row["name"] == "hive at dawn.png"]
    assert hive["tasks"] == [
        {"project": PROJECT, "task": 11, "url": f"{LABEL_STUDIO}/projects/{PROJECT}/data?task=11"}
    ]
    assert hive["origin"].startswith(f"/data/upload/{PROJECT}/")
    # Imported files by their file name; the whole path stays in --json.
    (tmp_path / "photos" / "ants" / "ants_0.png").rename(tmp_path / "photos" / "bees" / "b.png")
    import_folder(store, tmp_path / "photos")
    out = _a2m_at_80(workspace, "diff", "2", "3")
    assert "ants_0.png  ants       bees" in out
    (moved,) = json.loads(_a2m_at_80(workspace, "diff", "2", "3", "--json"))["relabeled"]
    assert moved["name"] == "ants_0.png" and moved["tasks"] == []
    assert moved["origin"] == str(tmp_path / "photos" / "ants" / "ants_0.png")


@pytest.mark.training
@pytest.mark.slow
def test_every_listing_reads_whole_at_80_columns(
    tmp_path: Path, workspace: Workspace, store: Store
) -> None:
    """Two versions (the second grown by Label Studio tasks), a run of each, an evaluation,
    flags: each listing printed in an 80-column terminal cuts no header and no value."""
    from annotate2model.store.flags import NewFlag, mark_pushed, record_flags
    from annotate2model.store.models import Task
    from annotate2model.training.config import RunConfig
    from annotate2model.training.runs.runner import train

    photos = make_image_folder(tmp_path / "photos", {"ants": 12, "bees": 12})
    import_folder(store, photos, note="first cut, before the summer batch")
    _sync_like(
        store,
        {
            100 + i: (f"summer batch frame {i:04d}.jpg", 500 + i, ("ants", "bees")[i % 2])
            for i in range(12)
        },
    )
    config = RunConfig(weights="none", image_size=32, epochs=2)
    run1 = train(store, config, 1).run.id
    run2 = train(store, config, 2).run.id
    with store.write() as session:
        tasks = session.query(Task).order_by(Task.task_id).all()[:3]
        flags = record_flags(
            session,
            run2,
            [
                NewFlag(t.id, t.image_sha256 or "", "label-issue", 0.91, t.label, "bees")
                for t in tasks
            ],
        )
        mark_pushed(session, [flags[0].id], review_field="a2m_review", view_id=None)

    def header(out: str, *columns: str) -> None:
        assert any(all(c in line for c in columns) for line in out.splitlines()), (columns, out)

    out = _a2m_at_80(workspace, "versions")
    header(out, "version", "parent", "images", "created", "source", "note")
    assert "import-folder" in out and "sync" in out
    assert "summer batch" in " ".join(out.split())  # the note wraps, whole
    header(_a2m_at_80(workspace, "show"), "label", "train", "val", "test", "total")
    out = _a2m_at_80(workspace, "diff", "1", "2")
    header(out, "image", "label", "split", "hash")
    assert "task 100 (summer batch frame 0000.jpg)" in " ".join(out.split())
    out = _a2m_at_80(workspace, "runs")
    header(out, "run", "status", "model", "secs", "img/s", "val", "test", "flags")
    assert out.count("succeeded") == 2
    out = _a2m_at_80(workspace, "flags")
    header(out, "run", "image", "reason", "score", "label", "suggested", "outcome")
    # The image cell may wrap beside the others: its task, then its file name.
    assert "task 100 (summer" in out and "frame 0000.jpg)" in out and "label-issue" in out
    assert "pending" in out and "not pushed" in out
    assert f"{LABEL_STUDIO}/projects/{PROJECT}/data?task=ID" in out
    out = _a2m_at_80(workspace, "compare", "--runs", f"{run1},{run2}", "--no-plots")
    header(out, "run", "images", "val acc", "common (95% CI)", "F1", "time", "img/s")
    out = _a2m_at_80(workspace, "evaluate", str(run1), "--version", "2")
    header(out, "label", "precision", "recall", "f1", "support")
    out = _a2m_at_80(
        workspace, "curve", "2", "--fractions", "0.5,1.0", "--repeats", "1", "--no-plots"
    )
    header(out, "fraction", "train images", "mean acc", "std", "min", "max")
    out = _a2m_at_80(workspace, "predict", str(run2), str(photos / "bees"))
    header(out, "image", "prediction")
    assert "bees_11.png" in out


def test_bash_completion_installs_and_completes(tmp_path: Path) -> None:
    """`a2m --install-completion bash` writes a script that bash sources; the script completes
    commands, a group's commands, options after a command (-w too) and an option's choices."""
    a2m = Path(sys.executable).parent / "a2m"
    assert a2m.exists(), "the package's console script (pip install -e .) is needed"
    env = _env_without_a2m()
    env.update(HOME=str(tmp_path), PATH=f"{a2m.parent}{os.pathsep}{env.get('PATH', '')}")
    # typer's switch for scripts and tests: the shell is named instead of detected.
    env["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"
    proc = subprocess.run(
        ["a2m", "--install-completion", "bash"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / ".bash_completions" / "a2m.sh"
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        shell = (
            f"source {script}; COMP_WORDS=(a2m {line}); COMP_CWORD={len(words)}; "
            '_a2m_completion a2m; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(
            ["bash", "--norc", "--noprofile", "-c", shell],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.split()

    assert complete("ver") == ["versions"]
    assert complete("studio", "") == ["up", "down", "status", "logs"]
    assert {"--json", "--workspace"} <= set(complete("versions", "-"))
    assert "mobilenet_v3_large" in complete("train", "--backbone", "")


def test_log_lines_reach_stderr_and_a2m_debug_shows_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    from annotate2model.cli import app as app_module

    logger = logging.getLogger("annotate2model")
    saved = (list(logger.handlers), logger.level)
    try:
        for debug in (False, True):
            logger.handlers.clear()
            app_module._log_to_stderr(debug=debug)
            log = logging.getLogger("annotate2model.training.features.embeddings")
            log.warning("image left out; extracting the rest")
            log.debug("the reason in detail")
            err = capsys.readouterr().err
            assert "a2m WARNING annotate2model.training.features.embeddings: image left out" in err
            assert ("the reason in detail" in err) is debug
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
