"""The device-key cache: what a handshake needs of a known device, without the database.

Exact, not eventually right: an entry only ever says "this device may connect" (a refused
or unknown device is never cached, so it is read from the database every time), and every
change that could make a cached device refused - a revocation, a deactivation, a sign-out
(logout, a password change elsewhere), a guardian's consent withdrawn, an account
cancelled - invalidates its entries before the change is acknowledged: the hub calls
`invalidate_device` / `invalidate_account` from `disconnect_device` / `disconnect_account`,
which every such handler calls after its commit. Another process learns of those events
over the bus and calls the same two functions (through the hub's disconnect methods, which
also close its live connections).

A read that started before an invalidation may return what was true before it: `generation`
moves on every invalidation, and the handshake stores (and trusts) what it read only if it
did not move meanwhile (`store` checks it).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

from storage.devices import Credentials


class DeviceKeyCache:
    """Credentials of devices that may connect, by device id; at most `max_entries`, least
    recently used out first."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[uuid.UUID, Credentials] = OrderedDict()
        self._by_account: dict[uuid.UUID, set[uuid.UUID]] = {}
        self.generation = 0
        """Moves on every invalidation: a read that began at another generation may be stale."""
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, device_id: uuid.UUID) -> bool:
        return device_id in self._entries

    def get(self, device_id: uuid.UUID) -> Credentials | None:
        """The cached credentials, or None (then read them from the database)."""
        found = self._entries.get(device_id)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(device_id)
        self.hits += 1
        return found

    def store(self, credentials: Credentials, read_at_generation: int) -> bool:
        """Keep credentials read from the database while the generation was
        `read_at_generation`. Returns False (keeping nothing) if an invalidation came in
        between: the read may predate it, so read again. A device that may not connect is
        never kept (but True is returned: the read is current)."""
        if read_at_generation != self.generation:
            return False
        if self.max_entries <= 0 or not may_connect(credentials):
            return True
        device_id = credentials.device_id
        self._drop(device_id)
        self._entries[device_id] = credentials
        self._by_account.setdefault(credentials.account_id, set()).add(device_id)
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)
        return True

    def invalidate_device(self, device_id: uuid.UUID) -> None:
        """Forget the device (revoked, signed out, ...): its next handshake reads the
        database. Call before the change is acknowledged."""
        self.generation += 1
        self._drop(device_id)

    def invalidate_account(self, account_id: uuid.UUID) -> None:
        """Forget every device of the account (deactivated, cancelled, waiting for a
        guardian's consent, a newer policy accepted, ...). Call before the change is
        acknowledged."""
        self.generation += 1
        for device_id in list(self._by_account.get(account_id, ())):
            self._drop(device_id)

    def clear(self) -> None:
        """Forget everything (an event that concerns a whole organization)."""
        self.generation += 1
        self._entries.clear()
        self._by_account.clear()

    def _drop(self, device_id: uuid.UUID) -> None:
        old = self._entries.pop(device_id, None)
        if old is None:
            return
        devices = self._by_account.get(old.account_id)
        if devices is not None:
            devices.discard(device_id)
            if not devices:
                del self._by_account[old.account_id]


def may_connect(credentials: Credentials) -> bool:
    """Nothing stands in the device's way (the conditions of `gateway_refusal`)."""
    return not (
        credentials.revoked
        or not credentials.account_active
        or credentials.guardian_consent_required
        or credentials.password_change_required
        or credentials.signed_out
    )
