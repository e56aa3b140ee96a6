"""Shared builders for protocol tests: keys, a finished handshake, sample frames."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import frames as f
from protocol import frames_live as fl
from protocol.channel import DEFAULT_REKEY, RekeyPolicy, SecureChannel
from protocol.codes import ErrorCode
from protocol.handshake import ClientHandshake, ServerHandshake
from protocol.keys import SigningKeyPair

SERVER_KEY = SigningKeyPair.from_seed(b"S" * 32)
DEVICE_KEY = SigningKeyPair.from_seed(b"D" * 32)
DEVICE_ID = b"\x0d" * 16
CONV = b"\xc0" * 16
MSG_ID = b"\x1d" * 16
ALICE = b"\xa1" * 16
FILE_ID = b"\xf1" * 16


def handshakes(
    versions: tuple[int, ...] = (1,),
    server_versions: tuple[int, ...] = (1,),
    rekey: RekeyPolicy = DEFAULT_REKEY,
    pinned_key: bytes = SERVER_KEY.public,
) -> tuple[ClientHandshake, ServerHandshake]:
    """A fresh client and server handshake for the shared keys."""
    client = ClientHandshake(
        server_public_key=pinned_key,
        device_id=DEVICE_ID,
        device_secret_key=DEVICE_KEY.secret,
        versions=versions,
        rekey=rekey,
    )
    server = ServerHandshake(
        identity_secret_key=SERVER_KEY.secret, versions=server_versions, rekey=rekey
    )
    return client, server


@dataclass
class Pair:
    client: SecureChannel
    server: SecureChannel


def established(rekey: RekeyPolicy = DEFAULT_REKEY) -> Pair:
    """Run a whole handshake and return both ends of the channel."""
    client, server = handshakes(rekey=rekey)
    server.receive_client_hello(client.client_hello())
    auth, client_channel = client.receive_server_hello(server.server_hello())
    return Pair(client=client_channel, server=server.receive_client_auth(auth, DEVICE_KEY.public))


LOCATION_CONSENT = f.Consent(purpose="location_share", scope="conversation", retention="ephemeral")
MEDIA_CONSENT = f.Consent(purpose="media_share", scope=(ALICE,), retention=3600, expires_at=10**12)
TEXT = f.TextBody(text="halo")
LOCATION = f.LocationBody(lat=-6.2, lon=106.8, acc=5.0, live_until=1_700_000_000_000)
FILE = f.FileBody(file_id=FILE_ID, name="a.png", size=10, mime="image/png", thumb=b"\x89PNG")

CLIENT_FRAMES: list[f.ClientFrame] = [
    f.Send(cid="c1", conv=CONV, body=TEXT),
    f.Send(cid="c2", conv=CONV, body=LOCATION, consent=LOCATION_CONSENT),
    f.Send(cid="c3", conv=CONV, body=FILE, consent=MEDIA_CONSENT),
    f.Ack(pos=0),
    f.Ack(pos=2**53 - 1),
    f.Sync(after=17),
    f.Receipt(conv=CONV, id=MSG_ID, status=f.ReceiptStatus.READ),
    f.Typing(conv=CONV, on=True),
    f.Ping(),
    f.PushRegister(cid="p1", provider="apns", token="ab" * 32, env="sandbox", topic="org.x.app"),
    f.PushRegister(cid="p2", provider="fcm", token="tok:en", project="proj", preview=True),
    f.PushUnregister(cid="p3"),
    fl.ConsentGet(cid="g1"),
    fl.ConsentSet(cid="g2", purpose="location_share", on=False),
    fl.LiveStart(cid="l1", conv=CONV, scope=(ALICE,), until=1_700_000_600_000),
    fl.LiveStart(cid="l2", conv=CONV, scope="conversation", until=1),
    fl.LivePos(id=MSG_ID, lat=-6.2, lon=106.816666, acc=12.5),
    fl.LiveStop(id=MSG_ID),
]

SERVER_FRAMES: list[f.ServerFrame] = [
    f.Msg(
        id=MSG_ID,
        conv=CONV,
        seq=3,
        pos=99,
        sender=ALICE,
        sender_device=DEVICE_ID,
        body=TEXT,
        consent=None,
        sent_at=1_700_000_000_000,
        cid="c1",
    ),
    f.Msg(
        id=MSG_ID,
        conv=CONV,
        seq=None,
        pos=None,
        sender=ALICE,
        sender_device=DEVICE_ID,
        body=LOCATION,
        consent=LOCATION_CONSENT,
        sent_at=1,
    ),
    f.Msg(
        id=MSG_ID,
        conv=CONV,
        seq=4,
        pos=100,
        sender=ALICE,
        sender_device=DEVICE_ID,
        body=FILE,
        consent=MEDIA_CONSENT,
        sent_at=2,
    ),
    f.Msg(
        id=MSG_ID,
        conv=CONV,
        seq=5,
        pos=101,
        sender=None,
        sender_device=None,
        body=f.SystemBody(event="member_joined", text=""),
        consent=None,
        sent_at=3,
    ),
    f.Sent(cid="c1", id=MSG_ID, conv=CONV, seq=3, pos=99, sent_at=4),
    f.Sent(cid="c2", id=MSG_ID, conv=CONV, seq=None, pos=None, sent_at=4),
    f.Err(code=ErrorCode.NOT_MEMBER, message="not a member", ref="c1", ref_type="send"),
    f.Err(code=ErrorCode.RATE_LIMITED, message=""),
    f.ReceiptNotice(conv=CONV, id=MSG_ID, status=f.ReceiptStatus.DELIVERED, who=ALICE, at=5),
    f.TypingNotice(conv=CONV, who=ALICE, on=False),
    f.Synced(pos=101),
    f.Resync(),
    f.Pong(),
    f.PushOk(cid="p1"),
    fl.Consents(
        cid="g1",
        grants=(
            fl.GrantState(purpose="location_share", on=True, at=1_700_000_000_000, off=False),
            fl.GrantState(purpose="attendance", on=False, at=None, off=True),
        ),
    ),
    fl.ConsentRevoked(who=ALICE, purpose="location_share", conv=CONV, ids=(MSG_ID,), at=6),
    fl.ConsentRevoked(who=ALICE, purpose="media_share", conv=CONV, ids=(), at=7),
    fl.Erased(conv=CONV, ids=(MSG_ID,), reason="consent_withdrawn", pos=9, at=8),
    fl.LiveOk(cid="l1", id=MSG_ID, until=1_700_000_600_000),
    fl.LiveEnd(id=MSG_ID, conv=CONV, who=ALICE, reason="withdrawn"),
    f.PolicyNotice(version="2026-01", material=True, at=1_767_225_600_000),
    f.PolicyNotice(version="v3.1_en-draft", material=False, at=0),
    f.OrgNotice(
        id=MSG_ID,
        kind="service_ending",
        title="Closing",
        text="Bye.\nExport first.",
        at=1,
        ends_at=2,
    ),
    f.OrgNotice(id=MSG_ID, kind="security_incident", title="Leak", text="Change it.", at=0),
]
