"""The test vectors of PROTOCOL.md: fixed inputs -> every intermediate value and message.

`compute_vectors()` runs the real implementation on the fixed inputs: the handshake and its
sample batches (§10.1), then a secretstream on its own, to be checked by pulling (§10.2).
test_vectors.py checks that PROTOCOL.md holds exactly these values;
`python -m tests.protocol.vectors` prints the markdown blocks to paste into PROTOCOL.md after
a deliberate protocol change.
"""

from __future__ import annotations

import nacl.bindings as sodium

from protocol import channel as ch
from protocol import frames as f
from protocol import frames_live as fl
from protocol.codec import encode_batch
from protocol.codes import ErrorCode
from protocol.handshake import ClientHandshake, ServerHandshake
from protocol.keys import SigningKeyPair

SERVER_IDENTITY_SEED = bytes(range(0x00, 0x20))
DEVICE_SEED = bytes(range(0x20, 0x40))
DEVICE_ID = bytes(range(0x40, 0x50))
CLIENT_EPHEMERAL_SECRET = bytes(range(0x50, 0x70))
SERVER_EPHEMERAL_SECRET = bytes(range(0x70, 0x90))
SERVER_STREAM_HEADER = bytes(range(0x90, 0xA8))
CLIENT_STREAM_HEADER = bytes(range(0xA8, 0xC0))

CONV = bytes(range(0xC0, 0xD0))
MESSAGE_ID = bytes(range(0xD0, 0xE0))
ALICE = bytes(range(0xE0, 0xF0))
FILE_ID = bytes(range(0xF0, 0x100))
SENT_AT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SERVER_REKEY = ch.RekeyPolicy(every_messages=2, interval_s=120.0)
"""The vector server rekeys every 2nd message, so its 2nd batch carries TAG_REKEY."""

TEXT = f.TextBody(text="Halo, tim! \N{WAVING HAND SIGN}")

CLIENT_BATCHES: list[list[f.ClientFrame]] = [
    [f.Sync(after=0), f.Send(cid="c-0001", conv=CONV, body=TEXT)],
    [
        f.Send(
            cid="c-0002",
            conv=CONV,
            body=f.LocationBody(lat=-6.2, lon=106.816666, acc=12.5),
            consent=f.Consent(
                purpose="location_share", scope="conversation", retention="ephemeral"
            ),
        ),
        f.Ping(),
    ],
]

SERVER_BATCHES: list[list[f.ServerFrame]] = [
    [
        f.Sent(cid="c-0001", id=MESSAGE_ID, conv=CONV, seq=1, pos=41, sent_at=SENT_AT_MS),
        f.Msg(
            id=MESSAGE_ID,
            conv=CONV,
            seq=1,
            pos=41,
            sender=ALICE,
            sender_device=DEVICE_ID,
            body=TEXT,
            consent=None,
            sent_at=SENT_AT_MS,
            cid="c-0001",
        ),
    ],
    [
        f.Msg(
            id=MESSAGE_ID[::-1],
            conv=CONV,
            seq=2,
            pos=42,
            sender=ALICE,
            sender_device=DEVICE_ID,
            body=f.FileBody(file_id=FILE_ID, name="denah.pdf", size=48_213, mime="application/pdf"),
            consent=f.Consent(
                purpose="media_share",
                scope=(ALICE,),
                retention=86_400,
                expires_at=SENT_AT_MS + 86_400_000,
            ),
            sent_at=SENT_AT_MS + 1_000,
            cid="c-0003",
        )
    ],
    [
        f.Synced(pos=42),
        f.Err(code=ErrorCode.SHUTTING_DOWN, message="server restarting"),
    ],
]
"""s2c batch 1 is tagged MESSAGE, batch 2 REKEY, batch 3 FINAL."""

