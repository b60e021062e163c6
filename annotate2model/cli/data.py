"""Data commands: `import-folder`, `versions`, `show`, `diff`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from annotate2model.cli.context import state
from annotate2model.cli.render import JsonFlag, RichProgress, console, print_json, when
from annotate2model.settings import SPLITS
from annotate2model.store import versions as store_versions
from annotate2model.store.imports import SplitSource, import_folder

app = typer.Typer()


class SplitChoice(str, Enum):
    """Where import-folder takes each image's split from (`--help` lists the choices)."""

    auto = "auto"
    folders = "folders"
    hash = "hash"


SPLIT_SOURCES: dict[SplitChoice, SplitSource] = {
    SplitChoice.auto: "auto",
    SplitChoice.folders: "folders",
    SplitChoice.hash: "hash",
}


@app.command("import-folder")
def import_folder_cmd(
    ctx: typer.Context,
    folder: Annotated[
        Path, typer.Argument(help="Class folders of images, optionally under train/ val/ test/.")
    ],
    note: Annotated[str, typer.Option(help="A note stored with the version.")] = "",
    splits: Annotated[
        SplitChoice,
        typer.Option(
            help="auto: honour train/ val/ test/ folders when present; folders: require them; "
            "hash: derive every split from the image hash.",
        ),
    ] = SplitChoice.auto,
    as_json: JsonFlag = False,
) -> None:
    """Turn a folder of class folders into a dataset version (none if nothing changed).

    Example: [bold]a2m import-folder ~/data/hymenoptera --note "first cut"[/]
    """
    store = state(ctx).store()
    result = import_folder(
        store, folder, note=note, split_source=SPLIT_SOURCES[splits], progress=RichProgress()
    )
    if as_json:
        print_json(result)
        return
    assert result.version is not None
    v = result.version.version
    if result.version.created:
        console.print(
            f"Version [bold]{v.number}[/]: {v.item_count} images "
            f"({result.images_new} new to the store)."
        )
    else:
        console.print(f"Nothing changed: version [bold]{v.number}[/] already holds these images.")
    if result.splits_from_folders:
        console.print("Splits taken from the train/ val/ test/ folders.")
    if result.duplicates:
        console.print(f"{len(result.duplicates)} duplicate file(s) kept once.")
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} file(s) skipped[/] (reasons above).")


@app.command("versions")
def versions_cmd(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List dataset versions, oldest first.

    Example: [bold]a2m versions --json[/]
    """
    store = state(ctx).store()
    with store.read() as session:
        rows = store_versions.list_versions(session)
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("No versions yet: try [bold]a2m import-folder DIR[/] or [bold]a2m sync[/].")
        return
    table = Table(title="Dataset versions")
    for col in ("version", "parent", "images", "created", "source", "hash", "note"):
        table.add_column(col, justify="right" if col in ("version", "parent", "images") else "left")
    for v in rows:
        table.add_row(
            str(v.number),
            str(v.parent or "-"),
            str(v.item_count),
            when(v.created_at),
            v.source,
            v.content_hash[:12],
            v.note,
        )
    console.print(table)


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Version number, or latest.")] = "latest",
    as_json: JsonFlag = False,
) -> None:
    """Class counts per split, label set, parent and hash of a version.

    Example: [bold]a2m show 3[/]
    """
    store = state(ctx).store()
    with store.read() as session:
        summary = store_versions.summarize_version(session, version)
    if as_json:
        print_json(summary)
        return
    v = summary.version
    console.print(
        f"[bold]Version {v.number}[/] (parent {v.parent or '-'}), {v.item_count} images, "
        f"created {when(v.created_at)} by {v.source}\nhash {v.content_hash}"
        + (f"\nnote: {v.note}" if v.note else "")
    )
    table = Table()
    table.add_column("label")
    for split in SPLITS:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for label in summary.labels:
        counts = summary.counts[label]
        table.add_row(label, *(str(counts[s]) for s in SPLITS), str(sum(counts.values())))
    totals = summary.split_totals
    table.add_row("[bold]all", *(str(totals[s]) for s in SPLITS), str(sum(totals.values())))
    console.print(table)


@app.command("diff")
def diff_cmd(
    ctx: typer.Context,
    old: Annotated[str, typer.Argument(help="The older version.")],
    new: Annotated[str, typer.Argument(help="The newer version (default: latest).")] = "latest",
    limit: Annotated[int, typer.Option(help="Rows to print per kind of change (0: all).")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Images added, removed and relabeled between two versions.

    Example: [bold]a2m diff 1 2[/]
    """
    store = state(ctx).store()
    with store.read() as session:
        diff = store_versions.diff_versions(session, old, new)
    if as_json:
        print_json(
            {
                "old": diff.old,
                "new": diff.new,
                "counts": diff.counts,
                "added": diff.added,
                "removed": diff.removed,
                "relabeled": diff.relabeled,
            }
        )
        return
    c = diff.counts
    console.print(
        f"Version {diff.old} → {diff.new}: [green]+{c['added']} added[/], "
        f"[red]-{c['removed']} removed[/], [yellow]{c['relabeled']} relabeled[/]"
    )
    shown = limit if limit > 0 else None
    for title, rows in (("added", diff.added), ("removed", diff.removed)):
        if rows:
            table = Table(title=title)
            for col in ("image", "label", "split"):
                table.add_column(col)
            for item in rows[:shown]:
                table.add_row(item.image_sha256[:12], item.label, item.split)
            console.print(table)
    if diff.relabeled:
        table = Table(title="relabeled")
        for col in ("image", "old label", "new label", "split"):
            table.add_column(col)
        for r in diff.relabeled[:shown]:
            table.add_row(r.image_sha256[:12], r.old_label, r.new_label, r.split)
        console.print(table)
