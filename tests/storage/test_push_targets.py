"""Who a committed batch alerts: the linear computation equals the obvious quadratic one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from storage.messages import StoredMessage
from storage.push_outbox import PushTarget, push_targets

PEOPLE = [uuid.UUID(int=i) for i in range(1, 6)]
CONVERSATIONS = [uuid.UUID(int=100 + i) for i in range(3)]
DEVICE = uuid.UUID(int=999)
NOW = datetime.now(UTC)


def brute_force(
    stored: list[StoredMessage], members: dict[uuid.UUID, set[uuid.UUID]]
) -> list[PushTarget]:
    found = {}
    for account in sorted({a for group in members.values() for a in group}):
        visible = [
            m
            for m in stored
            if account in members[m.conversation_id]
            and m.sender_id != account
            and (m.scope is None or account in m.scope)
        ]
        if visible:
            found[account] = PushTarget(account, max(visible, key=lambda m: m.pos), len(visible))
    return list(found.values())


messages = st.lists(
    st.tuples(
        st.sampled_from(CONVERSATIONS),
        st.sampled_from(PEOPLE),
        st.none() | st.frozensets(st.sampled_from(PEOPLE), min_size=1),
    ),
    max_size=12,
)
memberships = st.fixed_dictionaries({c: st.sets(st.sampled_from(PEOPLE)) for c in CONVERSATIONS})


@given(messages, memberships)
def test_push_targets_match_the_definition(
    drawn: list[tuple[uuid.UUID, uuid.UUID, frozenset[uuid.UUID] | None]],
    members: dict[uuid.UUID, set[uuid.UUID]],
) -> None:
    stored = [
        StoredMessage(
            uuid.UUID(int=1000 + pos),
            conversation,
            pos,
            pos,
            sender,
            DEVICE,
            f"c{pos}",
            "text",
            b"",
            None,
            NOW,
            None if scope is None else tuple(sorted(scope)),
        )
        for pos, (conversation, sender, scope) in enumerate(drawn, start=1)
    ]
    assert push_targets(stored, members) == brute_force(stored, members)
