"""`a2m demo`: the whole loop on generated street signs, offline, in minutes.

In a new folder: a workspace, a local Label Studio, a project, a first batch of stop / not_stop
signs collected into it with labels as annotations (a known handful of them deliberately wrong),
sync, train; a second batch, then one iteration of the loop (sync, train, compare the two versions,
flag the new run's doubts back into Label Studio). What happened is returned as one record and kept
in `.a2m/demo.json`, so that a second `a2m demo` in the same folder can say what is there instead
of starting over halfway.

Labels come from folder names, as a team's first import would; a wrong label is an image written
into the other class's folder (its file name still says what it shows: `stop_0007.jpg` under
`not_stop/`).
"""

from __future__ import annotations

import hashlib
import json
import random
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from annotate2model.demo.invoke import a2m_command
from annotate2model.demo.signs import EASY, SIGN_CLASSES, sign_bytes
from annotate2model.errors import InputError
from annotate2model.fsutil import atomic_write_bytes
from annotate2model.progress import NullProgress, Progress
from annotate2model.settings import Settings, load_settings
from annotate2model.workspace import init_workspace

if TYPE_CHECKING:
    from annotate2model.judging.records import Comparison
    from annotate2model.review.flagging import FlagOutcome
    from annotate2model.store import Store
    from annotate2model.training.config import RunConfig

PROJECT_TITLE = "Street signs (a2m demo)"
STATE_FILE = "demo.json"
SEED = 7
FOLDER_NAME = "a2m-demo"


def default_folder() -> Path:
    """Where `a2m demo` puts its workspace when given no folder: `~/a2m-demo`, in the user's home,
    never the current folder, which is often the repository `a2m` was installed from (a hundred
    megabytes of images and Label Studio's database would land in its `git status`)."""
    return Path.home() / FOLDER_NAME


@dataclass(frozen=True)
class DemoSize:
    """How much data the demo makes."""

    # Images per class in the first batch, and added per class by the second.
    first: int
    second: int
    # Deliberately wrong labels per class and batch.
    wrong: int


FULL = DemoSize(first=100, second=100, wrong=4)
SMALL = DemoSize(first=50, second=50, wrong=3)


def offline_config() -> RunConfig:
    """What the demo trains without ImageNet weights: the default linear probe, on the features of
    a randomly initialised resnet18 at 112 pixels. Random convolutional features separate these
    signs well (about 0.95 cross-validated accuracy from 120 images, 0.98 from 400), in seconds
    on two CPU cores; a network trained from scratch needs far more images and time."""
    from annotate2model.training.config import RunConfig

    return RunConfig(weights="none", image_size=112, note="a2m demo, offline: random features")


def pretrained_config() -> RunConfig:
    """What the demo trains with ImageNet weights: the tool's default (a linear probe)."""
    from annotate2model.training.config import RunConfig

    return RunConfig(note="a2m demo")


@dataclass(frozen=True)
class Sign:
    """One generated image: its file, what it shows, and the label its folder gives it."""

    path: Path
    truth: str
    label: str
    sha256: str

    @property
    def wrong(self) -> bool:
        return self.truth != self.label


def write_batch(
    folder: Path, start: int, per_class: int, wrong: int, seed: int = SEED
) -> list[Sign]:
    """Images start..start+per_class-1 of each class under folder/<label>/; `wrong` of each class
    (chosen by the seed) go into the other class's folder."""
    chooser = random.Random(f"demo-{seed}-{start}")
    signs = []
    for truth in SIGN_CLASSES:
        mislabeled = set(chooser.sample(range(start, start + per_class), wrong))
        other = next(c for c in SIGN_CLASSES if c != truth)
        for i in range(start, start + per_class):
            label = other if i in mislabeled else truth
            data = sign_bytes(truth, seed, i, style=EASY)
            path = folder / label / f"{truth}_{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            signs.append(Sign(path, truth, label, hashlib.sha256(data).hexdigest()))
    return signs


