"""The handshake, one state machine per side, fed with the bytes of WebSocket messages.

    client                                   server
    ClientHello  {v, epk, dev}      ------>  receive_client_hello()  (device_id now known;
                                             the server looks the device up)
                 {v, epk, spk, hdr, sig} <-  server_hello()
    receive_server_hello()
    ClientAuth   {hdr, sig}         ------>  receive_client_auth(device_public_key)
    SecureChannel                            SecureChannel

The server proves its pinned identity by signing the transcript; the device proves its
enrolled key the same way; X25519 ephemeral keys give forward secrecy; the session keys and
both signatures cover the offered and chosen versions (no downgrade). Every transition is
listed in `CLIENT_TRANSITIONS` / `SERVER_TRANSITIONS`; a call not listed there for the current
state raises `LocalProtocolError`. Bad bytes from the peer raise `RemoteProtocolError` and
leave the machine FAILED. PROTOCOL.md §3 gives the byte-level details.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import nacl.bindings as sodium
import nacl.exceptions

from protocol import transcript as t
from protocol.channel import (
    DEFAULT_REKEY,
    HEADER_BYTES,
    RekeyPolicy,
    SecureChannel,
    StreamState,
    start_pull,
    start_push,
)
from protocol.codec import CLIENT_TO_SERVER_LIMITS, SERVER_TO_CLIENT_LIMITS
from protocol.codes import ErrorCode
from protocol.errors import LocalProtocolError, RemoteProtocolError


class ClientState(enum.Enum):
    START = "start"
    AWAIT_SERVER_HELLO = "await_server_hello"
    ESTABLISHED = "established"
    FAILED = "failed"


class ServerState(enum.Enum):
    AWAIT_CLIENT_HELLO = "await_client_hello"
    HELLO_RECEIVED = "hello_received"
    AWAIT_CLIENT_AUTH = "await_client_auth"
    ESTABLISHED = "established"
    FAILED = "failed"


CLIENT_TRANSITIONS: Mapping[tuple[ClientState, str], ClientState] = MappingProxyType(
    {
        (ClientState.START, "client_hello"): ClientState.AWAIT_SERVER_HELLO,
        (ClientState.AWAIT_SERVER_HELLO, "receive_server_hello"): ClientState.ESTABLISHED,
    }
)
"""(state, call) -> next state. A RemoteProtocolError during a call moves to FAILED."""

SERVER_TRANSITIONS: Mapping[tuple[ServerState, str], ServerState] = MappingProxyType(
    {
        (ServerState.AWAIT_CLIENT_HELLO, "receive_client_hello"): ServerState.HELLO_RECEIVED,
        (ServerState.HELLO_RECEIVED, "server_hello"): ServerState.AWAIT_CLIENT_AUTH,
        (ServerState.AWAIT_CLIENT_AUTH, "receive_client_auth"): ServerState.ESTABLISHED,
    }
)
"""(state, call) -> next state. A RemoteProtocolError during a call moves to FAILED."""


def _ephemeral(secret_key: bytes | None) -> tuple[bytes, bytes]:
    """Return (public, secret) X25519 keys: fresh, or from a fixed secret (test vectors)."""
    if secret_key is None:
        return sodium.crypto_kx_keypair()
    t.require_key("ephemeral_secret_key", secret_key, t.DH_KEY_BYTES)
    return sodium.crypto_scalarmult_base(secret_key), secret_key


def _optional_header(header: bytes | None) -> bytes | None:
    return None if header is None else t.require_key("stream_header", header, HEADER_BYTES)


class ClientHandshake:
    """The device's side. `server_public_key` is the pinned server identity key.

    `ephemeral_secret_key` and `stream_header` fix what is normally random, for test vectors
    only. `versions` are the protocol versions offered, preferred last or first alike (the
    server picks the highest it supports).
    """

    def __init__(
        self,
        *,
        server_public_key: bytes,
        device_id: bytes,
        device_secret_key: bytes,
        versions: Sequence[int] = t.SUPPORTED_VERSIONS,
        rekey: RekeyPolicy = DEFAULT_REKEY,
        ephemeral_secret_key: bytes | None = None,
        stream_header: bytes | None = None,
    ) -> None:
        self._server_pk = t.require_key(
            "server_public_key", server_public_key, t.SIGN_PUBLIC_KEY_BYTES
        )
        self._device_id = t.require_key("device_id", device_id, t.DEVICE_ID_BYTES)
        self._device_sk = t.require_key(
            "device_secret_key", device_secret_key, t.SIGN_SECRET_KEY_BYTES
        )
        if not 1 <= len(versions) <= t.MAX_OFFERED_VERSIONS or not all(
            type(v) is int and 1 <= v <= 0xFFFF for v in versions
        ):
            raise LocalProtocolError(ErrorCode.INTERNAL, f"invalid versions {versions!r}")
        self._versions = tuple(versions)
        self._rekey = rekey
        self._epk, self._esk = _ephemeral(ephemeral_secret_key)
        self._fixed_header = _optional_header(stream_header)
        self.state = ClientState.START
        self._client_hello = b""
        self.version: int | None = None
        """The version the server chose, once its hello is verified."""
        self.hello_hash: bytes | None = None
        self.server_signature_hash: bytes | None = None
        self.client_signature_hash: bytes | None = None
        self.session_keys: tuple[bytes, bytes] | None = None
        """(key_c2s, key_s2c) once established: for test vectors and debugging, never log."""

    def _advance(self, call: str) -> ClientState:
        next_state = CLIENT_TRANSITIONS.get((self.state, call))
        if next_state is None:
            raise LocalProtocolError(ErrorCode.INTERNAL, f"{call}() in state {self.state.value}")
        return next_state

    def client_hello(self) -> bytes:
        """Return the ClientHello to send as the first WebSocket message."""
        next_state = self._advance("client_hello")
        hello = t.ClientHello(versions=self._versions, epk=self._epk, device_id=self._device_id)
        self._client_hello = t.encode_client_hello(hello)
        self.state = next_state
        return self._client_hello

    def receive_server_hello(self, data: bytes) -> tuple[bytes, SecureChannel]:
        """Verify the ServerHello; return (ClientAuth to send, the established channel).

        Raises `RemoteProtocolError`: `server_key_mismatch` when the server presents another
        identity key than the pinned one, `bad_signature` when its signature does not verify
        (tampering, including a downgrade), `version_unsupported` when it chose a version we
        did not offer, or a parse error code.
        """
        next_state = self._advance("receive_server_hello")
        try:
            result = self._receive_server_hello(bytes(data))
        except RemoteProtocolError:
            self.state = ClientState.FAILED
            raise
        self.state = next_state
        return result

    def _receive_server_hello(self, data: bytes) -> tuple[bytes, SecureChannel]:
        hello = t.decode_server_hello(data)
        if hello.version not in self._versions:
            raise RemoteProtocolError(
                ErrorCode.VERSION_UNSUPPORTED, f"server chose version {hello.version}, not offered"
            )
        if hello.spk != self._server_pk:
            raise RemoteProtocolError(
                ErrorCode.SERVER_KEY_MISMATCH,
                "the server's identity key is not the pinned one (check the key out of band)",
            )
        hello_hash = t.hello_hash(self._client_hello, hello.version, hello.epk, hello.spk)
        server_sig_hash = t.server_signature_hash(hello_hash, hello.header)
        if not t.verify(self._server_pk, server_sig_hash, hello.signature):
            raise RemoteProtocolError(ErrorCode.BAD_SIGNATURE, "server signature does not verify")
        try:
            kx_rx, kx_tx = sodium.crypto_kx_client_session_keys(self._epk, self._esk, hello.epk)
        except nacl.exceptions.CryptoError:
            raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "epk: unusable X25519 key") from None
        self._esk = b""  # drop the ephemeral secret as soon as it has served
        key_c2s, key_s2c = t.derive_keys(kx_tx, kx_rx, hello_hash)
        push_state, header = start_push(key_c2s, self._fixed_header)
        client_sig_hash = t.client_signature_hash(server_sig_hash, hello.signature, header)
        auth = t.ClientAuth(header=header, signature=t.sign(self._device_sk, client_sig_hash))
        channel = SecureChannel(
            push_state=push_state,
            pull_state=start_pull(key_s2c, hello.header),
            max_seal_bytes=CLIENT_TO_SERVER_LIMITS.max_bytes,
            max_open_bytes=SERVER_TO_CLIENT_LIMITS.max_bytes,
            rekey=self._rekey,
        )
        self.version = hello.version
        self.hello_hash, self.server_signature_hash = hello_hash, server_sig_hash
        self.client_signature_hash = client_sig_hash
        self.session_keys = (key_c2s, key_s2c)
        return t.encode_client_auth(auth), channel


class ServerHandshake:
    """The server's side. `identity_secret_key` is its long-term Ed25519 key (64 bytes).

    Between `receive_client_hello` and `receive_client_auth` the caller looks up
    `device_id` and refuses unknown or revoked devices itself (`unknown_device`,
    `device_revoked`). `ephemeral_secret_key` and `stream_header` are for test vectors only.
    """

    def __init__(
        self,
        *,
        identity_secret_key: bytes,
        versions: Sequence[int] = t.SUPPORTED_VERSIONS,
        rekey: RekeyPolicy = DEFAULT_REKEY,
        ephemeral_secret_key: bytes | None = None,
        stream_header: bytes | None = None,
    ) -> None:
        self._identity_sk = t.require_key(
            "identity_secret_key", identity_secret_key, t.SIGN_SECRET_KEY_BYTES
        )
        self._identity_pk = sodium.crypto_sign_ed25519_sk_to_pk(identity_secret_key)
        self._versions = frozenset(versions)
        self._rekey = rekey
        self._epk, self._esk = _ephemeral(ephemeral_secret_key)
        self._fixed_header = _optional_header(stream_header)
        self.state = ServerState.AWAIT_CLIENT_HELLO
        self._device_id: bytes | None = None
        self.version: int | None = None
        """The version chosen, once the ClientHello is accepted."""
        self.hello_hash: bytes | None = None
        self.server_signature_hash: bytes | None = None
        self.client_signature_hash: bytes | None = None
        self.session_keys: tuple[bytes, bytes] | None = None
        """(key_c2s, key_s2c) once the hello is accepted: for test vectors, never log."""
        self._server_signature = b""
        self._push_state: StreamState | None = None

    def _advance(self, call: str) -> ServerState:
        next_state = SERVER_TRANSITIONS.get((self.state, call))
        if next_state is None:
            raise LocalProtocolError(ErrorCode.INTERNAL, f"{call}() in state {self.state.value}")
        return next_state

    @property
    def device_id(self) -> bytes:
        """The device the client claims to be (16 bytes), known after its hello."""
        if self._device_id is None:
            raise LocalProtocolError(ErrorCode.INTERNAL, "device_id before the ClientHello")
        return self._device_id

    def receive_client_hello(self, data: bytes) -> None:
        """Accept the ClientHello: pick the version and compute the session keys.

        Raises `RemoteProtocolError`: `version_unsupported` when no offered version is
        supported, or a parse error code.
        """
        next_state = self._advance("receive_client_hello")
        try:
            self._receive_client_hello(bytes(data))
        except RemoteProtocolError:
            self.state = ServerState.FAILED
            raise
        self.state = next_state

    def _receive_client_hello(self, data: bytes) -> None:
        hello = t.decode_client_hello(data)
        common = self._versions.intersection(hello.versions)
        if not common:
            raise RemoteProtocolError(
                ErrorCode.VERSION_UNSUPPORTED,
                f"offered {list(hello.versions)}, supported {sorted(self._versions)}",
            )
        version = max(common)
        try:
            kx_rx, kx_tx = sodium.crypto_kx_server_session_keys(self._epk, self._esk, hello.epk)
        except nacl.exceptions.CryptoError:
            raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "epk: unusable X25519 key") from None
        self._esk = b""  # drop the ephemeral secret as soon as it has served
        hello_hash = t.hello_hash(data, version, self._epk, self._identity_pk)
        self.session_keys = t.derive_keys(kx_rx, kx_tx, hello_hash)
        self.hello_hash, self.version, self._device_id = hello_hash, version, hello.device_id

    def server_hello(self) -> bytes:
        """Return the signed ServerHello to send (after the caller accepted `device_id`)."""
        next_state = self._advance("server_hello")
        assert self.session_keys is not None and self.hello_hash is not None
        assert self.version is not None
        push_state, header = start_push(self.session_keys[1], self._fixed_header)
        server_sig_hash = t.server_signature_hash(self.hello_hash, header)
        signature = t.sign(self._identity_sk, server_sig_hash)
        self._push_state, self._server_signature = push_state, signature
        self.server_signature_hash = server_sig_hash
        self.state = next_state
        hello = t.ServerHello(
            version=self.version,
            epk=self._epk,
            spk=self._identity_pk,
            header=header,
            signature=signature,
        )
        return t.encode_server_hello(hello)

    def receive_client_auth(self, data: bytes, device_public_key: bytes) -> SecureChannel:
        """Verify the ClientAuth against the device's enrolled key; return the channel.

        Raises `RemoteProtocolError` (`bad_signature`, or a parse error code), and
        `LocalProtocolError` when `device_public_key` is not 32 bytes.
        """
        t.require_key("device_public_key", device_public_key, t.SIGN_PUBLIC_KEY_BYTES)
        next_state = self._advance("receive_client_auth")
        try:
            channel = self._receive_client_auth(bytes(data), device_public_key)
        except RemoteProtocolError:
            self.state = ServerState.FAILED
            raise
        self.state = next_state
        return channel

    def _receive_client_auth(self, data: bytes, device_public_key: bytes) -> SecureChannel:
        auth = t.decode_client_auth(data)
        assert self.server_signature_hash is not None and self.session_keys is not None
        assert self._push_state is not None
        client_sig_hash = t.client_signature_hash(
            self.server_signature_hash, self._server_signature, auth.header
        )
        if not t.verify(device_public_key, client_sig_hash, auth.signature):
            raise RemoteProtocolError(ErrorCode.BAD_SIGNATURE, "device signature does not verify")
        self.client_signature_hash = client_sig_hash
        return SecureChannel(
            push_state=self._push_state,
            pull_state=start_pull(self.session_keys[0], auth.header),
            max_seal_bytes=SERVER_TO_CLIENT_LIMITS.max_bytes,
            max_open_bytes=CLIENT_TO_SERVER_LIMITS.max_bytes,
            rekey=self._rekey,
        )
