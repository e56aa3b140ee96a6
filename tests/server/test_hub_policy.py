"""The hub's privacy-policy gate: decided from memory, and the same whatever order the
handshake's read, publications and acceptances reach it in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from server.gateway.connection import Connection
from server.gateway.hub import Hub
from tests.server.test_connection import make_connection

ACME, OTHER = uuid.uuid4(), uuid.uuid4()


class Hubbed:
    """A hub and connections joining it as after their handshake (no traffic)."""

    def __init__(self) -> None:
        self.hub = Hub()
        self.conns: list[Connection] = []

    def join(self, org: uuid.UUID, account: uuid.UUID) -> Connection:
        conn, peer = make_connection()
        peer.close()
        conn.org_id, conn.account_id, conn.device_id = org, account, uuid.uuid4()
        self.hub.attach(conn)
        self.conns.append(conn)
        return conn


@contextmanager
def hubbed() -> Iterator[Hubbed]:
    made = Hubbed()
    try:
        yield made
    finally:
        for conn in made.conns:
            conn.sock.close()


async def test_a_stale_handshake_read_never_undoes_a_publication_or_an_acceptance() -> None:
    with hubbed() as h:
        hub = h.hub
        maria, bob = uuid.uuid4(), uuid.uuid4()
        early = h.join(ACME, maria)
        hub.note_policy(early, 0, 0)
        assert not hub.policy_blocked(early)  # no policy: nobody is blocked

        # Version 7 (material) is published while a new connection of bob's reads the store.
        hub.policy_published(ACME, 7, True, b"")
        late = h.join(ACME, bob)
        hub.note_policy(late, 0, 0)  # read before version 7 committed
        assert hub.policy_blocked(late) and hub.policy_blocked(early)

        # Maria accepts; a handshake read from before that arrives afterwards.
        hub.policy_accepted(maria, 7)
        again = h.join(ACME, maria)
        hub.note_policy(again, 7, 0)  # the acceptance came after this read: counted, re-read
        assert hub.policy_acceptances == 1
        hub.note_policy(again, 7, 7)  # what the re-read finds
        hub.note_policy(early, 5, 3)  # an older read changes nothing
        assert not hub.policy_blocked(early) and not hub.policy_blocked(again)
        assert hub.policy_blocked(late)

        # A non-material version blocks nobody; another org's binds only its own members.
        hub.policy_published(ACME, 9, False, b"")
        assert not hub.policy_blocked(early)
        stranger = h.join(OTHER, uuid.uuid4())
        hub.note_policy(stranger, 0, 0)
        hub.policy_published(OTHER, 11, True, b"")
        assert hub.policy_blocked(stranger) and not hub.policy_blocked(early)


async def test_a_publication_goes_to_the_org_s_connections_only() -> None:
    with hubbed() as h:
        ours = [h.join(ACME, uuid.uuid4()) for _ in range(3)]
        theirs = h.join(OTHER, uuid.uuid4())
        assert h.hub.policy_published(ACME, 1, False, b"x") == 3
        h.hub.detach(ours[0])
        assert h.hub.policy_published(ACME, 2, False, b"x") == 2
        assert h.hub.policy_published(OTHER, 3, False, b"x") == 1
        h.hub.detach(theirs)
        assert h.hub.policy_published(OTHER, 4, False, b"x") == 0
