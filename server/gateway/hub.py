"""Who is connected where: account -> live connections, and fan-out to them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import trio

from protocol import CloseCode, ErrorCode
from server.bus.base import Bus
from server.bus.events import (
    AccountClosed,
    DeviceClosed,
    Event,
    KeyForgotten,
    LiveFrame,
    OrgFrame,
    PolicyAccepted,
    PolicyPublished,
)
from server.gateway.connection import Connection
from server.gateway.device_keys import DeviceKeyCache
from server.gateway.states import GatewayStats, State
from server.metrics import DELIVERIES

if TYPE_CHECKING:
    from server.gateway.stream import StreamFeed

logger = logging.getLogger(__name__)


class Hub:
    """The live connections of this process, by account, by device and by organization.

    It also holds what the privacy-policy gate needs (see `policy_blocked`), and the cache
    of device keys the handshake reads (`device_keys`), which the disconnect methods keep
    exact: whatever makes a device or account refused goes through them.

    With a bus (`bus`, server/bus/), what the handlers ask of the hub reaches every process:
    live-only frames, closing a device's or an account's connections, policy publications
    and acceptances, and the forgetting of destroyed data keys (`forget_key`) are shared,
    and the other processes apply them to their own hub (`apply`). Stored messages and
    tombstones are not shared this way: each process reads them from the store
    (server/gateway/stream.py, `feed`)."""

    def __init__(self, device_cache_size: int = 100_000) -> None:
        self._by_account: dict[uuid.UUID, set[Connection]] = {}
        self._by_device: dict[uuid.UUID, set[Connection]] = {}
        self._by_org: dict[uuid.UUID, set[Connection]] = {}
        self._material_policy: dict[uuid.UUID, int] = {}
        self.policy_acceptances = 0
        """How many acceptances this process has seen: a handshake that read its account's
        acceptance while this moved reads it again (`Gateway._handshake`)."""
        self.stats = GatewayStats()
        self.stream_order = trio.Lock()
        """Held by whoever fans out stream positions in this process (the feed: the
        committer's batches, what the bus announces, the writers of tombstones after their
        commit) until they are handed out: every connection then receives positions in
        increasing order (PROTOCOL.md 6.1)."""
        self.feed: StreamFeed | None = None  # with a gateway: this process's place in the stream
        self.device_keys = DeviceKeyCache(device_cache_size)
        self.bus: Bus | None = None
        self.key_forgetters: list[Callable[[uuid.UUID], None]] = []
        """Called with an account whose data key another process destroyed."""

    def attach(self, conn: Connection) -> None:
        assert conn.account_id is not None and conn.device_id is not None
        assert conn.org_id is not None
        self._by_account.setdefault(conn.account_id, set()).add(conn)
        self._by_device.setdefault(conn.device_id, set()).add(conn)
        self._by_org.setdefault(conn.org_id, set()).add(conn)

    def detach(self, conn: Connection) -> None:
        for index, key in (
            (self._by_account, conn.account_id),
            (self._by_device, conn.device_id),
            (self._by_org, conn.org_id),
        ):
            if key is None:
                continue
            conns = index.get(key)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del index[key]

    def connection_count(self) -> int:
        return sum(len(c) for c in self._by_account.values())

    def fan_out(
        self,
        accounts: Iterable[uuid.UUID],
        pos: int | None,
        frame: bytes,
        committed_at: float | None = None,
    ) -> int:
        """Give `frame` (encoded once) to every live connection of `accounts`;
        `committed_at` (time.time()) for a stored message, for the delivery latency metric.

        Only appends to buffers: never waits on a connection. Returns the number of
        connections it was handed to (on this process). A live-only frame (no `pos`) goes to
        the other processes too; a stored one (`pos`) reaches them through the store.
        """
        if pos is None and self.bus is not None:
            accounts = tuple(accounts)
            self.bus.share(LiveFrame(accounts, frame))
        return self._fan_out(accounts, pos, frame, committed_at)

    def _fan_out(
        self,
        accounts: Iterable[uuid.UUID],
        pos: int | None,
        frame: bytes,
        committed_at: float | None = None,
    ) -> int:
        by_account = self._by_account
        handed = 0
        for account in accounts:
            conns = by_account.get(account)
            if conns:
                for conn in conns:
                    conn.deliver(pos, frame, committed_at)
                handed += len(conns)
        DELIVERIES.inc(handed)
        return handed

    def fan_out_org(self, org_id: uuid.UUID, frame: bytes) -> int:
        """Give `frame` to every live connection of the organization's accounts (a live-only
        frame: no position), on every process. Returns the number of connections it was
        handed to on this one."""
        if self.bus is not None:
            self.bus.share(OrgFrame(org_id, frame))
        return self._fan_out_org(org_id, frame)

    def _fan_out_org(self, org_id: uuid.UUID, frame: bytes) -> int:
        conns = list(self._by_org.get(org_id, ()))
        for conn in conns:
            conn.deliver(None, frame)
        DELIVERIES.inc(len(conns))
        return len(conns)

    # -- the privacy-policy gate -----------------------------------------------------------

    def policy_blocked(self, conn: Connection) -> bool:
        """Must `conn`'s account accept a material privacy-policy version before it may
        send, mark receipts or type?

        Decided without the database, so a frame costs a dict lookup and a comparison:
        the hub keeps, per organization, the id of the newest material version it knows
        of, and each connection the id of the newest version its account accepted
        (storage.policies: ids follow publication order). Both are read in the
        handshake's one statement (`note_policy`) and only ever grow: `policy_published`
        raises the first, `policy_accepted` the second on every connection of the account.
        Since both moves are maxima, the order in which concurrent publications and
        acceptances reach the hub does not matter. Other processes learn of both over the
        bus; a publication the bus lost is read from the database by the standing check
        (server/gateway/standing.py, `material_policy_found`).
        """
        assert conn.org_id is not None
        return self._material_policy.get(conn.org_id, 0) > conn.accepted_policy

    def note_policy(self, conn: Connection, material_policy: int, accepted_policy: int) -> None:
        """What the handshake read: the org's newest material version, the account's
        newest accepted one."""
        assert conn.org_id is not None
        if material_policy > self._material_policy.get(conn.org_id, 0):
            self._material_policy[conn.org_id] = material_policy
        conn.accepted_policy = max(conn.accepted_policy, accepted_policy)

    def policy_published(
        self, org_id: uuid.UUID, policy_id: int, material: bool, frame: bytes
    ) -> int:
        """A version was published (committed): a material one blocks the org's accounts
        at once; every live connection of the org gets `frame` (the `policy` notice).
        Returns the number of connections it was handed to on this process."""
        if self.bus is not None:
            self.bus.share(PolicyPublished(org_id, policy_id, material, frame))
        return self._policy_published(org_id, policy_id, material, frame)

    def _policy_published(
        self, org_id: uuid.UUID, policy_id: int, material: bool, frame: bytes
    ) -> int:
        if material and policy_id > self._material_policy.get(org_id, 0):
            self._material_policy[org_id] = policy_id
        return self._fan_out_org(org_id, frame)

    def connected_orgs(self) -> list[uuid.UUID]:
        """The organizations with a live connection on this process."""
        return [org for org, conns in self._by_org.items() if conns]

    def material_policy_found(self, org_id: uuid.UUID, policy_id: int) -> bool:
        """The database says `policy_id` is the org's newest material version (a publication
        the bus did not bring: server/gateway/standing.py): block the org's accounts that
        have not accepted it, here only. True if that raised the gate."""
        if policy_id <= self._material_policy.get(org_id, 0):
            return False
        self._material_policy[org_id] = policy_id
        return True

    def policy_accepted(self, account_id: uuid.UUID, policy_id: int) -> None:
        """The account accepted the version `policy_id` (committed): its connections are
        let through again, without reconnecting."""
        if self.bus is not None:
            self.bus.share(PolicyAccepted(account_id, policy_id))
        self._policy_accepted(account_id, policy_id)

    def _policy_accepted(self, account_id: uuid.UUID, policy_id: int) -> None:
        self.policy_acceptances += 1
        self.device_keys.invalidate_account(account_id)  # cached acceptances are older
        for conn in self._by_account.get(account_id, ()):
            conn.accepted_policy = max(conn.accepted_policy, policy_id)

    def disconnect_device(self, device_id: uuid.UUID, *, signed_out: bool = False) -> None:
        """Close the live connections of a device: revoked (4005, the device wipes itself),
        or `signed_out` (4013: its session was ended elsewhere, e.g. by a password change;
        it logs in again), on every process."""
        if self.bus is not None:
            self.bus.share(DeviceClosed(device_id, signed_out))
        self._disconnect_device(device_id, signed_out)

    def _disconnect_device(self, device_id: uuid.UUID, signed_out: bool) -> None:
        # The cached key goes first: the device's next handshake reads the database.
        self.device_keys.invalidate_device(device_id)
        if signed_out:
            code, error, message = CloseCode.SIGNED_OUT, ErrorCode.SIGNED_OUT, "signed out"
        else:
            code, error, message = CloseCode.DEVICE_REVOKED, ErrorCode.DEVICE_REVOKED, "revoked"
        for conn in list(self._by_device.get(device_id, ())):
            conn.close(code, error, message)

    def is_connected(self, device_id: uuid.UUID) -> bool:
        """Does the device have a live connection on this process?"""
        return bool(self._by_device.get(device_id))

    def refuse_device(
        self, device_id: uuid.UUID, code: CloseCode, error: ErrorCode, message: str
    ) -> None:
        """Close this process's live connections of a device that may no longer connect
        (found by server/gateway/standing.py, not told by the bus): here only."""
        self.device_keys.invalidate_device(device_id)
        for conn in list(self._by_device.get(device_id, ())):
            conn.close(code, error, message)

    def disconnect_account(
        self, account_id: uuid.UUID, *, guardian_consent_required: bool = False
    ) -> None:
        """Close every live connection of a deactivated account (4012), or of a minor's
        account that now waits for a guardian's consent (4014), on every process."""
        if self.bus is not None:
            self.bus.share(AccountClosed(account_id, guardian_consent_required))
        self._disconnect_account(account_id, guardian_consent_required)

    def _disconnect_account(self, account_id: uuid.UUID, guardian_consent_required: bool) -> None:
        self.device_keys.invalidate_account(account_id)
        if guardian_consent_required:
            code, error = CloseCode.GUARDIAN_CONSENT_REQUIRED, ErrorCode.GUARDIAN_CONSENT_REQUIRED
            message = "a guardian's consent must be recorded first"
        else:
            code, error = CloseCode.ACCOUNT_DEACTIVATED, ErrorCode.ACCOUNT_DEACTIVATED
            message = "account deactivated"
        for conn in list(self._by_account.get(account_id, ())):
            conn.close(code, error, message)

    def forget_key(self, account_id: uuid.UUID) -> None:
        """An account's data key was destroyed here (and evicted from this process's
        cache): the other processes evict it too."""
        if self.bus is not None:
            self.bus.share(KeyForgotten(account_id))

    def apply(self, event: Event) -> None:
        """An event another process shared: act on it here, and only here."""
        if isinstance(event, LiveFrame):
            self._fan_out(event.accounts, None, event.frame)
        elif isinstance(event, OrgFrame):
            self._fan_out_org(event.org_id, event.frame)
        elif isinstance(event, PolicyPublished):
            self._policy_published(event.org_id, event.policy_id, event.material, event.frame)
        elif isinstance(event, PolicyAccepted):
            self._policy_accepted(event.account_id, event.policy_id)
        elif isinstance(event, DeviceClosed):
            self._disconnect_device(event.device_id, event.signed_out)
        elif isinstance(event, AccountClosed):
            self._disconnect_account(event.account_id, event.guardian_consent_required)
        else:
            for forget in self.key_forgetters:
                forget(event.account_id)

    def close_overdue_resyncs(self, now: float) -> None:
        """Close the connections told to re-sync whose time to do so has passed."""
        for conns in list(self._by_account.values()):
            for conn in list(conns):
                deadline = conn.resync_deadline
                if conn.state is State.RESYNC and deadline is not None and now > deadline:
                    conn.close(
                        CloseCode.RESYNC_REQUIRED, ErrorCode.RESYNC_REQUIRED, "no sync in time"
                    )

    def close_all(self, code: CloseCode, error: ErrorCode, message: str) -> None:
        for conns in list(self._by_account.values()):
            for conn in list(conns):
                conn.close(code, error, message)
