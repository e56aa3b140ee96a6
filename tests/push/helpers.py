"""Signing what Apple's and Google's clients sign, and a bare HTTP/2 client (h2 + ssl) for
what httpx will not do: no ALPN, a `host` header instead of `:authority`."""

from __future__ import annotations

import secrets
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import jwt
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from push.standin import StandIn, StandInCredentials

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def device_token() -> str:
    return secrets.token_hex(32)


def other_ec_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def other_rsa_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def provider_token(
    credentials: StandInCredentials,
    *,
    iat: float | None = None,
    key: str | None = None,
    kid: str | None = None,
    iss: str | None = None,
) -> str:
    """An APNs provider token as aioapns makes it (ES256, kid, iss = team, iat)."""
    return jwt.encode(
        {"iss": iss or credentials.apns_team_id, "iat": int(time.time() if iat is None else iat)},
        key or credentials.apns_key_pem(),
        algorithm="ES256",
        headers={"kid": kid or credentials.apns_key_id},
    )


def apns_headers(standin: StandIn, **extra: str) -> dict[str, str]:
    """A valid push's headers; keyword arguments (underscores for dashes) add or replace."""
    headers = {
        "authorization": f"bearer {provider_token(standin.credentials)}",
        "apns-topic": standin.credentials.apns_topic,
        "apns-push-type": "alert",
        "apns-priority": "10",
    }
    headers.update({name.replace("_", "-"): value for name, value in extra.items()})
    return headers


def assertion(
    credentials: StandInCredentials,
    *,
    key: str | None = None,
    kid: str | None = None,
    aud: str | None = None,
    iat: float | None = None,
    lifetime_s: int = 3600,
    scope: str | None = FCM_SCOPE,
) -> str:
    """A service-account JWT as Google's client libraries make it."""
    account = credentials.service_account()
    now = int(time.time() if iat is None else iat)
    claims: dict[str, Any] = {
        "iss": account["client_email"],
        "aud": aud or account["token_uri"],
        "iat": now,
        "exp": now + lifetime_s,
    }
    if scope is not None:
        claims["scope"] = scope
    return jwt.encode(
        claims,
        key or account["private_key"],
        algorithm="RS256",
        headers={"kid": kid or account["private_key_id"]},
    )


async def raw_h2_request(
    standin: StandIn,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    *,
    alpn: bool = False,
) -> tuple[dict[str, str], bytes, str | None]:
    """One request over a fresh TLS connection with h2 driven by hand: no ALPN unless asked,
    exactly the headers given. Returns (response headers, body, negotiated ALPN)."""
    context = standin.credentials.client_ssl_context(alpn=alpn)
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", standin.port, ssl_context=context)
    async with stream:
        await stream.do_handshake()
        negotiated = stream.selected_alpn_protocol()
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=not body)
        if body:
            conn.send_data(1, body, end_stream=True)
        await stream.send_all(conn.data_to_send())
        response: dict[str, str] = {}
        data = bytearray()
        while True:
            chunk = await stream.receive_some()
            assert chunk, "the stand-in closed the connection before answering"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    response = {str(k): str(v) for k, v in event.headers or ()}
                elif isinstance(event, h2.events.DataReceived):
                    assert event.data is not None and event.stream_id is not None
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    return response, bytes(data), negotiated
            await stream.send_all(conn.data_to_send())
