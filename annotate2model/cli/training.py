"""Training commands: `train`, `runs`, `evaluate`, `predict`, `ensemble`.

torch is imported only inside the commands that need it, so `a2m --help` stays fast.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from annotate2model.cli.context import TrackOption, skip_final_collection, state
from annotate2model.cli.render import (
    JsonFlag,
    RichProgress,
    console,
    err_console,
    listing,
    print_json,
    score,
    to_jsonable,
    when,
)
from annotate2model.errors import InputError
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.training import distributed
from annotate2model.training.config import (
    DEVICES,
    MODE_DEFAULTS,
    PRESETS,
    Backbone,
    Mode,
    OptimizerName,
    Precision,
    RunConfig,
    Schedule,
    preset_config,
)

app = typer.Typer()

DEVICE_HELP = f"One of {', '.join(DEVICES)} (auto: CUDA, then MPS, then CPU), or cuda:N."
DeviceFlag = Annotated[str | None, typer.Option(help=DEVICE_HELP, show_default=False)]
BACKBONE_HELP = f"torchvision backbone: {', '.join(b.value for b in Backbone)}"

# `a2m train --help` in panels, so that each table's columns fit 80 columns.
MODEL = "Data and model"
FINETUNE = "Fine-tuning (a probe's head is fitted by L-BFGS, without these)"
DATA = "Training"
MACHINE = "Machine"


def _per_mode(field: str) -> str:
    """A fine-tuning field's default, for --help (a probe's head is fitted without them)."""
    return f"Default: {MODE_DEFAULTS['finetune'][field]}."


def _fast_exit() -> None:
    # Once, and first among the exit handlers (the last registered runs first).
    atexit.unregister(skip_final_collection)
    atexit.register(skip_final_collection)


class Stopped(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run is closed as interrupted, nothing half-written."""


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM stop a long command, whatever the process inherited.

    A process started in the background by a non-interactive shell inherits SIGINT *ignored*, and
    Python then never installs its KeyboardInterrupt handler: Ctrl-C or `kill -INT` would be lost
    and training would go on for minutes. Training commands take both signals back.
    """

    def terminated(_signum: int, _frame: FrameType | None) -> None:
        raise Stopped("stopped by SIGTERM")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminated)


def _quiet_torch_deprecations() -> None:
    """torch's FutureWarnings and DeprecationWarnings (torch.jit is deprecated in favour of
    torch.export, ...) speak to developers, not to the user, and written straight to stderr they
    break the progress lines."""
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"torch(vision)?(\.|$)")


def _passive_omp_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless the user chose otherwise).

    Feature extraction decodes images on a thread beside torch's OpenMP threads; spinning idle
    threads took the cores the decoder needed (measured on 2 cores: 122-127 img/s spinning,
    130-146 passive, against 157-170 for bare model(x)). Read when torch loads, so set before.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _torch_store(ctx: typer.Context, device: str | None) -> Store:
    """Ready a command that runs torch (signals, quiet warnings, idle threads asleep, a fast
    exit) and open its store, on `device` when one is given."""
    _passive_omp_threads()
    _quiet_torch_deprecations()
    _stop_on_signals()
    _fast_exit()
    return state(ctx).store(device=device) if device else state(ctx).store()


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    version: Annotated[
        str, typer.Option(help="Dataset version (number or latest).", rich_help_panel=MODEL)
    ] = "latest",
    preset: Annotated[
        str | None,
        typer.Option(
            metavar="<name>",
            help=f"Start from a preset: {', '.join(PRESETS)}.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    backbone: Annotated[
        Backbone | None,
        typer.Option(
            metavar="<name>", help=BACKBONE_HELP + " (default: resnet18).", rich_help_panel=MODEL
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="imagenet (downloaded to the torch hub cache if needed), none, or a PATH to a "
            "state_dict file.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    mode: Annotated[
        Mode | None,
        typer.Option(
            help="probe: frozen backbone, new head (default); finetune: train blocks too.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    unfreeze: Annotated[
        str | None,
        typer.Option(
            help="Fine-tuning: the last N blocks train, or all (resnet: 1 = layer4, 2 = layer3 "
            "and layer4; every backbone in docs/finetune.md).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Input size in pixels.", rich_help_panel=MODEL)
    ] = None,
    optimizer: Annotated[
        OptimizerName | None,
        typer.Option(
            help=f"sgd (with momentum) or adamw. {_per_mode('optimizer')}", rich_help_panel=FINETUNE
        ),
    ] = None,
    schedule: Annotated[
        Schedule | None,
        typer.Option(
            metavar="<name>",
            help="Learning-rate schedule: cyclic (triangular2), cosine, onecycle or constant. "
            f"{_per_mode('schedule')}",
            rich_help_panel=FINETUNE,
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help=f"Passes over the training split. {_per_mode('epochs')}", rich_help_panel=FINETUNE
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help=f"Peak learning rate (the head's). {_per_mode('lr')}", rich_help_panel=FINETUNE
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help=f"Weight decay. {_per_mode('weight_decay')}", rich_help_panel=FINETUNE),
    ] = None,
    early_stopping: Annotated[
        int | None,
        typer.Option(
            help="Stop after N epochs without better val loss (0: off). "
            f"{_per_mode('early_stopping')}",
            rich_help_panel=FINETUNE,
        ),
    ] = None,
    warmup_epochs: Annotated[
        float | None,
        typer.Option(
            help=f"Epochs of linear learning-rate warm-up. {_per_mode('warmup_epochs')}",
            rich_help_panel=FINETUNE,
        ),
    ] = None,
    momentum: Annotated[
        float | None,
        typer.Option(
            help=f"SGD momentum. Default: {RunConfig.momentum}.", rich_help_panel=FINETUNE
        ),
    ] = None,
    block_lr_scale: Annotated[
        float | None,
        typer.Option(
            help="The unfrozen blocks' learning rate as a share of the head's. "
            f"Default: {RunConfig.block_lr_scale}.",
            rich_help_panel=FINETUNE,
        ),
    ] = None,
    head_init: Annotated[
        str | None,
        typer.Option(
            help="probe (start the head from the linear probe, and keep the probe when no epoch "
            "beats it; default) or random.",
            rich_help_panel=FINETUNE,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help=f"Images per step. Default: {RunConfig.batch_size}.", rich_help_panel=DATA
        ),
    ] = None,
    label_smoothing: Annotated[
        float | None, typer.Option(help="Label smoothing.", rich_help_panel=DATA)
    ] = None,
    class_weights: Annotated[
        bool | None,
        typer.Option(
            "--class-weights/--no-class-weights",
            help="Weight classes by rarity.",
            rich_help_panel=DATA,
        ),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help="Augmentation (default: on for finetune).",
            rich_help_panel=DATA,
        ),
    ] = None,
    views: Annotated[
        int | None,
        typer.Option(
            help="Probe: cached augmented views per training image.", rich_help_panel=DATA
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.", rich_help_panel=DATA)] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(help="auto: bf16 autocast where the device has it.", rich_help_panel=MACHINE),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Decoding workers: -1 auto, 0 on the main thread, N workers.",
            rich_help_panel=MACHINE,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help=DEVICE_HELP, show_default=False, rich_help_panel=MACHINE),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train on N GPUs of this machine, one process each (DistributedDataParallel; "
            "with --device cpu, N CPU processes). Several machines: torchrun, docs/scaling.md.",
            show_default=False,
            rich_help_panel=MACHINE,
        ),
    ] = None,
    note: Annotated[str | None, typer.Option(help="A note kept with the run.")] = None,
    track: TrackOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Train a classifier on a dataset version and record the run.

    Example: [bold]a2m train --weights ~/resnet18.pth --epochs 10[/]
    """
    values: dict[str, Any] = {
        "backbone": backbone,
        "weights": weights,
        "mode": mode,
        "unfreeze": unfreeze,
        "optimizer": optimizer,
        "schedule": schedule,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "label_smoothing": label_smoothing,
        "class_weights": class_weights,
        "early_stopping": early_stopping,
        "warmup_epochs": warmup_epochs,
        "block_lr_scale": block_lr_scale,
        "head_init": head_init,
        "seed": seed,
        "image_size": image_size,
        "augment": augment,
        "views": views,
        "precision": precision,
        "workers": workers,
        "note": note,
    }
    if preset is not None:
        config = preset_config(preset, **values)
    else:
        config = RunConfig(**{k: v for k, v in values.items() if v is not None})
    ignored = config.optimiser_fields_set() if config.mode == "probe" else []
    if ignored and distributed.env_rank() == 0:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        err_console.print(
            f"[yellow]Note:[/] {flags} apply to fine-tuning; a probe's head is a logistic "
            "regression fitted by L-BFGS, with its regularisation chosen on the val split. "
            "For a frozen backbone with a trained head: --preset resnet18-frozen-sgd."
        )
    if gpus is not None and gpus > 1:
        launching = state(ctx).store()
        sys.exit(_launch(launching, version, gpus, device, config.batch_size))
    store = _torch_store(ctx, device)
    from annotate2model.training.runs.runner import train

    if distributed.launched():
        distributed.stop_on_sigterm()
    outcome = train(store, config, version, progress=RichProgress())
    if not distributed.is_main():
        return
    run = outcome.run
    if as_json:
        print_json(run)
        return
    ex = outcome.extraction
    if ex is not None:
        console.print(
            f"Features: {ex.cached} cached, {ex.computed} computed"
            + (f" at {ex.images_per_second:.0f} images/s" if ex.computed else "")
            + "."
        )
    m = run.metrics
    console.print(
        f"Run [bold]{run.id}[/] {run.status} on version {run.version} in "
        f"{run.wall_seconds or 0:.1f} s: val accuracy {score(m.get('val_accuracy'))}, "
        f"test accuracy {score(m.get('test_accuracy'))}. Saved in {run.artifact_dir}."
    )


