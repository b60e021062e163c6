"""Delivery commands: `serve` (page, REST API, ML backend), `export`, `connect-backend`.

torch, FastAPI and uvicorn are imported inside the commands, so `a2m --help` stays fast; `serve
--onnx` never imports torch at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from annotate2model.cli.context import read_secret, state
from annotate2model.cli.render import JsonFlag, RichProgress, console, err_console, print_json
from annotate2model.errors import InputError, NotFoundError, TrainingError
from annotate2model.settings import Secret

app = typer.Typer()

TOKEN_ENV = "A2M_SERVE_TOKEN"
DEFAULT_BACKEND_URL = "http://127.0.0.1:9090"

TokenFlag = Annotated[
    str | None,
    typer.Option(
        help=(
            f"Bearer token the server demands. Best set ${TOKEN_ENV} instead (the default), or "
            "pass `--token -` to read it from stdin (asked for at a terminal): a value written "
            "here shows in `ps`."
        ),
        show_default=False,
    ),
]


def _token(ctx: typer.Context, flag: str | None) -> Secret | None:
    """The token from `--token -` (stdin), `--token VALUE` or $A2M_SERVE_TOKEN; None: none."""
    if flag == "-":
        value = read_secret("Token: ")
        if not value:
            raise InputError("`--token -` read no token from stdin.")
        return Secret(value)
    if flag is not None:
        if flag:
            err_console.print(
                f"[yellow]note:[/] a token written after --token shows in the process list "
                f"(`ps`); set {TOKEN_ENV} or pass `--token -` to read it from stdin."
            )
        return Secret(flag) if flag else None
    value = state(ctx).env.get(TOKEN_ENV, "")
    return Secret(value) if value else None


def _run_dirs(ctx: typer.Context, runs: list[str]) -> list[Path]:
    from annotate2model.store import runs as store_runs
    from annotate2model.training.context import RunContext

    store = state(ctx).store()
    context = RunContext.from_store(store)
    dirs: list[Path] = []
    for ref in runs:
        with store.read() as session:
            run = store_runs.get_run(session, ref)
        if run.status != "succeeded" or run.artifact_dir is None:
            raise TrainingError(f"run {run.id} is {run.status} and has no model to serve.")
        dirs.append(context.run_dir(run.id))
    state(ctx).close()
    return dirs


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    runs: Annotated[list[str], typer.Argument(help="Run ids; the first is the default.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 9090,
    token: TokenFlag = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Listen beyond loopback without a token (refused otherwise); prints what anyone "
            "who reaches the server can then do.",
        ),
    ] = False,
    onnx: Annotated[
        bool,
        typer.Option("--onnx", help="Serve each run's model.onnx on ONNX Runtime (no torch)."),
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda or cuda:N.")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body, in MiB.")] = 20,
    max_files: Annotated[int, typer.Option(help="Most images in one request.")] = 16,
    max_batch: Annotated[int, typer.Option(help="Most images in one forward pass.")] = 32,
    max_pixels: Annotated[
        int,
        typer.Option(
            help="Most pixels one image may decode to (a JPEG at its reduced decoding size); "
            "a request's images together: 4 times as many, at least 100,000,000. 413 beyond."
        ),
    ] = 25_000_000,
    max_tasks: Annotated[
        int, typer.Option(help="Most Label Studio tasks in one /predict request.")
    ] = 512,
    auto_train: Annotated[
        bool,
        typer.Option(
            "--auto-train",
            help="Sync on Label Studio's events; past --every new or changed labels, train the "
            "newest version with the last configuration and serve the new run only when it is "
            "not worse on images neither run trained on (docs/auto-train.md).",
        ),
    ] = False,
    every: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Labels that start a training (default: 10% of the served version's images, "
            "5 to 50).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve runs: a page at /, a REST API (/v1/predict) and a Label Studio ML backend.

    The server listens on loopback unless --host says otherwise; beyond loopback it needs a token
    (set A2M_SERVE_TOKEN) or --no-auth. For a Label Studio task, /predict reads the image only
    from the connected Label Studio's media (/data/upload/..., /data/local-files/...), `data:`
    URLs, or the hosts in \\[serve] image_hosts (A2M_SERVE_IMAGE_HOSTS).

    With --auto-train, connect it with `a2m connect-backend URL --auto-train`: Label Studio's
    events then start a sync, and a training once enough labels wait; `/v1/model` and `a2m runs`
    say what was decided and why.

    Example: [bold]a2m serve 3 --host 0.0.0.0 --token -[/], [bold]a2m serve 3 --auto-train[/]
    """
    from annotate2model.serve.app import (
        DEFAULT_REQUEST_PIXELS,
        ServeSettings,
        create_app,
        exposure,
    )
    from annotate2model.serve.models import OnnxModel, ServedModel, TorchModel
    from annotate2model.serve.server import run_server

    settings = state(ctx).settings()
    secret = _token(ctx, token)
    if no_auth and secret is not None:
        raise InputError("--no-auth and a token exclude each other: choose one.")
    exposed = exposure(host, secret)
    if exposed and not no_auth:
        raise InputError(
            f"refusing to listen on {host} without a token.",
            hint=f"set {TOKEN_ENV} (or pass `--token -` and type it), or pass --no-auth if "
            "anyone who can reach the server may use it.",
        )
    if every is not None and not auto_train:
        raise InputError("--every applies to --auto-train only.")
    if auto_train and onnx:
        raise InputError(
            "--auto-train serves each new run with torch; --onnx serves exported files only.",
            hint="leave out --onnx (or export and serve a chosen run without --auto-train).",
        )
    project = None
    if auto_train:
        from annotate2model.labelstudio import connection

        project = connection.project_id(settings)
        runs = [_auto_served(ctx, runs), *runs[1:]]
    dirs = _run_dirs(ctx, runs)
    chosen = device or settings.device
    models: list[ServedModel] = []
    with console.status("Loading the model(s)"):
        for run_dir in dirs:
            if onnx:
                path = run_dir / "model.onnx"
                if not path.is_file():
                    raise NotFoundError(
                        f"run {run_dir.name} has no ONNX export ({path} is missing).",
                        hint=f"run `a2m export {run_dir.name} --format onnx` first.",
                    )
                models.append(OnnxModel.load(path, chosen))
            else:
                # Idle OpenMP threads sleep, leaving the cores to the decoding threads.
                os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
                models.append(TorchModel.load(run_dir, chosen))
    from annotate2model.labelstudio.backend import task_images

    reader = task_images(settings)
    limits = ServeSettings(
        token=secret,
        max_upload_bytes=int(max_upload_mb * (1 << 20)),
        max_files=max_files,
        max_batch=max_batch,
        max_pixels=max_pixels,
        max_request_pixels=max(4 * max_pixels, DEFAULT_REQUEST_PIXELS),
        max_source_pixels=settings.max_image_pixels,
        max_tasks=max_tasks,
    )
    if exposed:
        err_console.print(f"[yellow]warning (--no-auth):[/] {exposed}")
    shown = "[::1]" if host == "::1" else host
    served = ", ".join(f"{m.run_id} ({m.engine} on {m.device})" for m in models)
    err_console.print(f"Serving run {served} at http://{shown}:{port}/ (Ctrl-C stops).")
    trainer = None
    if auto_train and project is not None:
        from annotate2model.autotrain import AutoTrainer

        first = models[0].run_id
        assert first is not None  # a trained run, not a bare file

        def load(run_id: int) -> ServedModel:
            # On the worker's thread, for a run it trained and recorded: its folder by number.
            return TorchModel.load(settings.workspace.runs_dir / str(run_id), chosen)

        trainer = AutoTrainer(settings, project, first, load_model=load, every=every)
        err_console.print(
            f"Auto-train: Label Studio project {project}'s events start a sync; "
            + (f"{every} new or changed labels" if every else "enough new or changed labels")
            + " start a training (GET /v1/model shows what it does)."
        )
    try:
        run_server(
            create_app(
                models,
                limits,
                reader,
                events=trainer,
                on_start=trainer.start if trainer else None,
                on_stop=trainer.stop if trainer else None,
            ),
            host,
            port,
        )
    finally:
        reader.close()


