"""`a2m demo`: a guided tour on embedded data, from an empty folder to two compared versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from annotate2model.cli.context import state
from annotate2model.cli.render import RichProgress, console
from annotate2model.demo import write_demo_images
from annotate2model.errors import InputError
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store import versions as store_versions
from annotate2model.store.imports import import_folder
from annotate2model.workspace import init_workspace

app = typer.Typer()


@app.command()
def demo(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Folder for the demo workspace.")] = Path("a2m-demo"),
    per_class: Annotated[int, typer.Option(help="Images per class in the first version.")] = 40,
) -> None:
    """Tour the tool on generated images: a workspace, two dataset versions, their diff.

    Example: [bold]a2m demo ./a2m-demo[/]
    """
    ws, _ = init_workspace(path)
    store = Store.open(load_settings(ws, state(ctx).env))
    with store.read() as session:
        if store_versions.latest_version(session) is not None:
            store.close()
            raise InputError(f"{ws.root} already holds versions; remove it or pick another folder.")
    images = ws.root / "images"
    console.print(f"[bold]1.[/] Workspace at {ws.root}; generating {per_class} images per class.")
    write_demo_images(images, per_class)
    first = import_folder(store, images, note="demo: first batch", progress=RichProgress())
    assert first.version is not None
    console.print(f"[bold]2.[/] The batch is version {first.version.version.number}.")
    write_demo_images(images, per_class, start=per_class)
    second = import_folder(store, images, note="demo: grown", progress=RichProgress())
    assert second.version is not None
    old, new = first.version.version.number, second.version.version.number
    with store.read() as session:
        diff = store_versions.diff_versions(session, old, new)
        summary = store_versions.summarize_version(session, new)
    console.print(
        f"[bold]3.[/] More images arrived: version {new} adds {diff.counts['added']} "
        f"({summary.split_totals['train']} train / {summary.split_totals['val']} val / "
        f"{summary.split_totals['test']} test, classes {', '.join(summary.labels)})."
    )
    store.close()
    console.print(
        f"\nExplore: [bold]cd {ws.root}[/] then [bold]a2m versions[/], [bold]a2m show {new}[/], "
        f"[bold]a2m diff {old} {new}[/]."
    )