CONSENT_LIVE_C2S: list[f.ClientFrame] = [
    fl.ConsentGet(cid="g-0001"),
    fl.ConsentSet(cid="g-0002", purpose="location_share", on=True),
    fl.LiveStart(cid="l-0001", conv=CONV, scope="conversation", until=SENT_AT_MS + 3_600_000),
    fl.LivePos(id=MESSAGE_ID, lat=-6.2, lon=106.816666, acc=12.5),
    fl.LiveStop(id=MESSAGE_ID),
]
CONSENT_LIVE_S2C: list[f.ServerFrame] = [
    fl.Consents(
        cid="g-0002",
        grants=(
            fl.GrantState(purpose="location_share", on=True, at=SENT_AT_MS, off=False),
            fl.GrantState(purpose="attendance", on=False, at=None, off=False),
            fl.GrantState(purpose="media_share", on=False, at=SENT_AT_MS - 1_000, off=False),
            fl.GrantState(purpose="contacts_sync", on=False, at=None, off=True),
        ),
    ),
    fl.LiveOk(cid="l-0001", id=MESSAGE_ID, until=SENT_AT_MS + 3_600_000),
    fl.LiveEnd(id=MESSAGE_ID, conv=CONV, who=ALICE, reason="withdrawn"),
    fl.ConsentRevoked(
        who=ALICE, purpose="media_share", conv=CONV, ids=(MESSAGE_ID[::-1],), at=SENT_AT_MS
    ),
    f.PolicyNotice(version="2026-01", material=True, at=SENT_AT_MS),
]
"""§10.3: the consent, live-location and policy frames, as plaintext batches (seal them as
any)."""

ERASED_S2C: list[f.ServerFrame] = [
    fl.Erased(
        conv=CONV,
        ids=(MESSAGE_ID, MESSAGE_ID[::-1]),
        reason="deleted_by_sender",
        pos=44,
        at=SENT_AT_MS + 60_000,
    ),
    fl.Erased(conv=CONV, ids=(MESSAGE_ID,), reason="retention", pos=45, at=SENT_AT_MS),
]
"""§10.4: two `erased` frames (tombstones), as one plaintext batch."""

PULL_KEY = bytes(range(0x60, 0x80))
PULL_HEADER = bytes(range(0x80, 0x98))
PULL_MESSAGES: list[tuple[int, list[f.ServerFrame]]] = [
    (ch.TAG_MESSAGE, [f.Pong()]),
    (ch.TAG_MESSAGE, [f.Synced(pos=7)]),
    (ch.TAG_REKEY, [f.Resync()]),
    (ch.TAG_MESSAGE, [f.Pong()]),
    (ch.TAG_FINAL, [f.Err(code=ErrorCode.SHUTTING_DOWN, message="bye")]),
]
"""A stream of five messages for libraries that cannot push from a fixed header: pulled in
order with `init_pull(PULL_HEADER, PULL_KEY)`, each gives its plaintext and tag. The 4th
repeats the 1st's plaintext after the rekey: a different ciphertext under the new key."""


