"""Properties: any bytes only raise our protocol error; batches and channels round-trip."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
from hypothesis import given
from hypothesis import strategies as st

from protocol import frames as f
from protocol.channel import RekeyPolicy
from protocol.codec import (
    decode_client_batch,
    decode_client_batch_lenient,
    decode_server_batch,
    encode,
    encode_batch,
)
from protocol.errors import RemoteProtocolError
from tests.protocol.helpers import CLIENT_FRAMES, DEVICE_KEY, SERVER_FRAMES, established, handshakes


def only_remote_errors(call: Callable[[], object]) -> None:
    """h11's contract: anything but RemoteProtocolError escaping is a bug."""
    with contextlib.suppress(RemoteProtocolError):
        call()


# --- strategies ---------------------------------------------------------------------------

ids = st.binary(min_size=16, max_size=16)
positions = st.integers(0, 2**53 - 1)
texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
cids = st.from_regex(r"[\x21-\x7e]{1,64}", fullmatch=True)
consents = st.builds(
    f.Consent,
    purpose=st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
    scope=st.one_of(
        st.just("conversation"), st.lists(ids, min_size=1, max_size=3, unique=True).map(tuple)
    ),
    retention=st.one_of(st.sampled_from(["ephemeral", "default"]), st.integers(1, 2**32 - 1)),
    expires_at=st.none() | positions,
)
locations = st.builds(
    f.LocationBody,
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    acc=st.floats(0, 1e6),
    live_until=st.none() | positions,
)
files = st.builds(
    f.FileBody,
    file_id=ids,
    name=texts.filter(lambda s: not any(c < " " or c == "\x7f" for c in s)),
    size=positions,
    mime=st.sampled_from(["image/png", "application/pdf", "text/plain"]),
    thumb=st.none() | st.binary(min_size=1, max_size=64),
)
sends = st.one_of(
    st.builds(f.Send, cid=cids, conv=ids, body=st.builds(f.TextBody, text=texts)),
    st.builds(f.Send, cid=cids, conv=ids, body=locations | files, consent=consents),
)
client_frames: st.SearchStrategy[f.ClientFrame] = st.one_of(
    sends,
    st.builds(f.Ack, pos=positions),
    st.builds(f.Sync, after=positions),
    st.builds(f.Receipt, conv=ids, id=ids, status=st.sampled_from(f.ReceiptStatus)),
    st.builds(f.Typing, conv=ids, on=st.booleans()),
    st.just(f.Ping()),
)
server_frames: st.SearchStrategy[f.ServerFrame] = st.one_of(
    st.builds(
        f.Msg,
        id=ids,
        conv=ids,
        seq=st.integers(1, 2**53 - 1),
        pos=st.integers(1, 2**53 - 1),
        sender=ids,
        sender_device=ids,
        body=st.builds(f.TextBody, text=texts),
        consent=st.none(),
        sent_at=positions,
        cid=st.none() | cids,
    ),
    st.builds(
        f.Sent, cid=cids, id=ids, conv=ids, seq=st.just(None), pos=st.just(None), sent_at=positions
    ),
    st.builds(f.Synced, pos=positions),
    st.builds(f.TypingNotice, conv=ids, who=ids, on=st.booleans()),
    st.sampled_from(SERVER_FRAMES),
)

KEYS = [
    "t",
    "cid",
    "conv",
    "kind",
    "body",
    "consent",
    "pos",
    "after",
    "id",
    "status",
    "on",
    "text",
    "lat",
    "lon",
    "acc",
    "purpose",
    "scope",
    "retention",
    "seq",
    "from",
    "dev",
    "at",
    "code",
    "msg",
    "who",
    "version",
    "material",
    "v",
    "epk",
    "dev",
    "hdr",
    "sig",
    "spk",
]
TYPES = [
    "send",
    "ack",
    "sync",
    "receipt",
    "typing",
    "ping",
    "msg",
    "sent",
    "err",
    "synced",
    "resync",
    "pong",
    "withdrawn",
    "policy",
    "notice",
    "text",
    "file",
    "location",
    "system",
    "client_hello",
    "server_hello",
    "client_auth",
    "conversation",
    "ephemeral",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.sampled_from(TYPES),
    st.text(max_size=8),
    st.binary(max_size=40),
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=8)
    ),
    max_leaves=30,
)
"""msgpack values shaped like frames: real keys and type names, wrong types everywhere."""


