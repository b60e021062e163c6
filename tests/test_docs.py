"""The README and docs/ say what the code does: every command is documented, every help carries an
example, the generated reference pages are what the generator prints now, the settings table is
what `load_settings` does, and every page the README or docs link to exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from annotate2model import reference
from annotate2model.cli.app import app
from annotate2model.settings import Secret, load_settings
from annotate2model.training.config import RunConfig
from annotate2model.workspace import Workspace, init_workspace

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
REGENERATE = f"run `{reference.REGENERATE}` (from the project's root) and commit the result"


def all_commands() -> dict[str, Any]:
    """Command name -> click command, sub-commands as "group name" (e.g. "studio up")."""
    root: Any = typer.main.get_command(app)
    found: dict[str, Any] = {}
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):
            for sub_name, sub in cmd.commands.items():
                found[f"{name} {sub_name}"] = sub
        else:
            found[name] = cmd
    return found


def test_every_command_is_in_the_readme() -> None:
    missing = [name for name in all_commands() if f"a2m {name}" not in README]
    assert missing == []


def test_every_command_has_an_example() -> None:
    missing = [name for name, cmd in all_commands().items() if "Example:" not in (cmd.help or "")]
    assert missing == []


def test_readme_has_the_two_commands_and_ci_runs_the_test_one() -> None:
    # It activates .venv in the user's shell: `a2m` works there after the demo, as the demo's
    # own "Next:" lines and the README's later commands take for granted.
    setup = (
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[studio]' && a2m demo"
    )
    assert setup in README
    assert "bash tests/run.sh" in README
    # Both within the first screen (about 40 lines), before any other code block.
    first_screen = "\n".join(README.splitlines()[:40])
    assert setup in first_screen and "bash tests/run.sh" in first_screen
    ci = (ROOT / ".ci" / "run").read_text()
    assert "tests/run.sh" in ci


@pytest.mark.parametrize("page", reference.PAGES)
def test_generated_pages_are_current(page: str) -> None:
    path = DOCS / f"{page}.md"
    assert path.exists(), f"docs/{page}.md is missing: {REGENERATE}."
    assert path.read_text(encoding="utf-8") == reference.page(page), (
        f"docs/{page}.md is stale (the CLI's help or the code changed since it was written): "
        f"{REGENERATE}."
    )


def test_command_reference_has_every_command_with_its_options() -> None:
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    missing = [name for name in all_commands() if f"## `a2m {name}`" not in text]
    assert missing == [], f"commands missing from docs/commands.md: {REGENERATE}."
    # Each option of a command is in its section (the table is built from the parameters).
    train = text.split("## `a2m train`")[1].split("\n## ")[0]
    for flag in ("--epochs", "--lr", "--mode", "--weights", "--class-weights / --no-class-weights"):
        assert f"`{flag}" in train


def test_config_reference_covers_every_field_and_train_flag() -> None:
    rows = {
        name: (flag, default, meaning) for name, flag, default, meaning in reference.config_rows()
    }
    assert set(rows) == set(RunConfig.__dataclass_fields__)
    # Every field has a meaning, read from the comment above it in training/config.py.
    assert [name for name, (_, _, meaning) in rows.items() if not meaning] == []
    assert rows["epochs"][0] == "--epochs"
    assert rows["epochs"][1] == "finetune: 5 (probes: unused)"
    assert rows["batch_size"][1] == "32"
    # Every `a2m train` option that sets a field is in the table (the others: --version, ...).
    flags = reference.train_flags()
    not_fields = {"version", "device", "as_json", "workspace", "track", "gpus"}
    assert set(flags) - not_fields <= set(rows)


def _settings(ws: Workspace, env: dict[str, str]) -> Any:
    return load_settings(ws, env)


def _attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# A value to set for each setting the table ties to a Settings attribute, and what it becomes.
SAMPLES: dict[str, tuple[str, Any]] = {
    "database_url": ("sqlite:////elsewhere/a2m.db", "sqlite:////elsewhere/a2m.db"),
    "max_image_pixels": ("1000", 1000),
    "labelstudio.url": ("http://ls.example:8080", "http://ls.example:8080"),
    "labelstudio.project_id": ("7", 7),
    "labelstudio.token": ("t0ken", Secret("t0ken")),
    "device": ("cpu", "cpu"),
    "serve_image_hosts": ("img.example, cdn.example:8443", ("img.example", "cdn.example:8443")),
    "mlflow_uri": ("http://mlflow.example:5000", "http://mlflow.example:5000"),
    "mlflow_experiment": ("signs", "signs"),
}


def test_settings_table_is_what_load_settings_does(tmp_path: Path) -> None:
    ws, _ = init_workspace(tmp_path / "ws")
    rows = [row for row in reference.SETTINGS if row.attribute and row.attribute != "split"]
    assert {row.attribute for row in rows} == set(SAMPLES)
    for row in rows:
        raw, expected = SAMPLES[row.attribute]
        if row.env != "-":
            assert _attr(_settings(ws, {row.env: raw}), row.attribute) == expected, row.env
        match = re.fullmatch(r"\[(\w+)\] (\w+)", row.toml)
        if match:
            section, key = match.groups()
            value: Any = int(raw) if isinstance(expected, int) else raw
            ws.update_config(section, {key: value})
            assert _attr(_settings(ws, {}), row.attribute) == expected, row.toml
            ws.update_config(section, {key: None})
    # The split row: three keys under [split].
    ws.update_config("split", {"train": 0.5, "val": 0.25, "test": 0.25})
    assert _settings(ws, {}).split.as_dict() == {"train": 0.5, "val": 0.25, "test": 0.25}


def test_settings_table_names_every_environment_variable() -> None:
    package = ROOT / "annotate2model"
    used = set()
    for path in package.rglob("*.py"):
        if path.parent.name == "labelstudio" and path.name == "server.py":
            continue  # the variables a2m sets for the Label Studio server it starts
        used |= set(re.findall(r"\"((?:A2M|LABEL_STUDIO)_[A-Z_]+)\"", path.read_text()))
    documented = {row.env for row in reference.SETTINGS}
    assert used - documented == set()


def test_links_between_pages_resolve() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_docs_pages_the_readme_promises_exist() -> None:
    for name in ("tutorial", "commands", "layout", "config", "flags", "finetune"):
        assert (DOCS / f"{name}.md").exists(), name
        assert f"docs/{name}.md" in README, name


def test_docs_mention_only_commands_that_exist() -> None:
    """`a2m word` in inline code or at the start of a line names a real command (a renamed one
    would linger in the prose); `a2m review` (and the older `a2m run 2`, `a2m run N`) are Label
    Studio tab titles."""
    known = {name.split()[0] for name in all_commands()}
    mention = re.compile(r"(?:^|`)a2m (?!run (?:\d|N)\b|review`)([a-z][a-z-]*)", re.M)
    wrong = []
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for word in mention.findall(page.read_text(encoding="utf-8")):
            if word not in known:
                wrong.append(f"{page.name}: a2m {word}")
    assert wrong == []
