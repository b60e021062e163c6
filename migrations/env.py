"""Alembic environment for the annotate2model store.

The store opens it programmatically (`annotate2model.store.db.alembic_config`) and hands over its
engine; batch mode lets SQLite apply ALTERs by copying tables.
"""

from __future__ import annotations

from alembic import context

from annotate2model.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from annotate2model.store.dialect import make_engine

        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