# --- only RemoteProtocolError -------------------------------------------------------------


@given(st.binary(max_size=300))
def test_random_bytes_into_the_decoders_only_raise_remote_errors(data: bytes) -> None:
    only_remote_errors(lambda: decode_client_batch(data))
    only_remote_errors(lambda: decode_client_batch_lenient(data))
    only_remote_errors(lambda: decode_server_batch(data))


@given(st.lists(msgpack_values, min_size=1, max_size=4))
def test_frame_shaped_values_into_the_decoders_only_raise_remote_errors(values: list[Any]) -> None:
    data = b"".join(msgpack.packb(v, use_bin_type=True) for v in values)
    only_remote_errors(lambda: decode_client_batch(data))
    only_remote_errors(lambda: decode_server_batch(data))
    try:
        results = decode_client_batch_lenient(data)
    except RemoteProtocolError as error:
        results = [error]
    for result in results:  # every refusal can be reported back in an `err` frame
        if isinstance(result, RemoteProtocolError):
            encode(f.Err.from_error(result))


@given(st.sampled_from(CLIENT_FRAMES + SERVER_FRAMES), st.data())
def test_mutated_frames_only_raise_remote_errors(frame: f.Frame, data: st.DataObject) -> None:
    encoded = bytearray(encode(frame))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(encoded)))
    mutated = bytes(encoded[:cut])
    only_remote_errors(lambda: decode_client_batch(mutated))
    only_remote_errors(lambda: decode_server_batch(mutated))


@given(st.binary(max_size=200) | msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)))
def test_any_bytes_into_the_handshake_machines_only_raise_remote_errors(data: bytes) -> None:
    client, server = handshakes()
    only_remote_errors(lambda: server.receive_client_hello(data))
    client.client_hello()
    only_remote_errors(lambda: client.receive_server_hello(data))
    client, server = handshakes()
    server.receive_client_hello(client.client_hello())
    server.server_hello()
    only_remote_errors(lambda: server.receive_client_auth(data, DEVICE_KEY.public))


@given(st.lists(st.binary(max_size=100), max_size=5))
def test_any_bytes_into_an_open_channel_only_raise_remote_errors(messages: list[bytes]) -> None:
    pair = established()
    for message in messages:
        only_remote_errors(partial(pair.server.open, message))
        only_remote_errors(partial(pair.client.open, message))


# --- round trips --------------------------------------------------------------------------


@given(st.lists(client_frames, min_size=1, max_size=12), st.data())
def test_any_split_of_client_frames_into_batches_decodes_to_the_same_frames(
    frames: list[f.ClientFrame], data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(1, len(frames) - 1))) if len(frames) > 1 else set())
    bounds = [0, *cuts, len(frames)]
    decoded: list[f.ClientFrame] = []
    for start, end in itertools.pairwise(bounds):
        decoded += decode_client_batch(encode_batch(frames[start:end]))
    assert decoded == frames
    assert decode_client_batch(b"".join(encode(x) for x in frames)) == frames


@given(st.lists(server_frames, min_size=1, max_size=12))
def test_any_list_of_server_frames_round_trips(frames: list[f.ServerFrame]) -> None:
    assert decode_server_batch(encode_batch(frames)) == frames


@given(
    st.lists(st.binary(max_size=600), min_size=1, max_size=30),
    st.integers(1, 5),
    st.lists(st.none() | st.floats(0, 1e6), min_size=30, max_size=30),
)
def test_seal_then_open_returns_every_plaintext_in_order(
    plaintexts: list[bytes], every: int, times: list[float | None]
) -> None:
    pair = established(RekeyPolicy(every_messages=every, interval_s=10.0))
    now = 0.0
    for plaintext, step in zip(plaintexts, times, strict=False):
        now = now if step is None else now + step
        assert pair.server.open(pair.client.seal(plaintext, now)) == plaintext
        assert pair.client.open(pair.server.seal(plaintext, now if step else None)) == plaintext
