"""Data commands: `import-folder`, `versions`, `show`, `diff`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from annotate2model.cli.context import state
from annotate2model.cli.render import (
    HASH_SHOWN,
    JsonFlag,
    RichProgress,
    console,
    image_cell,
    listing,
    print_json,
    print_task_links,
    task_url,
    to_jsonable,
    when,
)
from annotate2model.settings import SPLITS
from annotate2model.store import versions as store_versions
from annotate2model.store.imports import import_folder

app = typer.Typer()


class SplitChoice(StrEnum):
    """Where import-folder takes each image's split from (`--help` lists the choices)."""

    auto = "auto"
    folders = "folders"
    hash = "hash"


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
        store, folder, note=note, split_source=splits.value, progress=RichProgress()
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
    # Fits 80 columns: short cells never wrap, the note does; below 110 columns the hash is left
    # out (`a2m show V` and --json have it).
    wide = console.width >= 110
    table = listing("Dataset versions")
    numeric = ("version", "parent", "images")
    columns = [*numeric, "created", "source", *(["hash"] if wide else []), "note"]
    for col in columns:
        table.add_column(
            col,
            justify="right" if col in numeric else "left",
            no_wrap=col != "note",
            # A word longer than the column breaks instead of ending in "…".
            overflow="fold",
        )
    for v in rows:
        cells = {
            "version": str(v.number),
            "parent": str(v.parent or "-"),
            "images": str(v.item_count),
            "created": when(v.created_at),
            "source": escape(v.source),
            "hash": v.content_hash[:12],
            "note": escape(v.note),
        }
        table.add_row(*(cells[col] for col in columns))
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
    table = listing()
    table.add_column("label", overflow="fold")
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
    """Images added, removed and relabeled between two versions, each by its file name or
    Label Studio task (a link when the workspace is connected), then its hash.

    Example: [bold]a2m diff 1 2[/]
    """
    store = state(ctx).store()
    shown = limit if limit > 0 else None
    with store.read() as session:
        diff = store_versions.diff_versions(session, old, new)
        parts: list[list[Any]] = [diff.added, diff.removed, diff.relabeled]
        every = [r.image_sha256 for part in parts for r in part]
        listed = every if as_json else [r.image_sha256 for part in parts for r in part[:shown]]
        sources = store_versions.image_sources(session, listed)
    ls_url = store.settings.labelstudio.url
    if as_json:

        def located(row: Any) -> dict[str, Any]:
            source = sources.get(row.image_sha256)
            tasks = source.tasks if source else ()
            return {
                **to_jsonable(row),
                "name": source.name if source else None,
                "origin": source.origin if source else None,
                "tasks": [
                    {
                        "project": p,
                        "task": t,
                        "url": task_url(ls_url, p, t) if ls_url else None,
                    }
                    for p, t in tasks
                ],
            }

        print_json(
            {
                "old": diff.old,
                "new": diff.new,
                "counts": diff.counts,
                "added": [located(r) for r in diff.added],
                "removed": [located(r) for r in diff.removed],
                "relabeled": [located(r) for r in diff.relabeled],
            }
        )
        return
    c = diff.counts
    console.print(
        f"Version {diff.old} → {diff.new}: [green]+{c['added']} added[/], "
        f"[red]-{c['removed']} removed[/], [yellow]{c['relabeled']} relabeled[/]"
    )

    def image(sha: str) -> str:
        source = sources.get(sha)
        return image_cell(sha, source.name, source.tasks, ls_url) if source else sha[:HASH_SHOWN]

    for title, items in (("added", diff.added), ("removed", diff.removed)):
        if items:
            table = _image_table(title, ("label", "split"))
            for item in items[:shown]:
                table.add_row(
                    image(item.image_sha256),
                    escape(item.label),
                    item.split,
                    item.image_sha256[:HASH_SHOWN],
                )
            console.print(table)
    if diff.relabeled:
        table = _image_table("relabeled", ("old label", "new label", "split"))
        for r in diff.relabeled[:shown]:
            table.add_row(
                image(r.image_sha256),
                escape(r.old_label),
                escape(r.new_label),
                r.split,
                r.image_sha256[:HASH_SHOWN],
            )
        console.print(table)
    if len(every) > len(listed):
        console.print(f"All {len(every)} rows: [bold]a2m diff {diff.old} {diff.new} --limit 0[/].")
    print_task_links((p for s in sources.values() for p, _ in s.tasks), ls_url)


def _image_table(title: str, columns: tuple[str, ...]) -> Table:
    """Image first (it wraps), then the short cells (they never do), the hash last."""
    table = listing(title)
    table.add_column("image", ratio=1, overflow="fold")
    for col in columns:
        table.add_column(col, no_wrap=col == "split", overflow="fold")
    table.add_column("hash", no_wrap=True)
    return table