def _auto_served(ctx: typer.Context, runs: list[str]) -> str:
    """The run --auto-train starts with: the first given, or a run auto-train promoted after it
    (a restarted server serves what it had promoted)."""
    from annotate2model.store import promotions
    from annotate2model.store import runs as store_runs

    store = state(ctx).store()
    with store.read() as session:
        given = store_runs.get_run(session, runs[0])
        last = promotions.last_promoted(promotions.list_decisions(session))
    if last is not None and last.run is not None and last.run > given.id:
        err_console.print(
            f"Auto-train promoted run {last.run} after run {given.id}: serving run {last.run}."
        )
        return str(last.run)
    return str(given.id)


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run id.")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    output: Annotated[
        Path | None,
        typer.Option(help="File to write (default: model.onnx / model.torchscript.pt in the run)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a run as one network file and check it against the torch model.

    Example: [bold]a2m export 3 --format onnx[/]
    """
    if format not in ("onnx", "torchscript"):
        raise typer.BadParameter("choose onnx or torchscript.", ctx, param_hint="'--format'")
    from annotate2model.training.runs.export import export_run

    (run_dir,) = _run_dirs(ctx, [run])
    result = export_run(run_dir, format, output, progress=RichProgress())
    if as_json:
        print_json(result)
        return
    console.print(
        f"Wrote {result.path} ({result.format}, run {result.run}, labels "
        f"{', '.join(result.labels)})."
    )
    console.print(
        f"Parity with the torch model on {result.samples} sample images: max abs difference "
        f"{result.max_abs_diff:.2e} in probabilities."
    )


@app.command("connect-backend")
def connect_backend_cmd(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Argument(help="The a2m server's URL as Label Studio reaches it.")
    ] = DEFAULT_BACKEND_URL,
    run: Annotated[
        str | None, typer.Option(help="Run to predict with (default: the server's first).")
    ] = None,
    token: TokenFlag = None,
    title: Annotated[str, typer.Option(help="Name shown in Label Studio.")] = "annotate2model",
    auto_train: Annotated[
        bool,
        typer.Option(
            "--auto-train",
            help="Also send the project's annotation events to the server's /webhook, for "
            "`a2m serve --auto-train`.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Register a running `a2m serve` as the connected project's ML backend.

    The token (Label Studio sends it as the Basic-auth password) comes from A2M_SERVE_TOKEN,
    like the server's, or `--token -` (stdin).

    Example: [bold]a2m connect-backend http://127.0.0.1:9090[/]
    """
    from annotate2model.labelstudio.backend import connect_backend

    target = url.rstrip("/") + (f"/runs/{run.lstrip('#')}" if run else "")
    settings = state(ctx).settings()
    backend = connect_backend(
        settings, target, title=title, token=_token(ctx, token), auto_train=auto_train
    )
    if as_json:
        print_json(backend)
        return
    verb = "Registered" if backend.created else "Updated"
    console.print(
        f"{verb} ML backend {backend.id} “{backend.title}” at {backend.url} for project "
        f"{backend.project} ({backend.state or 'state unknown'})."
    )
    if backend.webhook is not None:
        console.print(
            f"Label Studio sends the project's annotation events to {target.rstrip('/')}/webhook "
            f"(webhook {backend.webhook})."
        )
