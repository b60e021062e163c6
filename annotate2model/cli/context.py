"""What every command shares: the workspace flag, the settings built once, the opened store, and
the `--track` flag of the commands that mirror to MLflow."""

from __future__ import annotations

import functools
import gc
import os
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.main

from annotate2model.settings import DEFAULT_MAX_IMAGE_PIXELS, Settings, load_settings
from annotate2model.workspace import Workspace, find_workspace

if TYPE_CHECKING:
    # SQLAlchemy loads with the store, when a command first asks for it (not for --help).
    from annotate2model.store import Store


@dataclass
class AppState:
    workspace_flag: Path | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    # `--track mlflow` or `--track none`, where the command line gave it.
    track: str | None = None
    _settings: Settings | None = None
    _store: Store | None = None
    _told_default_uri: bool = False

    def workspace(self) -> Workspace:
        return find_workspace(self.workspace_flag, self.env.get("A2M_HOME"), Path.cwd())

    def settings(self, **overrides: Any) -> Settings:
        """The one Settings object: flags (overrides) > environment > a2m.toml > defaults."""
        if self._settings is None or overrides:
            self._settings = load_settings(
                self.workspace(), self.env, {"track": self.track, **overrides}
            )
            self._tell_default_uri(self._settings)
            if self._settings.max_image_pixels > DEFAULT_MAX_IMAGE_PIXELS:
                # The workspace accepts larger images than Pillow opens by default; this process
                # is the CLI's own, so Pillow's process-wide guard is raised to match.
                from annotate2model.imaging import allow_pixels_process_wide

                allow_pixels_process_wide(self._settings.max_image_pixels)
        return self._settings

    def _tell_default_uri(self, settings: Settings) -> None:
        """`--track mlflow` where nothing names a tracking server: say once where runs go."""
        # Once per command: under torchrun, by rank 0 only.
        if self.track != "mlflow" or self._told_default_uri or os.environ.get("RANK", "0") != "0":
            return
        from annotate2model import tracking

        if settings.mlflow_uri == tracking.default_uri(settings.workspace.root):
            from annotate2model.cli.render import err_console

            self._told_default_uri = True
            err_console.print(
                f"MLflow: no tracking server is set (MLFLOW_TRACKING_URI, \\[tracking] "
                f"mlflow_uri): logging to MLflow's local store {settings.mlflow_uri}; "
                "`mlflow ui` in the workspace folder shows it.",
                highlight=False,
                soft_wrap=True,
            )

    def store(self, **overrides: Any) -> Store:
        if self._store is None or overrides:
            from annotate2model.store import Store
            from annotate2model.store.runs import close_dead

            self.close()
            self._store = Store.open(self.settings(**overrides))
            # A training killed with -9 shows as failed in whatever command comes next.
            close_dead(self._store)
        return self._store

    def close(self) -> None:
        """Close the store, if a command opened it (when the command line's context ends)."""
        if self._store is not None:
            self._store.close()
            self._store = None


def state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
        root.call_on_close(root.obj.close)
    return root.obj


def _remember_workspace(ctx: typer.Context, value: Path | None) -> None:
    if value is not None:
        state(ctx).workspace_flag = value


# `-w/--workspace`, taken before the command (`a2m -w DIR versions`) or after it (`a2m versions
# -w DIR`); given twice, the later one counts. Read at parse time into AppState, never passed on.
WorkspaceOption = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        help="Workspace folder (default: A2M_HOME, else the nearest a2m.toml upwards).",
        show_default=False,
        callback=_remember_workspace,
    ),
]


class Track(StrEnum):
    mlflow = "mlflow"
    none = "none"


def _remember_track(ctx: typer.Context, value: Track | None) -> Track | None:
    if value is not None:
        st = state(ctx)
        st.track = value.value
        st._settings = None  # built again, with it
    return value


# `--track mlflow|none`, for each command that mirrors runs or judgements to MLflow (train,
# evaluate, compare, loop, report): read at parse time into AppState, as -w is, so the settings
# the command builds next have it (settings.load_settings); the commands pass nothing on.
TrackOption = Annotated[
    Track | None,
    typer.Option(
        "--track",
        help="mlflow: log this command's runs and judgements to MLflow (at MLFLOW_TRACKING_URI, "
        "else \\[tracking] mlflow_uri, else MLflow's local store in the workspace folder); "
        "none: do not, even where those are set. Default: log where either is set.",
        show_default=False,
        callback=_remember_track,
    ),
]

# Commands that make their own workspace and read no -w.
WITHOUT_WORKSPACE = frozenset({"demo"})


@functools.cache
def _workspace_parameter() -> Any:
    """WorkspaceOption as a click parameter, built by typer as any command's options are."""
    probe = typer.Typer(add_completion=False)

    @probe.command()
    def probe_command(workspace: WorkspaceOption = None) -> None:
        """Never run: only its parameter is taken."""

    (parameter,) = typer.main.get_command(probe).params
    # The callback keeps the value; commands have no `workspace` argument to receive it.
    parameter.expose_value = False
    return parameter


def add_workspace_option(command: Any) -> Any:
    """Give `command` (and, for a group such as `studio`, each of its commands) the -w option."""
    if not any(p.name == "workspace" for p in command.params):
        command.params.append(_workspace_parameter())
    for sub in getattr(command, "commands", {}).values():
        add_workspace_option(sub)
    return command


def skip_final_collection() -> None:
    """At exit, leave the heap to the OS instead of a last cyclic garbage collection.

    Interpreter shutdown spends 0.3-0.5 s (a no-change `a2m sync`) to over a second (after `import
    torch`) collecting objects whose memory the OS reclaims anyway; freezing the heap first skips
    that work, while reference counting still closes files and connections. Not when triton is
    loaded: its bindings then report the objects as leaked on stderr.
    """
    if "triton" not in sys.modules:
        gc.freeze()


def read_secret(prompt: str) -> str:
    """A secret given as `-`, so that it never shows in `ps`: a line typed without echo at a
    terminal, else standard input's first line; "" when none came."""
    import getpass

    typed = sys.stdin.isatty()
    return (getpass.getpass(prompt) if typed else sys.stdin.readline()).strip()
