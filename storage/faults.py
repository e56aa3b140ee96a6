"""Which failures mean "the database is unavailable": the one place that decides it.

`Database` turns every error this module recognises into `DatabaseUnavailableError`, so the
layers above need one `except` for an outage, whatever its cause: the server refused the
connection or is not there (OSError), is starting up or shutting down (57P03, 57P01, 57P02),
the connection was lost (class 08, or any error after which the connection is closed), too
many connections or another resource limit (class 53), a timeout (connect, query, lock or
waiting for a pooled connection), the server became a read-only standby after a failover
(25006), or the transaction must simply be retried (serialization failure, deadlock). Each is
temporary: the caller may retry the same request (sends are idempotent by their cid).

Everything else (a broken rule, a bad value, a bug in our SQL) is not an outage, keeps its
own type, and must never be answered as "retry later".
"""

from __future__ import annotations

import asyncpg

from storage.bridge import BridgeClosedError
from storage.errors import DatabaseUnavailableError

# SQLSTATE classes that are an outage as a whole: connection exceptions, insufficient
# resources (too many connections, out of memory, disk full).
UNAVAILABLE_CLASSES = ("08", "53")
UNAVAILABLE_STATES = frozenset(
    {
        "57014",  # query_canceled: a statement or lock timeout
        "57P01",  # admin_shutdown: the server is shutting down
        "57P02",  # crash_shutdown: another backend crashed, all are restarted
        "57P03",  # cannot_connect_now: the server is starting up (or in recovery)
        "57P04",  # database_dropped
        "57P05",  # idle_session_timeout: the session was closed
        "25006",  # read_only_sql_transaction: this server is now a standby (failover)
        "40001",  # serialization_failure: retry the transaction
        "40P01",  # deadlock_detected: retry the transaction
        "40003",  # statement_completion_unknown: the connection went mid-statement
        "55P03",  # lock_not_available: a lock timeout
    }
)
# After these the pooled connections point at the wrong server: open new ones.
RECONNECT_STATES = frozenset({"25006"})


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


def is_unavailable(exc: BaseException) -> bool:
    """True if `exc` says the database could not be reached or used, rather than that it
    refused the work (see the module docstring)."""
    if isinstance(exc, DatabaseUnavailableError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = _sqlstate(exc)
        return state.startswith(UNAVAILABLE_CLASSES) or state in UNAVAILABLE_STATES
    # OSError covers refused, reset, unreachable, a missing Unix socket and, since Python
    # 3.11, asyncio's TimeoutError (connect_timeout, command_timeout).
    return isinstance(
        exc,
        OSError | BridgeClosedError | asyncpg.exceptions.TargetServerAttributeNotMatched,
    )


def needs_new_connections(exc: BaseException) -> bool:
    """True if the pool's open connections should be replaced (they reach a standby)."""
    return _sqlstate(exc) in RECONNECT_STATES or isinstance(
        exc, asyncpg.exceptions.TargetServerAttributeNotMatched
    )


def as_unavailable(
    exc: BaseException, *, connection_closed: bool = False
) -> DatabaseUnavailableError | None:
    """The DatabaseUnavailableError `exc` amounts to, or None if it is not an outage.

    `connection_closed`: the connection the failed work ran on is closed now. Whatever was
    raised then (typically asyncpg's InterfaceError "connection is closed" from the rollback,
    hiding the error that closed it), the connection was lost.
    """
    if isinstance(exc, DatabaseUnavailableError):
        return exc
    if connection_closed or is_unavailable(exc):
        cause = exc.__context__
        shown = cause if cause is not None and is_unavailable(cause) else exc
        detail = str(shown) or type(shown).__name__
        return DatabaseUnavailableError(f"the database is unavailable: {detail}")
    return None
