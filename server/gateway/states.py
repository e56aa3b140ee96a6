"""A gateway connection's states, the changes between them, and the gateway's counters."""

from __future__ import annotations

import dataclasses
import enum


class State(enum.Enum):
    HANDSHAKE = "handshake"
    WAITING_SYNC = "waiting_sync"  # established; nothing but sent/err/pong before `sync`
    SYNCING = "syncing"  # catch-up running; live frames are parked
    LIVE = "live"
    RESYNC = "resync"  # overflowed; live delivery stopped until the next `sync`
    CLOSED = "closed"  # FINAL sealed (or the peer gone): nothing is sealed or queued again


NEXT: dict[State, frozenset[State]] = {
    State.HANDSHAKE: frozenset({State.WAITING_SYNC, State.CLOSED}),
    # Replies alone can overflow a connection before its first `sync`.
    State.WAITING_SYNC: frozenset({State.SYNCING, State.RESYNC, State.CLOSED}),
    # A failed catch-up (database unavailable) goes back to waiting for `sync`.
    State.SYNCING: frozenset(
        {State.SYNCING, State.LIVE, State.RESYNC, State.WAITING_SYNC, State.CLOSED}
    ),
    State.LIVE: frozenset({State.SYNCING, State.RESYNC, State.CLOSED}),
    State.RESYNC: frozenset({State.SYNCING, State.CLOSED}),
    State.CLOSED: frozenset(),
}
"""Every state change a connection may make; CLOSED is final."""


class StateError(Exception):
    """A state change `NEXT` does not allow: a bug, which ends the connection."""


@dataclasses.dataclass
class GatewayStats:
    """Counters of the gateway process (shared by its connections)."""

    connection_failures: int = 0
    """Connections ended by an unexpected error (`internal`) in any of their tasks."""
    handshakes_in_progress: int = 0
    """Handshakes holding an admission slot now (server/gateway/admission.py)."""
    handshakes_waiting: int = 0
    """Connections waiting in arrival order for a handshake slot now."""
    handshakes_refused_busy: int = 0
    """Connections closed `busy` since start: no slot came free within the queue deadline."""
