"""The gateway over TLS (wss://) with certificates made at test time: the full flow, a client
that does not trust the CA, plain and old-TLS peers on the TLS port, a stalled TLS
handshake, and a certificate reload that new connections see while old ones carry on."""

from __future__ import annotations

import logging
import signal
import ssl
import warnings
from pathlib import Path

import pytest
import trio
import trustme

from loadtest.client import TlsVerificationError, connect
from protocol import Msg, Send, Sent, Synced, TextBody
from tests.harness import Harness, Session
from tests.server.test_gateway_refusals import frames_until
from tests.server.test_tls_api import Pki, pki, tls_server

__all__ = ["pki"]  # the fixture


def gateway_address(server: Harness) -> tuple[str, int]:
    host, port = server.gateway_url.removeprefix("wss://").split("/")[0].split(":")
    return host, int(port)


async def still_served(server: Harness, who: Session, pki: Pki) -> None:
    """A trusting client still connects over wss and syncs."""
    async with await connect(
        server.gateway_url, who.identity(server.server_key), ssl_context=pki.client_context
    ) as client:
        await client.sync(0)
        await frames_until(client, Synced)


async def reload_to(
    server: Harness, pki: Pki, subject: str, key_type: trustme.KeyType = trustme.KeyType.RSA
) -> None:
    """Install a new certificate, send SIGHUP, and wait until new gateway connections get it."""
    pki.install(subject, key_type)
    signal.raise_signal(signal.SIGHUP)
    with trio.fail_after(10):
        while await served_subject(server, pki.client_context) != subject:  # noqa: ASYNC110 (the reload runs in the server's own task)
            await trio.sleep(0.05)


async def served_subject(server: Harness, context: ssl.SSLContext) -> str:
    """The common name of the certificate a new TLS connection to the gateway is shown."""
    host, port = gateway_address(server)
    stream = trio.SSLStream(await trio.open_tcp_stream(host, port), context, server_hostname=host)
    await stream.do_handshake()
    cert = stream.getpeercert()
    await stream.aclose()
    assert cert is not None
    names = dict(pair[0] for pair in cert["subject"])
    return str(names["commonName"])


