"""Store commands: `a2m store migrate-to URL`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from annotate2model.cli.context import read_secret, state
from annotate2model.cli.render import JsonFlag, console, print_json

app = typer.Typer()
store_app = typer.Typer(help="The store's database.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("migrate-to")
def migrate_to(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Argument(
            help="The empty database to copy into, e.g. postgresql+psycopg://USER@HOST/DB "
            "(`-` reads it from stdin: a password in it shows in `ps` otherwise)."
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Copy this workspace's store into another (empty) database, a team's PostgreSQL, and
    verify every table's rows and every version's hash there.

    The store here is left as it was; blobs stay in the workspace. Afterwards, point the
    workspace at the copy with A2M_DATABASE_URL or `[store] database_url` in a2m.toml.

    Example: [bold]a2m store migrate-to postgresql+psycopg://a2m@db.example/labels[/]
    """
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from annotate2model.errors import InputError
    from annotate2model.store import Store
    from annotate2model.store.copy import copy_store, refuse_unless_empty
    from annotate2model.store.dialect import make_engine, redacted_url

    if url == "-":
        url = read_secret("Database URL: ")
    st = state(ctx)
    source = st.store()
    where = redacted_url(url)
    try:
        engine = make_engine(url)
    except (ArgumentError, ImportError) as exc:
        raise InputError(
            f"cannot use database URL {where}: {exc}",
            hint="a PostgreSQL URL reads postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE "
            "(psycopg: pip install 'annotate2model[postgres]').",
        ) from None
    # Refused before the migrations touch it: a copy never lands on someone's store.
    try:
        with engine.connect() as conn:
            refuse_unless_empty(conn, where)
    except DBAPIError as exc:
        raise InputError(f"cannot reach {where}: {exc.orig}") from None
    finally:
        engine.dispose()
    target = Store.open(st.settings(database_url=url))
    try:
        result = copy_store(
            source,
            target,
            on_table=None if as_json else _say_table,
        )
    finally:
        target.close()
    if as_json:
        print_json(result)
        return
    console.print(
        f"Copied into {escape(result.target)} and verified: "
        f"{sum(t.rows for t in result.tables)} rows in {len(result.tables)} tables, "
        f"{result.versions_verified} versions' hashes.",
        highlight=False,
    )
    console.print(
        "Next: set A2M_DATABASE_URL (or [store] database_url in a2m.toml) to that URL; the "
        "store in .a2m/ is left as it was.",
        highlight=False,
        markup=False,
    )


def _say_table(name: str, rows: int) -> None:
    console.print(f"  {name}: {rows} rows copied", highlight=False)
