"""The gateway's sans-IO TLS endpoint against a real client SSLObject (certificates from
trustme, no sockets): handshake, data both ways, and refusals of what is not TLS 1.2+."""

from __future__ import annotations

import ssl
import warnings

import pytest
import trustme

from server.gateway.tls import TlsEndpoint
from server.tls import CIPHERS_TLS12


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS_TLS12)
    context.set_alpn_protocols(["http/1.1"])
    ca.issue_cert("gateway.test").configure_cert(context)
    return context


class Client:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname="gateway.test")

    def step(self) -> bool:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True


def shake(client: Client, server: TlsEndpoint) -> None:
    for _ in range(10):
        client_done = client.step()
        server_done = server.handshake(client.outgoing.read())
        client.incoming.write(server.outgoing())
        if client_done and server_done:
            return
    raise AssertionError("handshake did not finish")


def test_handshake_and_data_both_ways(ca: trustme.CA) -> None:
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.set_alpn_protocols(["http/1.1"])
    client = Client(client_context)
    server = TlsEndpoint(server_context(ca))
    shake(client, server)
    assert server.version in {"TLSv1.3", "TLSv1.2"} and server.alpn == "http/1.1"
    client.obj.write(b"GET /v1/ws HTTP/1.1\r\n")
    assert server.receive(client.outgoing.read()) == b"GET /v1/ws HTTP/1.1\r\n"
    server.send(b"HTTP/1.1 101 Switching Protocols\r\n")
    client.incoming.write(server.outgoing())
    assert client.obj.read(1024) == b"HTTP/1.1 101 Switching Protocols\r\n"
    # A record cut in two gives nothing, then everything.
    client.obj.write(b"x" * 5000)
    record = client.outgoing.read()
    assert server.receive(record[:100]) == b""
    assert server.receive(record[100:]) == b"x" * 5000


def test_tls_1_0_is_refused(ca: trustme.CA) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(old)
    with warnings.catch_warnings():  # asking for TLS 1.0 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1
    old.set_ciphers("ALL:@SECLEVEL=0")
    client = Client(old)
    server = TlsEndpoint(server_context(ca))
    client.step()
    with pytest.raises(ssl.SSLError):
        server.handshake(client.outgoing.read())


@pytest.mark.parametrize(
    "garbage",
    [b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64, b"\x16\x03\x01\x00\x05hello"],
)
def test_what_is_not_a_client_hello_is_refused(ca: trustme.CA, garbage: bytes) -> None:
    server = TlsEndpoint(server_context(ca))
    with pytest.raises(ssl.SSLError):
        server.handshake(garbage)


def test_application_data_that_came_with_the_handshake_is_not_left_behind(
    ca: trustme.CA,
) -> None:
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client = Client(client_context)
    server = TlsEndpoint(server_context(ca))
    client.step()
    assert not server.handshake(client.outgoing.read())
    client.incoming.write(server.outgoing())
    assert client.step()
    client.obj.write(b"GET /v1/ws HTTP/1.1\r\n")  # in the same flight as the client's Finished
    assert server.handshake(client.outgoing.read())
    assert server.receive(b"") == b"GET /v1/ws HTTP/1.1\r\n"
