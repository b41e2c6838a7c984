"""Exceptions that carry the user-facing fix.

Every error a user can cause is one of these: the CLI prints ``str(err)`` on one line
and exits with ``err.exit_code``; nothing else reaches the terminal as a traceback.
"""

from __future__ import annotations


class R1LocalError(Exception):
    """An error with a message that says what went wrong and what to do about it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class UsageError(R1LocalError):
    """Bad arguments or input on the command line."""

    exit_code = 2


class CatalogError(R1LocalError):
    """models.toml is missing, malformed, or does not match the schema."""


class UnknownModelError(R1LocalError):
    """A tag, alias, quant or name that nothing in the catalog or store matches."""


class ModelFileError(R1LocalError):
    """A GGUF (or other model file) that is missing, truncated, corrupt or unsupported."""


class DoesNotFitError(R1LocalError):
    """The model needs more memory than this machine has."""


class NetworkError(R1LocalError):
    """The hub could not be reached, or refused us."""


class DiskSpaceError(R1LocalError):
    """Not enough free disk for what was asked."""


class ContextFullError(R1LocalError):
    """The prompt does not fit in the context window."""