@dataclass
class DemoState:
    """What `.a2m/demo.json` keeps: how far the demo got and what it made."""

    step: str = "started"
    finished: bool = False
    small: bool = False
    weights: str = ""
    versions: list[int] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)
    report: str = ""
    tab: str = ""
    tab_url: str = ""
    flagged: int = 0
    wrong: int = 0
    caught: int = 0

    @classmethod
    def load(cls, path: Path) -> DemoState | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, json.dumps(asdict(self), indent=2).encode(), mode=0o644)


@dataclass
class DemoOutcome:
    """What the demo did, for the CLI to show."""

    root: Path
    state: DemoState
    # True: the folder held a finished demo; nothing was run again (the server was restarted if
    # it had stopped).
    again: bool
    url: str
    admin: str
    password: str
    project: int
    # Why ImageNet weights were not used (None: they were).
    offline_reason: str | None = None
    comparison: Comparison | None = None
    flags: FlagOutcome | None = None
    # The deliberately wrong labels, and those among them the flags caught.
    wrong: list[Sign] = field(default_factory=list)
    caught: list[Sign] = field(default_factory=list)
    seconds: float = 0.0


def check_folder(root: Path) -> DemoState | None:
    """The state of an earlier demo in `root` (None: the folder is new or empty); an error when
    the folder holds something else, or a demo that stopped halfway."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return None
    if not root.is_dir():
        raise InputError(f"{root} is a file; the demo needs a new folder.")
    state = DemoState.load(root / ".a2m" / STATE_FILE)
    a2m, here = a2m_command(), shlex.quote(str(root))
    if state is None:
        raise InputError(
            f"{root} is not empty and holds no demo; the demo makes its own workspace in a new "
            "folder.",
            hint=f"give another folder, e.g. `{a2m} demo {shlex.quote(str(root) + '-demo')}`.",
        )
    if not state.finished:
        raise InputError(
            f"an earlier demo in {root} stopped before the end (at: {state.step}).",
            hint=f"remove it (`{a2m} -w {here} studio down; rm -rf {here}`) and run the demo "
            "again, or give another folder.",
        )
    return state


# Tells the user what the demo does next.
Say = Callable[[str], None]
# Records how far the demo got (a name), then says what it does next.
Step = Callable[[str, str], None]


def run_demo(
    root: Path,
    env: Mapping[str, str],
    *,
    small: bool = False,
    weights_timeout: float = 3.0,
    on_step: Say | None = None,
    on_wait: Say | None = None,
    progress: Progress | None = None,
) -> DemoOutcome:
    """Run the demo in `root` (see the module), or, when `root` holds a finished one, make sure
    its Label Studio runs and return what it made. `on_wait` hears, now and then while Label
    Studio starts, how long it has taken so far and what it is doing."""
    from annotate2model.labelstudio import connection

    started = time.perf_counter()
    say = on_step or (lambda _: None)
    progress = progress or NullProgress()
    earlier = check_folder(root)
    ws, _ = init_workspace(root)
    state_path = ws.data_dir / STATE_FILE
    images = ws.root / "images"
    images.mkdir(exist_ok=True)
    log = connection.local_server(ws).log_path
    if earlier is not None:
        up = connection.studio_up(
            ws, files_root=images, progress=StudioWait(progress, log, on_wait)
        )
        settings = load_settings(ws, env)
        return DemoOutcome(
            root=ws.root,
            state=earlier,
            again=True,
            url=up.url,
            admin=up.admin,
            password=up.password.reveal(),
            project=connection.project_id(settings),
        )
    state = DemoState(small=small)
    state.save(state_path)
    # Larger val and test shares than the default 80/10/10: a few hundred images still give the
    # comparison a few dozen common test images.
    ws.update_config("split", {"train": 0.7, "val": 0.15, "test": 0.15})
    size = SMALL if small else FULL

    def step(name: str, message: str) -> None:
        state.step = name
        state.save(state_path)
        say(message)

    config, offline_reason = _choose_config(weights_timeout)
    state.weights = "imagenet" if offline_reason is None else "none"
    if offline_reason is not None:
        say(
            f"No ImageNet weights ({offline_reason}): the probes learn on a randomly "
            "initialised resnet18's features instead, which still separate these signs."
        )
    step(
        "label studio",
        "Starting Label Studio for this workspace. Its first start sets up its database, which "
        "takes a while, longer on a busy machine; what it is doing and the time so far show "
        "while it works.",
    )
    up = connection.studio_up(ws, files_root=images, progress=StudioWait(progress, log, on_wait))
    made = connection.connect(
        load_settings(ws, env), create=PROJECT_TITLE, labels=list(SIGN_CLASSES)
    )
    settings = load_settings(ws, env)
    outcome = DemoOutcome(
        root=ws.root,
        state=state,
        again=False,
        url=up.url,
        admin=up.admin,
        password=up.password.reveal(),
        project=made.project,
        offline_reason=offline_reason,
    )
    from annotate2model.store import Store
    from annotate2model.store.flags import list_flags

    store = Store.open(settings)
    try:
        first = _batch(
            store, settings, images / "batch-1", 0, size.first, size.wrong, step, progress, 1
        )
        outcome.wrong += [s for s in first if s.wrong]
        _first_version(store, settings, config, state, step, progress)
        second = _batch(
            store,
            settings,
            images / "batch-2",
            size.first,
            size.second,
            size.wrong,
            step,
            progress,
            2,
        )
        outcome.wrong += [s for s in second if s.wrong]
        _loop(store, settings, config, state, outcome, step, progress)
        with store.read() as session:
            flagged = {f.image_sha256 for f in list_flags(session, state.runs[-1])}
    finally:
        store.close()
    outcome.caught = [s for s in outcome.wrong if s.sha256 in flagged]
    state.wrong, state.caught = len(outcome.wrong), len(outcome.caught)
    state.step, state.finished = "done", True
    state.save(state_path)
    outcome.seconds = time.perf_counter() - started
    return outcome


# What Label Studio's log says of its start, latest first: a line it writes -> what it is doing.
_STUDIO_PHASES = (
    ("Starting development server at", "waiting for it to answer"),
    ("Initializing database", "setting up its database"),
    ("Database and media directory", "loading Label Studio"),
)
_LOG_MARKER = "--- a2m starting Label Studio"


def studio_phase(log: str) -> str:
    """What Label Studio is doing, from its log (the text after a2m's last start marker)."""
    at = log.rfind(_LOG_MARKER)
    recent = log[at:] if at >= 0 else log
    for line, doing in _STUDIO_PHASES:
        if line in recent:
            return doing
    return "starting its process"


class StudioWait:
    """The progress of Label Studio's start, as the demo shows it: the stage without a promised
    duration, its live status the time so far and what Label Studio's log says it is doing, and,
    every `every` seconds, the same told to `on_wait` (for output that is not redrawn)."""

    def __init__(
        self,
        inner: Progress,
        log: Path,
        on_wait: Say | None,
        every: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner, self._log, self._on_wait = inner, log, on_wait
        self._every, self._clock = every, clock
        self._started: float | None = None
        self._next_read = self._next_say = 0.0
        self._doing = "starting its process"

    def begin(self, description: str, total: float | None = None) -> None:
        self._started = self._clock()
        self._next_read, self._next_say = self._started, self._started + self._every
        self._inner.begin(
            "Starting Label Studio" if description.startswith("Starting") else description, total
        )

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        if self._started is None:
            self._inner.advance(amount, status)
            return
        now = self._clock()
        if now >= self._next_read:
            self._next_read = now + 1.0
            self._doing = studio_phase(self._read_log())
        elapsed = now - self._started
        self._inner.advance(amount, status=f"{self._doing}, {elapsed:.0f} s so far")
        if self._on_wait is not None and now >= self._next_say:
            self._next_say = now + self._every
            self._on_wait(f"Still starting Label Studio: {self._doing}, {elapsed:.0f} s so far.")

    def end(self) -> None:
        if self._started is not None:
            # The stage's own line gives the time it took; "so far" would be stale there.
            self._inner.advance(0, status="")
        self._started = None
        self._inner.end()

    def note(self, message: str) -> None:
        self._inner.note(message)

    def _read_log(self) -> str:
        try:
            with self._log.open("rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 65536))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def _choose_config(timeout: float) -> tuple[RunConfig, str | None]:
    """The default configuration when resnet18's ImageNet weights can be had, else the offline one
    and why."""
    from annotate2model.training.features.weights import imagenet_weights_status

    status = imagenet_weights_status("resnet18", timeout=timeout)
    if status.state == "offline":
        return offline_config(), status.detail
    return pretrained_config(), None


def _batch(
    store: Store,
    settings: Settings,
    folder: Path,
    start: int,
    per_class: int,
    wrong: int,
    step: Step,
    progress: Progress,
    number: int,
) -> list[Sign]:
    """Draw one batch and collect it into the project, folder names as annotations."""
    from annotate2model.labelstudio import connection
    from annotate2model.labelstudio.collect import collect_folder
    from annotate2model.store.tasks import project_image_hashes

    step(
        f"batch {number}",
        f"Batch {number}: drawing {per_class * len(SIGN_CLASSES)} street signs "
        f"({wrong * len(SIGN_CLASSES)} of them deliberately in the wrong class folder) and "
        "collecting them into Label Studio, folder names as annotations.",
    )
    signs = write_batch(folder, start, per_class, wrong)
    project = connection.project_id(settings)
    with store.read() as session:
        known = project_image_hashes(session, project)
    with connection.open_client(settings) as client:
        collect_folder(
            client,
            project,
            folder,
            known_hashes=known,
            labels_from_folders=True,
            labels_as="annotations",
            files_root=connection.local_files(settings).root,
            max_pixels=settings.max_image_pixels,
            progress=progress,
        )
    return signs


def _first_version(
    store: Store,
    settings: Settings,
    config: RunConfig,
    state: DemoState,
    step: Step,
    progress: Progress,
) -> None:
    from annotate2model.labelstudio import connection
    from annotate2model.labelstudio.sync import sync_project
    from annotate2model.training.runs.runner import train

    step("sync 1", "Syncing the project into the store: the first dataset version.")
    with connection.open_client(settings) as client:
        synced = sync_project(
            store,
            client,
            connection.project_id(settings),
            note="a2m demo: first batch",
            progress=progress,
            local=connection.local_files(settings),
        )
    if synced.version is None:
        raise InputError("the first sync of the demo made no dataset version.")
    state.versions.append(synced.version.version.number)
    step("train 1", f"Training on version {state.versions[-1]}.")
    run = train(store, config, state.versions[-1], progress=progress).run
    state.runs.append(run.id)


def _loop(
    store: Store,
    settings: Settings,
    config: RunConfig,
    state: DemoState,
    outcome: DemoOutcome,
    step: Step,
    progress: Progress,
) -> None:
    """One iteration of `a2m loop`: sync, train, compare with the first version, flag."""
    from annotate2model.judging.report import compare_report
    from annotate2model.labelstudio import connection
    from annotate2model.loop import run_loop
    from annotate2model.training.context import RunContext

    step(
        "loop",
        "One iteration of the loop (a2m loop): sync, train the grown version, compare the two "
        "versions on their common test images, flag the new run's doubts back to Label Studio.",
    )
    with connection.open_client(settings) as client:
        done = run_loop(
            store,
            client,
            connection.project_id(settings),
            config=config,
            progress=progress,
            local=connection.local_files(settings),
        )
    if done.run is None or done.version is None:
        raise InputError("the demo's second sync made no new version to train.")
    state.versions.append(done.version)
    state.runs.append(done.run.id)
    outcome.comparison, outcome.flags = done.comparison, done.flags
    if done.flags is not None:
        state.flagged, state.tab, state.tab_url = done.flags.flagged, done.flags.tab, done.flags.url
    if done.comparison is not None:
        step("report", "Writing the comparison report.")
        out = settings.workspace.reports_dir / done.comparison.name / "report.html"
        context = RunContext.from_store(store)
        state.report = str(compare_report(done.comparison, None, out, context).html)
