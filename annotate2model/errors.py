"""Errors a user can fix. The CLI turns each into one clear message and a non-zero exit."""

from __future__ import annotations


class A2MError(Exception):
    """Base of every error whose message is meant for the user, not a traceback."""

    exit_code = 1


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
