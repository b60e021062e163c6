"""The dataset store: the only package that opens SQLAlchemy sessions.

`Store.open(settings)` gives a migrated database plus the blob store of the workspace.

`Store` is imported on first use, not with the package: SQLAlchemy and the models take 0.3 s
to import, and `a2m sync` sends its first requests to Label Studio meanwhile (`store.peek`,
`labelstudio.reading.HeadStart`), which needs `annotate2model.store.peek` without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from annotate2model.store.db import Store

__all__ = ["Store"]


def __getattr__(name: str) -> Any:
    if name == "Store":
        from annotate2model.store.db import Store

        return Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
