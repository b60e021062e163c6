"""The dataset store: the only package that opens SQLAlchemy sessions.

`Store.open(settings)` gives a migrated database plus the blob store of the workspace.
"""

from annotate2model.store.db import Store

__all__ = ["Store"]