async def test_the_full_gateway_flow_over_wss(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_server(nursery, database_url, tmp_path / "data", pki) as server:
        assert server.gateway_url.startswith("wss://")
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob")
        conv = await server.group(ann, bob)
        context = pki.client_context
        async with (
            await connect(
                server.gateway_url, bob.identity(server.server_key), ssl_context=context
            ) as watcher,
            await connect(
                server.gateway_url, ann.identity(server.server_key), ssl_context=context
            ) as sender,
        ):
            await watcher.sync(0)
            await frames_until(watcher, Synced)
            await sender.sync(0)
            await sender.send(Send(cid="over-tls", conv=conv.bytes, body=TextBody(text="hi")))
            await frames_until(sender, Sent)
            got = await frames_until(watcher, Msg)
            assert [f.cid for f in got if isinstance(f, Msg)] == ["over-tls"]


async def test_a_client_that_does_not_trust_the_ca_is_refused_clearly(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_server(nursery, database_url, tmp_path / "data", pki) as server:
        ann = await server.create_org()
        with pytest.raises(TlsVerificationError) as info:
            await connect(server.gateway_url, ann.identity(server.server_key))
        assert "certificate verify failed" in str(info.value)
        # The server serves on.
        await still_served(server, ann, pki)


async def test_plain_old_and_stalled_peers_on_the_tls_port_fail_alone(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_server(
        nursery, database_url, tmp_path / "data", pki, handshake_timeout_s=1.0
    ) as server:
        host, port = gateway_address(server)
        # A plain WebSocket upgrade, garbage: cut off at once (no hang).
        for first in (b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64):
            stream = await trio.open_tcp_stream(host, port)
            await stream.send_all(first)
            with trio.fail_after(10):
                while await stream.receive_some(1024):
                    pass
            await stream.aclose()
        # TLS 1.0: refused in the handshake.
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        pki.ca.configure_trust(old)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1
        old.set_ciphers("ALL:@SECLEVEL=0")
        tls10 = trio.SSLStream(await trio.open_tcp_stream(host, port), old, server_hostname=host)
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            await tls10.do_handshake()
        await tls10.aclose()
        # A handshake that stalls after the ClientHello is closed at the handshake deadline.
        stalled = await trio.open_tcp_stream(host, port)
        await stalled.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # cut short
        with trio.fail_after(10):
            while await stalled.receive_some(1024):
                pass
        await stalled.aclose()
        # Everyone else is served.
        ann = await server.create_org()
        await still_served(server, ann, pki)


async def test_a_reloaded_certificate_is_used_for_new_gateway_connections(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_server(nursery, database_url, tmp_path / "data", pki) as server:
        ann = await server.create_org()
        old = await connect(
            server.gateway_url, ann.identity(server.server_key), ssl_context=pki.client_context
        )
        await old.sync(0)
        await frames_until(old, Synced)
        assert await served_subject(server, pki.client_context) == "obrol-first"
        await reload_to(server, pki, "obrol-second")
        # The connection made before the reload carries on.
        await old.send(
            Send(
                cid="still",
                conv=(await server.group(ann)).bytes,
                body=TextBody(text="on the old certificate"),
            )
        )
        await frames_until(old, Sent)
        await old.aclose()


def test_a_reload_that_a_library_fails_in_an_unexpected_way_changes_nothing(
    tmp_path: Path, pki: Pki
) -> None:
    from server.tls import ServerTls

    tls = ServerTls(pki.cert_file, pki.key_file)
    pki.cert_file.unlink()
    pki.cert_file.mkdir()  # a folder where the certificate was: not an ssl.SSLError
    assert tls.reload() is False
    assert "obrol-first" in tls.info.subject


async def test_a_reload_to_another_key_type_replaces_the_certificate(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, pki: Pki
) -> None:
    # RSA to ECDSA: a TLS 1.2 client offering only RSA suites must no longer be served
    # the old RSA certificate after the reload (loading into a live context kept it).
    async with tls_server(nursery, database_url, tmp_path / "data", pki) as server:
        await reload_to(server, pki, "obrol-ecdsa", trustme.KeyType.ECDSA)
        rsa_only = ssl.create_default_context()
        pki.ca.configure_trust(rsa_only)
        rsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
        rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        host, port = gateway_address(server)
        stream = trio.SSLStream(
            await trio.open_tcp_stream(host, port), rsa_only, server_hostname=host
        )
        with pytest.raises(trio.BrokenResourceError):
            await stream.do_handshake()
        await stream.aclose()


def test_an_encrypted_key_or_a_folder_is_a_clear_error(tmp_path: Path, pki: Pki) -> None:
    from cryptography.hazmat.primitives import serialization

    from server.tls import ServerTls, TlsConfigError

    key = serialization.load_pem_private_key(pki.key_file.read_bytes(), password=None)
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsConfigError, match="encrypted"):
        ServerTls(pki.cert_file, pki.key_file)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(TlsConfigError):
        ServerTls(pki.cert_file, folder)


async def test_a_forged_tls_record_ends_that_connection_alone(
    nursery: trio.Nursery,
    database_url: str,
    tmp_path: Path,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A record that does not authenticate in the middle of a session: a TLS error for that
    # connection (cut off, logged), not an internal error, and nobody else notices.
    caplog.set_level(logging.INFO, logger="server.gateway")
    async with tls_server(nursery, database_url, tmp_path / "data", pki) as server:
        ann = await server.create_org()
        client = await connect(
            server.gateway_url, ann.identity(server.server_key), ssl_context=pki.client_context
        )
        await client.sync(0)
        await frames_until(client, Synced)
        tls_stream = client._stream
        assert isinstance(tls_stream, trio.SSLStream)
        forged = b"\x17\x03\x03\x00\x20" + bytes(32)  # application data that is not ours
        await tls_stream.transport_stream.send_all(forged)
        with trio.fail_after(10), pytest.raises(Exception):  # noqa: B017 - dropped, how is the client's business
            while True:
                await client.receive()
        await client.aclose()
        assert not [r for r in caplog.records if "internal error" in r.getMessage()]
        assert any("TLS error" in r.getMessage() for r in caplog.records)
        await still_served(server, ann, pki)
