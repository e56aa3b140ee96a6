"""The tester's batch reader: cheap `msg` frames, every other frame checked in full."""

from __future__ import annotations

import dataclasses
import uuid

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from loadtest.frames import MsgSeen, read_batch
from protocol import (
    Consent,
    LocationBody,
    Msg,
    RemoteProtocolError,
    Synced,
    TextBody,
    encode_batch,
)

MESSAGE = Msg(
    id=uuid.uuid4().bytes,
    conv=uuid.uuid4().bytes,
    seq=3,
    pos=41,
    sender=uuid.uuid4().bytes,
    sender_device=uuid.uuid4().bytes,
    body=TextBody(text="hello"),
    consent=None,
    sent_at=1_700_000_000_000,
    cid="lt-1",
)


def test_a_msg_is_read_for_the_fields_the_tester_uses_and_checked_frames_in_full() -> None:
    batch = encode_batch([MESSAGE, Synced(pos=41)])
    assert read_batch(batch, check=False) == [MsgSeen(MESSAGE.id, 41, "lt-1"), Synced(pos=41)]
    assert read_batch(batch, check=True) == [MESSAGE, Synced(pos=41)]


def test_a_live_location_update_is_told_apart_from_stored_messages() -> None:
    # PROTOCOL.md 6.6: ephemeral (no seq, pos or cid), its body says until when it is live.
    update = Msg(
        id=uuid.uuid4().bytes,
        conv=MESSAGE.conv,
        seq=None,
        pos=None,
        sender=MESSAGE.sender,
        sender_device=MESSAGE.sender_device,
        body=LocationBody(lat=-6.2, lon=106.8, acc=8.0, live_until=1_700_000_360_000),
        consent=Consent(purpose="location_share", scope="conversation", retention="ephemeral"),
        sent_at=1_700_000_000_000,
    )
    # An ephemeral location sent once (a `send`) is no live update.
    one_shot = dataclasses.replace(update, body=LocationBody(lat=-6.2, lon=106.8, acc=8.0))
    seen = read_batch(encode_batch([update, one_shot, MESSAGE]), check=False)
    assert [m.live for m in seen if isinstance(m, MsgSeen)] == [True, False, False]
    assert seen[0] == MsgSeen(update.id, None, None, live=True)


def test_frames_other_than_msg_are_still_checked_on_the_cheap_path() -> None:
    bad = msgpack.packb({"t": "synced", "pos": "not a number"})
    with pytest.raises(RemoteProtocolError):
        read_batch(bad, check=False)


@pytest.mark.parametrize("check", [False, True])
def test_a_batch_that_is_not_msgpack_is_a_protocol_error(check: bool) -> None:
    with pytest.raises(RemoteProtocolError):
        read_batch(b"\xc1\xc1", check=check)


def test_a_msg_without_an_id_is_a_protocol_error_on_the_cheap_path() -> None:
    with pytest.raises(RemoteProtocolError):
        read_batch(msgpack.packb({"t": "msg", "pos": 1}), check=False)
