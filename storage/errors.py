"""Storage errors. They describe what happened to the data, never an HTTP status."""

from __future__ import annotations

from protocol.errors import ObrolError


class StorageError(ObrolError):
    """Root of the storage layer's errors."""


class NotFoundError(StorageError):
    """The row asked for does not exist (or is not visible to the caller's organization)."""


class ConflictError(StorageError):
    """A uniqueness rule was broken; `field` names what clashed (e.g. "work_email")."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DatabaseUnavailableError(StorageError):
    """The database could not be reached or started."""


class EmbeddedPostgresError(DatabaseUnavailableError):
    """The embedded PostgreSQL cluster could not be found, created, started or stopped."""
