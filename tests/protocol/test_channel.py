"""The encrypted phase: what a receiver refuses, rekeying, and the final message."""

from __future__ import annotations

from collections.abc import Callable

import nacl.bindings as sodium
import pytest

from protocol.channel import ABYTES, TAG_FINAL, TAG_MESSAGE, TAG_REKEY, RekeyPolicy, SecureChannel
from protocol.codes import CloseCode, ErrorCode
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.transcript import decode_client_auth
from tests.protocol.helpers import DEVICE_KEY, established, handshakes


def open_error(channel_open: Callable[[bytes], bytes], data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        channel_open(data)
    return info.value


def test_messages_arrive_in_order_both_ways() -> None:
    pair = established()
    sealed = [pair.client.seal(b"batch %d" % i) for i in range(5)]
    assert [pair.server.open(c) for c in sealed] == [b"batch %d" % i for i in range(5)]
    assert pair.client.open(pair.server.seal(b"reply")) == b"reply"
    assert len(sealed[0]) == len(b"batch 0") + ABYTES


def test_tampered_message_is_refused_and_closes_with_decrypt_failed() -> None:
    pair = established()
    sealed = bytearray(pair.client.seal(b"hello"))
    sealed[-1] ^= 1
    error = open_error(pair.server.open, bytes(sealed))
    assert (error.code, error.close_code) == (ErrorCode.DECRYPT_FAILED, CloseCode.DECRYPT_FAILED)


def test_replayed_message_is_refused() -> None:
    pair = established()
    sealed = pair.client.seal(b"pay 10")
    assert pair.server.open(sealed) == b"pay 10"
    assert open_error(pair.server.open, sealed).code is ErrorCode.DECRYPT_FAILED


def test_reordered_messages_are_refused() -> None:
    pair = established()
    pair.client.seal(b"1")
    second = pair.client.seal(b"2")
    assert open_error(pair.server.open, second).code is ErrorCode.DECRYPT_FAILED


def test_truncated_and_short_messages_are_refused() -> None:
    pair = established()
    sealed = pair.client.seal(b"some batch")
    assert open_error(pair.server.open, sealed[:-1]).code is ErrorCode.DECRYPT_FAILED
    assert open_error(established().server.open, b"\x00" * (ABYTES - 1)).code is (
        ErrorCode.DECRYPT_FAILED
    )


def test_message_from_the_other_direction_is_refused() -> None:
    """A message reflected back to its sender does not decrypt: each way has its own key."""
    pair = established()
    assert open_error(pair.client.open, pair.client.seal(b"x")).code is ErrorCode.DECRYPT_FAILED


def test_after_a_receive_error_the_channel_stays_failed() -> None:
    pair = established()
    good = pair.client.seal(b"good")
    open_error(pair.server.open, b"\x00" * 40)
    assert open_error(pair.server.open, good).code is ErrorCode.DECRYPT_FAILED


def test_nothing_is_accepted_after_the_final_message() -> None:
    pair = established()
    final = pair.server.seal(b"bye", final=True)
    assert pair.server.closed_for_sending
    assert pair.client.open(final) == b"bye"
    assert pair.client.peer_finished
    with pytest.raises(LocalProtocolError):
        pair.server.seal(b"more")
    assert open_error(pair.client.open, final).code is ErrorCode.CHANNEL_CLOSED


def test_oversized_messages_are_refused_on_both_ends() -> None:
    pair = established()
    with pytest.raises(LocalProtocolError) as info:
        pair.client.seal(b"x" * (128 * 1024 + 1))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    big = pair.server.seal(b"x" * (1024 * 1024))
    assert pair.client.open(big) == b"x" * (1024 * 1024)
    assert open_error(pair.server.open, b"\x00" * (128 * 1024 + ABYTES + 1)).code is (
        ErrorCode.FRAME_TOO_LARGE
    )


class Spy:
    """Decrypts a copy of the client->server stream to read the tags the sender chose."""

    def __init__(self, key: bytes, header: bytes) -> None:
        self.state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(self.state, header, key)

    def tag(self, ciphertext: bytes) -> int:
        _, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self.state, ciphertext)
        return int(tag)


def spied_pair(rekey: RekeyPolicy) -> tuple[SecureChannel, SecureChannel, Spy]:
    """Client and server channel ends, and a spy on the client -> server stream."""
    client, server = handshakes(rekey=rekey)
    server.receive_client_hello(client.client_hello())
    auth, channel = client.receive_server_hello(server.server_hello())
    server_channel = server.receive_client_auth(auth, DEVICE_KEY.public)
    assert client.session_keys is not None
    spy = Spy(client.session_keys[0], decode_client_auth(auth).header)
    return channel, server_channel, spy


def test_sender_rekeys_every_n_messages_and_the_receiver_follows() -> None:
    client, server, spy = spied_pair(RekeyPolicy(every_messages=3, interval_s=1e9))
    tags = []
    for i in range(7):
        sealed = client.seal(b"m%d" % i)
        tags.append(spy.tag(sealed))
        assert server.open(sealed) == b"m%d" % i
    rekey, msg = TAG_REKEY, TAG_MESSAGE
    assert tags == [msg, msg, rekey, msg, msg, rekey, msg]


def test_sender_rekeys_after_the_interval() -> None:
    client, server, spy = spied_pair(RekeyPolicy(every_messages=1000, interval_s=10.0))
    times = [100.0, 105.0, 109.9, 110.0, 111.0, None, 119.9, 120.0]
    tags = []
    for i, now in enumerate(times):
        sealed = client.seal(b"m%d" % i, now)
        tags.append(spy.tag(sealed))
        assert server.open(sealed) == b"m%d" % i
    rekey, msg = TAG_REKEY, TAG_MESSAGE
    assert tags == [msg, msg, msg, rekey, msg, msg, msg, rekey]


def test_final_tag_is_what_the_peer_sees() -> None:
    client, _, spy = spied_pair(RekeyPolicy())
    assert spy.tag(client.seal(b"bye", final=True)) == TAG_FINAL
