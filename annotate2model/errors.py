"""Errors a user can fix, and how the command line reports them.

Every error meant for the user (not a traceback) is an `A2MError`. Its message says what is wrong in
words any caller can show (the CLI, a REST API, a notebook): it names no command-line flag and no
`a2m` command. How to fix it with the command-line tool goes in `hint`, kept apart so that the CLI
prints it on a line of its own and other callers can leave it out.

What the command line prints for a failed command, one rule for all of them (`cli/app.py`):

    error: <what is wrong>
    hint: <how to fix it>          (only when there is one)

and it exits with
- 1 for an `A2MError` (and anything else a user can fix that is not about the command line);
- 2 for a command line that cannot be parsed (an unknown option, a missing argument, a value
  outside an option's choices): click's and typer's convention for usage errors, kept so that
  scripts can tell "you called it wrong" from "it could not be done";
- 130 after Ctrl-C (typer's convention, 128 + SIGINT).
An unexpected exception (a bug, a full disk, a locked database) prints one `error:` line naming it
and exits with 1; A2M_TRACEBACK=1 shows its traceback instead. Ctrl-C prints `interrupted.`
"""

from __future__ import annotations

# Exit status of a command line that cannot be parsed (click's UsageError).
USAGE_EXIT_CODE = 2


class A2MError(Exception):
    """Base of every error whose message is meant for the user, not a traceback.

    `hint`: how to fix it with the command-line tool (a command to run, a flag to pass), or None.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class WorkspaceError(A2MError):
    """No workspace, a broken workspace, or one this process may not use."""


class SettingsError(A2MError):
    """A setting (flag, environment variable or a2m.toml entry) has an invalid value."""


class StoreError(A2MError):
    """The dataset store cannot be opened, migrated or written."""


class NotFoundError(A2MError):
    """A version, run, image or task named by the user does not exist."""


class InputError(A2MError):
    """The input given to a command (a folder, a file, an argument) cannot be used."""


class InvalidImage(A2MError):
    """Bytes that are not a usable image; the message says why."""


class BlobCorrupted(StoreError):
    """A blob on disk no longer matches its SHA-256 name."""


class LabelStudioError(A2MError):
    """Label Studio is unreachable, refused the token, or answered something unusable."""


class TrainingError(A2MError):
    """A training or evaluation request that cannot run as asked."""