def compute_vectors() -> dict[str, bytes]:
    """Return every named vector, in the order PROTOCOL.md lists them."""
    server_id = SigningKeyPair.from_seed(SERVER_IDENTITY_SEED)
    device = SigningKeyPair.from_seed(DEVICE_SEED)
    client = ClientHandshake(
        server_public_key=server_id.public,
        device_id=DEVICE_ID,
        device_secret_key=device.secret,
        ephemeral_secret_key=CLIENT_EPHEMERAL_SECRET,
        stream_header=CLIENT_STREAM_HEADER,
    )
    server = ServerHandshake(
        identity_secret_key=server_id.secret,
        rekey=SERVER_REKEY,
        ephemeral_secret_key=SERVER_EPHEMERAL_SECRET,
        stream_header=SERVER_STREAM_HEADER,
    )
    client_hello = client.client_hello()
    server.receive_client_hello(client_hello)
    server_hello = server.server_hello()
    client_auth, client_channel = client.receive_server_hello(server_hello)
    server_channel = server.receive_client_auth(client_auth, device.public)
    assert client.session_keys is not None and client.hello_hash is not None
    assert client.server_signature_hash is not None and client.client_signature_hash is not None

    client_epk = sodium.crypto_scalarmult_base(CLIENT_EPHEMERAL_SECRET)
    server_epk = sodium.crypto_scalarmult_base(SERVER_EPHEMERAL_SECRET)
    kx_rx, kx_tx = sodium.crypto_kx_client_session_keys(
        client_epk, CLIENT_EPHEMERAL_SECRET, server_epk
    )
    vectors = {
        "server_identity_seed": SERVER_IDENTITY_SEED,
        "server_identity_public_key": server_id.public,
        "device_seed": DEVICE_SEED,
        "device_public_key": device.public,
        "device_id": DEVICE_ID,
        "client_ephemeral_secret_key": CLIENT_EPHEMERAL_SECRET,
        "client_ephemeral_public_key": client_epk,
        "server_ephemeral_secret_key": SERVER_EPHEMERAL_SECRET,
        "server_ephemeral_public_key": server_epk,
        "server_stream_header": SERVER_STREAM_HEADER,
        "client_stream_header": CLIENT_STREAM_HEADER,
        "client_hello": client_hello,
        "hello_hash": client.hello_hash,
        "kx_c2s": kx_tx,
        "kx_s2c": kx_rx,
        "key_c2s": client.session_keys[0],
        "key_s2c": client.session_keys[1],
        "server_signature_hash": client.server_signature_hash,
        "server_hello": server_hello,
        "client_signature_hash": client.client_signature_hash,
        "client_auth": client_auth,
    }
    for i, frames in enumerate(CLIENT_BATCHES, 1):
        plaintext = encode_batch(frames)
        vectors[f"c2s_{i}_plaintext"] = plaintext
        vectors[f"c2s_{i}_ciphertext"] = client_channel.seal(plaintext)
        assert server_channel.open(vectors[f"c2s_{i}_ciphertext"]) == plaintext
    for i, server_frames in enumerate(SERVER_BATCHES, 1):
        plaintext = encode_batch(server_frames)
        vectors[f"s2c_{i}_plaintext"] = plaintext
        final = i == len(SERVER_BATCHES)
        vectors[f"s2c_{i}_ciphertext"] = server_channel.seal(plaintext, final=final)
        assert client_channel.open(vectors[f"s2c_{i}_ciphertext"]) == plaintext
    vectors.update(pull_vectors())
    vectors["consent_live_c2s_plaintext"] = encode_batch(CONSENT_LIVE_C2S)
    vectors["consent_live_s2c_plaintext"] = encode_batch(CONSENT_LIVE_S2C)
    vectors["erased_s2c_plaintext"] = encode_batch(ERASED_S2C)
    return vectors


def pull_vectors() -> dict[str, bytes]:
    """The stand-alone secretstream of §10.2: key, header, then each message's ciphertext,
    plaintext and tag (one byte)."""
    state, header = ch.start_push(PULL_KEY, PULL_HEADER)
    vectors = {"pull_key": PULL_KEY, "pull_header": header}
    for i, (tag, frames) in enumerate(PULL_MESSAGES, 1):
        plaintext = encode_batch(frames)
        ciphertext = sodium.crypto_secretstream_xchacha20poly1305_push(state, plaintext, None, tag)
        vectors[f"pull_{i}_ciphertext"] = ciphertext
        vectors[f"pull_{i}_plaintext"] = plaintext
        vectors[f"pull_{i}_tag"] = bytes([tag])
    return vectors


def render_markdown(vectors: dict[str, bytes]) -> str:
    """Format vectors as PROTOCOL.md's fenced blocks (64 hex digits a line)."""
    blocks = []
    for name, value in vectors.items():
        hex_text = value.hex()
        lines = [hex_text[i : i + 64] for i in range(0, len(hex_text), 64)]
        blocks.append(f"```hex {name}\n" + "\n".join(lines) + "\n```")
    return "\n\n".join(blocks) + "\n"


if __name__ == "__main__":
    print(render_markdown(compute_vectors()), end="")