def _launch(store: Store, version: str, processes: int, device: str | None, batch_size: int) -> int:
    """`a2m train --gpus N`: the same command line, without --gpus, as N ranks (torchrun's
    launcher); its exit status."""
    if distributed.launched():
        raise InputError(
            "--gpus starts the processes itself; under torchrun, --nproc-per-node says how many.",
            hint="drop --gpus from the command torchrun runs.",
        )
    distributed.per_rank_batch(batch_size, processes)
    # What every rank would refuse alike is refused once, before any process starts.
    from annotate2model.training.fit.version import check_trainable, load_version_data

    check_trainable(load_version_data(store, version))
    _passive_omp_threads()
    _quiet_torch_deprecations()
    argv = _without_option(sys.argv[1:], "--gpus")
    cpu = device is not None and device.startswith("cpu")
    return distributed.launch(processes, argv, cpu)


def _without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` or `name=VALUE`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


# `a2m runs` prints the auto-train decisions of the latest this many listed runs.
AUTO_TRAIN_LINES = 5


@app.command("runs")
def runs_cmd(
    ctx: typer.Context,
    run: Annotated[
        str | None, typer.Argument(help="A run id: its configuration, metrics and evaluations.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Only runs on this version.")] = None,
    hide_failed: Annotated[
        bool, typer.Option("--hide-failed", help="Leave out failed and interrupted runs.")
    ] = False,
    delete_failed: Annotated[
        bool,
        typer.Option(
            "--delete-failed", help="Delete failed and interrupted runs (they have no model)."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """List runs with status, configuration, timing and accuracy, oldest first; or one run whole.

    Example: [bold]a2m runs --hide-failed[/], [bold]a2m runs 3[/]
    """
    from annotate2model.training.runs.ledger import Ledger

    store = state(ctx).store()
    ledger = Ledger(store)
    ledger.close_dead_runs()
    if delete_failed:
        deleted = ledger.delete_unfinished(store.settings.workspace.runs_dir)
        message = (
            f"Deleted {len(deleted)} failed or interrupted run(s): {', '.join(map(str, deleted))}."
            if deleted
            else "No failed or interrupted run to delete."
        )
        err_console.print(message)
    if run is not None:
        _show_run(store, run, as_json)
        return
    with store.read() as session:
        number = None
        if version is not None:
            from annotate2model.store.versions import get_version

            number = get_version(session, version).number
        rows = store_runs.list_runs(session, number)
        if hide_failed:
            rows = [r for r in rows if r.status not in ("failed", "interrupted")]
        from annotate2model.store.versions import split_hashes

        # The images each listed accuracy was measured on: test, else validation images.
        judged = [r for r in rows if r.status == "succeeded"]
        test_sets = set()
        for split, key in (("test", "test_accuracy"), ("val", "val_accuracy")):
            on_split = [r.version for r in judged if r.metrics.get(key) is not None]
            test_sets |= {(split, h) for h in split_hashes(session, on_split, split).values()}
        from annotate2model.store.flags import flag_precision
        from annotate2model.store.promotions import by_run, list_decisions

        precision = flag_precision(session, [r.id for r in rows])
        decided = by_run(list_decisions(session))
    if as_json:
        print_json(
            [
                {
                    **to_jsonable(r),
                    "flags_resolved": precision.get(r.id, (0, 0))[0],
                    "flags_relabeled": precision.get(r.id, (0, 0))[1],
                    "auto_train": to_jsonable(decided[r.id]) if r.id in decided else None,
                }
                for r in rows
            ]
        )
        return
    if not rows:
        console.print("No runs yet: try [bold]a2m train[/].")
        return
    # Fits 80 columns: short cells never wrap, the model wraps; below 110 columns the start
    # time and the note are left out (`a2m runs RUN` and --json have everything).
    wide = console.width >= 110
    # Two spaces between columns, not three: the flags column fit only with them.
    table = listing("Runs", caption="flags: relabeled/resolved")
    numeric = ("run", "v", "secs", "img/s", "val", "test")
    columns = ["run", "v", "status", "model", *(["started"] if wide else []), *numeric[2:]]
    columns += ["flags", *(["note"] if wide else [])]
    for col in columns:
        table.add_column(
            col,
            justify="right" if col in (*numeric, "flags") else "left",
            no_wrap=col not in ("model", "note"),
            # The longest backbone name (mobilenet_v3_large) stays on one line.
            min_width=18 if col == "model" else None,
        )
    for r in rows:
        c = r.config
        model = (
            f"ensemble of {', '.join(str(m) for m in c.get('members', []))}"
            if r.kind == "ensemble"
            else " ".join(
                str(part)
                for part in (
                    c.get("backbone"),
                    c.get("mode"),
                    c.get("optimizer"),
                    f"lr {c['lr']}" if c.get("lr") else None,
                )
                if part
            )
        )
        resolved, relabeled = precision.get(r.id, (0, 0))
        cells = {
            "run": str(r.id),
            "v": str(r.version),
            "status": r.status,
            "model": escape(model),
            "started": r.started_at.astimezone().strftime("%m-%d %H:%M"),
            "secs": f"{r.wall_seconds:.1f}" if r.wall_seconds is not None else "-",
            "img/s": f"{r.images_per_second:.0f}" if r.images_per_second else "-",
            "val": score(r.metrics.get("val_accuracy")),
            "test": score(r.metrics.get("test_accuracy")),
            "flags": f"{relabeled}/{resolved}" if resolved else "-",
            "note": escape(_short(r.error or c.get("note") or "", 32)),
        }
        table.add_row(*(cells[col] for col in columns))
    console.print(table)
    shown = [r.id for r in rows if r.id in decided]
    if len(shown) > AUTO_TRAIN_LINES:
        console.print(
            f"Auto-train: {len(shown) - AUTO_TRAIN_LINES} earlier decision(s) in "
            "[bold]a2m runs RUN[/] and --json; the latest:"
        )
    for run_id in shown[-AUTO_TRAIN_LINES:]:
        console.print(f"Auto-train: run {run_id} {escape(decided[run_id].summary)}")
    if len(test_sets) > 1:
        # Each version has its own val/test images: the accuracies above do not compare.
        console.print(
            "[yellow]Note:[/] these runs were judged on different images (each on its own "
            "version's val/test splits), so their accuracies do not compare. "
            "[bold]a2m compare[/] judges them on the same images."
        )


def _show_run(store: Store, run_ref: str, as_json: bool) -> None:
    """One run: configuration, metrics per split, and every later judgement of it."""
    with store.read() as session:
        record = store_runs.get_run(session, run_ref)
        evaluations = store_runs.list_evaluations(session, record.id)
    if as_json:
        print_json({"run": record, "evaluations": evaluations})
        return
    console.print(
        f"Run [bold]{record.id}[/] ({record.kind}) on version {record.version}: {record.status}"
        + (f", {record.wall_seconds:.1f} s" if record.wall_seconds is not None else "")
        + (f" on {escape(record.device)}" if record.device else "")
        + "."
    )
    if record.error:
        console.print(f"Reason: {escape(record.error)}")
    from annotate2model.store.promotions import by_run, list_decisions

    with store.read() as session:
        decided = by_run(list_decisions(session)).get(record.id)
    if decided is not None:
        console.print(f"Auto-train: {escape(decided.summary)}")
    config = Table(title="Configuration", show_header=False)
    config.add_column("key")
    config.add_column("value")
    for key, value in sorted(record.config.items()):
        config.add_row(key, escape(str(value)))
    console.print(config)
    splits = record.metrics.get("splits") or {}
    if splits:
        table = Table(title="Metrics on its own version")
        for col in ("split", "images", "accuracy", "macro F1", "loss"):
            table.add_column(col, justify="left" if col == "split" else "right")
        for split, m in splits.items():
            table.add_row(
                split,
                str(m.get("n", "-")),
                score(m.get("accuracy")),
                score((m.get("macro") or {}).get("f1")),
                score(m.get("loss")),
            )
        console.print(table)
    if evaluations:
        table = Table(title="Evaluations (a2m evaluate, a2m compare)", box=box.SIMPLE_HEAD)
        for col in ("when", "by", "version", "split", "images", "accuracy", "macro F1", "set"):
            table.add_column(
                col, justify="left" if col in ("when", "by", "split") else "right", no_wrap=True
            )
        for e in evaluations:
            table.add_row(
                when(e.created_at),
                e.source,
                str(e.version),
                e.split,
                str(e.n),
                score(e.accuracy),
                score(e.macro_f1),
                e.images_hash[:8],
            )
        console.print(table)
        console.print("Rows with the same [bold]set[/] were judged on the same images.")
    else:
        console.print(
            "Not judged again since training ([bold]a2m evaluate[/], [bold]a2m compare[/])."
        )


def _short(text: str, limit: int = 48) -> str:
    """One table cell's worth of a long error or note; `a2m runs --json` has it whole."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run id.")],
    version: Annotated[
        str | None, typer.Option(help="Version to judge on (default: the run's own).")
    ] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "val",
    device: DeviceFlag = None,
    track: TrackOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Judge a run on a split of any version: accuracy, F1, per-class report, confusion matrix.

    Example: [bold]a2m evaluate 3 --version 5 --split test[/]
    """
    store = _torch_store(ctx, device)
    from annotate2model.training.runs.runner import evaluate_run

    result = evaluate_run(store, run, version, split, progress=RichProgress())
    if as_json:
        print_json(result.to_dict())
        return
    m = result.metrics
    console.print(
        f"Run [bold]{result.run}[/] on version {result.version} {split} "
        f"({m.n} images): accuracy {score(m.accuracy)}, macro F1 "
        f"{score(m.macro.f1 if m.macro else None)}, weighted F1 "
        f"{score(m.weighted.f1 if m.weighted else None)}, "
        + ", ".join(f"{k} {score(v)}" for k, v in m.top_k.items())
    )
    table = Table(title="Per class")
    for col in ("label", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for label, c in m.per_class.items():
        table.add_row(label, score(c.precision), score(c.recall), score(c.f1), str(c.support))
    console.print(table)
    labels = list(m.per_class)
    # Said in a line of its own: as the table's title it wrapped at the width of two columns.
    console.print("Confusion matrix (rows: true class, columns: predicted):")
    confusion = Table()
    confusion.add_column("")
    for label in labels:
        confusion.add_column(label, justify="right")
    for label, row in zip(labels, m.confusion, strict=True):
        confusion.add_row(label, *(str(v) for v in row))
    console.print(confusion)


@app.command("predict")
def predict_cmd(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run id.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders of them.")],
    top_k: Annotated[int, typer.Option("--top-k", help="Labels to show per image.")] = 3,
    device: DeviceFlag = None,
    as_json: JsonFlag = False,
) -> None:
    """Top-k labels with probabilities for image files and folders. Every input that cannot be
    read is reported, the others are still predicted, and the exit code is 1 if any failed.

    Example: [bold]a2m predict 3 photos/ extra.jpg --top-k 2[/]
    """
    store = _torch_store(ctx, device)
    from annotate2model.training.runs.runner import predict_files

    results = predict_files(store, run, images, top_k, progress=RichProgress())
    failed = sum(1 for r in results if "error" in r)
    if as_json:
        print_json(results)
    else:
        _print_predictions(run, results)
    if failed:
        err_console.print(f"[red]{failed} of {len(results)} input(s) could not be predicted.[/]")
        raise typer.Exit(1)


def _print_predictions(run: str, results: list[dict[str, Any]]) -> None:
    """One row per input: the path as given (whole; a long one as its file name, then its
    folder on the next line), the likeliest label, then the others; a failed input's reason
    under its name. The label columns take what they need and the image column the rest."""
    shown = max((len(r["top"]) for r in results), default=0)
    tops = [r["top"] for r in results]
    firsts = [f"{t[0]['label']} {t[0]['probability']:.3f}" for t in tops if t]
    thens = [", ".join(f"{t['label']} {t['probability']:.3f}" for t in top[1:]) for top in tops]
    first_w = max([len("prediction"), *map(len, firsts)])
    then_w = min(max([len("then"), *map(len, thens)]), console.width // 4) if shown > 1 else 0
    # Each column pads a space either side; the table's edges add one more each.
    room = max(16, console.width - first_w - then_w - (8 if shown > 1 else 5))
    paths = [_display_path(r["path"]) for r in results]

    def width(path: str) -> int:
        folder, _, base = path.rpartition("/")
        return len(path) if len(path) <= room or not folder else max(len(base), len(folder) + 1)

    wanted = [width(p) for p in paths] + [len(r.get("error", "")) for r in results]
    image_w = min(room, max([len("image"), *wanted]))
    table = Table(title=f"Predictions of run {run}", box=box.SIMPLE_HEAD)
    table.add_column("image", overflow="fold", min_width=image_w, max_width=image_w)
    table.add_column("prediction", min_width=first_w, max_width=first_w)
    if shown > 1:
        table.add_column("then", min_width=then_w, max_width=then_w)
    for r, path, then in zip(results, paths, thens, strict=True):
        folder, _, base = path.rpartition("/")
        name = escape(path)
        if len(path) > image_w and folder:
            name = f"{escape(base)}\n[dim]{escape(folder)}/[/]"
        if "error" in r:
            name += f"\n[red]{escape(r['error'])}[/]"
            cells = ["[red]failed[/]"] + ([""] if shown > 1 else [])
        else:
            top = r["top"][0]
            first = f"[bold]{escape(top['label'])} {top['probability']:.3f}[/]"
            cells = [first] + ([escape(then)] if shown > 1 else [])
        table.add_row(name, *cells)
    console.print(table)


def _display_path(path: str) -> str:
    """A path as the user typed it: relative to the current folder when under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


@app.command("ensemble")
def ensemble_cmd(
    ctx: typer.Context,
    runs: Annotated[list[str], typer.Argument(help="Two or more run ids.")],
    version: Annotated[
        str | None, typer.Option(help="Version to judge on (default: the first run's).")
    ] = None,
    device: DeviceFlag = None,
    as_json: JsonFlag = False,
) -> None:
    """Average the members' probabilities; the ensemble is recorded and judged as a run.

    Example: [bold]a2m ensemble 3 4[/]
    """
    store = _torch_store(ctx, device)
    from annotate2model.training.runs.runner import ensemble

    run = ensemble(store, runs, version, progress=RichProgress())
    if as_json:
        print_json(run)
        return
    console.print(
        f"Run [bold]{run.id}[/] (ensemble of {', '.join(runs)}) on version {run.version}: "
        f"val accuracy {score(run.metrics.get('val_accuracy'))}, "
        f"test accuracy {score(run.metrics.get('test_accuracy'))}."
    )
