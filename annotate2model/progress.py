"""How long-running library code reports progress without printing.

Library functions take a `Progress` and call it; the CLI passes one that draws Rich bars, tests and
other callers get `NullProgress`. Warnings that must reach the user travel the same way (`note`).
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def begin(self, description: str, total: float | None = None) -> None:
        """Start a stage; `total` is None when its length is unknown (a spinner)."""

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        """Move the current stage on; `status` is a short live text such as a loss."""

    def end(self) -> None:
        """Finish the current stage."""

    def note(self, message: str) -> None:
        """Tell the user something worth knowing that does not stop the work (a skipped file)."""


class NullProgress:
    """Reports nothing; the default for library callers."""

    def begin(self, description: str, total: float | None = None) -> None:
        pass

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        pass

    def end(self) -> None:
        pass

    def note(self, message: str) -> None:
        pass
