"""A running obrol for tests, with an HTTP client and helpers for common set-up."""

from __future__ import annotations

import base64
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from nacl.signing import SigningKey

from loadtest.client import DeviceIdentity, DeviceState, GatewayClient, connect
from protocol import ConsentGet, ConsentSet, LiveStart, Send, ServerFrame, Synced
from server.runner import Running, serve
from server.services import Services
from server.settings import Settings, load_settings
from storage.embedded import EmbeddedPostgres

PASSWORD = "Sunny-Harbour-42"
INITIAL_PASSWORD = "Given-By-Admin-17"  # what add_member sets; changed at first login


class FakeClock:
    """The server's wall clock, moved by tests instead of sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


async def receive_until(
    client: GatewayClient, want: Callable[[ServerFrame], bool], limit_s: float = 10
) -> list[ServerFrame]:
    """Frames received until one satisfies `want`, that one last (bounded by a deadline)."""
    frames: list[ServerFrame] = []
    with trio.fail_after(limit_s):
        while True:
            for frame in await client.receive():
                frames.append(frame)
                if want(frame):
                    return frames


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Session:
    """A logged-in device."""

    account: dict[str, Any]
    device: dict[str, Any]
    access_token: str
    refresh_token: str
    key: SigningKey

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    @property
    def org_id(self) -> str:
        return str(self.account["org_id"])

    @property
    def id(self) -> str:
        return str(self.account["id"])

    @property
    def account_uuid(self) -> uuid.UUID:
        return uuid.UUID(self.id)

    def identity(self, server_key: bytes) -> DeviceIdentity:
        """What this device needs to connect to the gateway."""
        return DeviceIdentity(
            uuid.UUID(self.device["id"]), bytes(self.key) + bytes(self.key.verify_key), server_key
        )


@dataclass
class Harness:
    running: Running
    client: httpx.AsyncClient
    clock: FakeClock
    settings: Settings
    # The embedded cluster the tests run (None with OBROL_TEST_DATABASE_URL): where its
    # files and log are, for tests that search them (tests/privacy_search.py).
    postgres: EmbeddedPostgres | None = None
    _emails: int = field(default=0)

    @property
    def services(self) -> Services:
        """The running server's services (its keyring, stores)."""
        assert self.running.services is not None
        return self.running.services

    @property
    def gateway_url(self) -> str:
        assert self.running.gateway_url is not None
        return self.running.gateway_url

    @property
    def server_key(self) -> bytes:
        return base64.urlsafe_b64decode(self.running.server_key + "=")

    def device(self, session: Session) -> DeviceState:
        return DeviceState(session.identity(self.server_key))

    async def connect(self, session: Session) -> GatewayClient:
        return await connect(self.gateway_url, session.identity(self.server_key))

    async def synced(self, session: Session) -> GatewayClient:
        """A connection of `session` that has caught up (`synced` received)."""
        client = await self.connect(session)
        await client.sync(0)
        await receive_until(client, lambda f: isinstance(f, Synced))
        return client

    async def answer(
        self, session: Session, frame: Send | ConsentGet | ConsentSet | LiveStart
    ) -> ServerFrame:
        """Send one frame with a `cid` from a fresh connection of `session`; the server's
        answer to it (`sent`, `err`, `consents`, `live_ok`, ...)."""
        cid = frame.cid
        async with await self.connect(session) as client:
            await client.send(frame)
            with trio.fail_after(10):
                while True:
                    for got in await client.receive():
                        if getattr(got, "cid", None) == cid or getattr(got, "ref", None) == cid:
                            return got

    async def group(self, owner: Session, *members: Session, title: str = "Team") -> uuid.UUID:
        response = await self.client.post(
            "/v1/conversations",
            headers=owner.headers,
            json={"kind": "group", "title": title, "member_ids": [m.id for m in members]},
        )
        assert response.status_code == 201, response.text
        return uuid.UUID(response.json()["id"])

    async def create_org(self, name: str = "Acme", owner: str = "olivia") -> Session:
        """A new org through open sign-up (on in the harness); returns its owner, logged in
        on a fresh device."""
        email = f"{owner}@{name.lower()}.example"
        response = await self.client.post(
            "/v1/orgs",
            json={
                "name": name,
                "owner": {
                    "account_name": owner,
                    "work_email": email,
                    "display_name": owner.title(),
                    "password": PASSWORD,
                },
            },
        )
        assert response.status_code == 202, response.text
        return await self.login(email)

    async def login(
        self, email: str, password: str = PASSWORD, key: SigningKey | None = None
    ) -> Session:
        """Log in from a device: a new one, or the one holding `key` (enrolled at its first
        login)."""
        key = key or SigningKey.generate()
        response = await self.client.post(
            "/v1/login",
            json={
                "email": email,
                "password": password,
                "device": {
                    "name": "laptop",
                    "platform": "linux",
                    "public_key": b64(bytes(key.verify_key)),
                },
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        return Session(
            body["account"], body["device"], body["access_token"], body["refresh_token"], key
        )

    async def add_member(
        self, admin: Session, account_name: str, *, change_password: bool = True, **fields: Any
    ) -> Session:
        """Add a member through the admin API and log them in.

        With `change_password` (the default) the member then replaces the initial password
        with PASSWORD, as the server requires before anything else; without it the session
        is still restricted (and the password is INITIAL_PASSWORD)."""
        email = f"{account_name}@members.example"
        response = await self.client.post(
            f"/v1/orgs/{admin.org_id}/members",
            headers=admin.headers,
            json={
                "account_name": account_name,
                "work_email": email,
                "display_name": account_name.title(),
                "initial_password": INITIAL_PASSWORD,
                **fields,
            },
        )
        assert response.status_code == 201, response.text
        session = await self.login(email, INITIAL_PASSWORD)
        if change_password:
            response = await self.client.post(
                "/v1/me/password",
                headers=session.headers,
                json={"current_password": INITIAL_PASSWORD, "new_password": PASSWORD},
            )
            assert response.status_code == 204, response.text
            session.account["password_change_required"] = False
        return session

    async def reauth(self, session: Session, password: str = PASSWORD) -> None:
        """Confirm the password on `session` (POST /v1/me/reauth), as the data-rights
        actions require once the login that opened it is a few minutes old."""
        response = await self.client.post(
            "/v1/me/reauth", headers=session.headers, json={"password": password}
        )
        assert response.status_code == 200, response.text

    async def grant(self, session: Session, *purposes: str) -> None:
        """The person's own consent grants (file and location messages need them)."""
        for purpose in purposes:
            response = await self.client.put(f"/v1/me/consents/{purpose}", headers=session.headers)
            assert response.status_code == 200, response.text

    async def department(self, admin: Session, name: str, parent: str | None = None) -> str:
        response = await self.client.post(
            f"/v1/orgs/{admin.org_id}/departments",
            headers=admin.headers,
            json={"name": name, "parent_id": parent},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


@asynccontextmanager
async def start_harness(
    nursery: trio.Nursery,
    database_url: str,
    data_dir: Path,
    *,
    verify: ssl.SSLContext | bool = True,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """The server with these settings overrides; its client verifies a TLS server with
    `verify` (a context trusting the test CA)."""
    settings = load_settings(
        None,
        database_url=database_url,
        data_dir=data_dir,
        port=0,
        password_hash_strength="minimal",
        db_pool_size=4,
        gc_tuning=False,  # the server shares the test process: leave its GC alone
        # create_org signs up over HTTP; one in-process server needs no bus (the tests of
        # several processes start real ones: tests/nodes.py)
        **{"allow_org_signup": True, "bus": "none", **overrides},
    )
    clock = FakeClock()
    shutdown = trio.Event()
    running: Running = await nursery.start(partial(serve, settings, shutdown, clock=clock))
    try:
        assert running.api_url is not None
        async with httpx.AsyncClient(base_url=running.api_url, timeout=30, verify=verify) as client:
            yield Harness(running, client, clock, settings)
    finally:
        shutdown.set()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the one JSON error shape with this status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code, error
    assert error["message"]
    assert error["request_id"] == response.headers["X-Request-Id"]
    return error
