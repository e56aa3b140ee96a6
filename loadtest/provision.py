"""Users, devices and conversations on the server, through its REST API, cached for reuse.

A fresh provisioning creates an organization (`POST /v1/orgs`: the server must have open
sign-up, `allow_org_signup`), adds each user (`POST /v1/orgs/{org}/members`), logs each
user in once from its first device (which enrolls that device's key), replaces the initial
password as the server requires, and enrolls its other devices with `POST /v1/devices` (no
password hashing), then creates the conversations (by their first member) and uploads one
small file into each for `file` messages. Requests run concurrently.

Everything is remembered in a cache (`ProvisionCache`): a later run against the same server
reuses the users and devices, adds what is missing, and creates conversations only for a
layout it has not seen. Tokens are renewed with refresh tokens, so a reuse costs no
password hashing. A cache the server no longer recognises is dropped and rebuilt.
"""

from __future__ import annotations

import base64
import secrets
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import trio
from nacl.signing import SigningKey

from loadtest.cache import ProvisionCache, ServerEntry
from loadtest.topology import Topology
from loadtest.traffic import FILE_CONTENT, FILE_MIME, FILE_NAME
from protocol.errors import ObrolError

CONCURRENCY = 16
REQUEST_TIMEOUT_S = 60.0
SIGNUP_CLOSED_HINT = (
    "the server does not take new organizations: provisioning signs one up over the API, "
    "so start the server with open sign-up (allow_org_signup = true in its config file, or "
    "OBROL_ALLOW_ORG_SIGNUP=true), at least while the load test provisions"
)


class ProvisionError(ObrolError):
    """The server refused or failed a provisioning request; the message says which."""


CONSENTS = ("media_share", "location_share")
"""The purposes every load-test user grants: the mix sends file and location messages."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_password() -> str:
    """10+ characters mixing upper, lower, digits and a symbol."""
    return "Lt-" + secrets.token_hex(8) + "-Q9z"


@dataclass
class Provisioned:
    """What the run needs: the server key, each device's id and secret key (by device
    index), each conversation's id and file (by conversation index)."""

    server_key: bytes
    devices: list[tuple[uuid.UUID, bytes]]
    conversations: list[tuple[uuid.UUID, uuid.UUID | None]]
    cursor: int
    seconds: float
    created: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)


class Api:
    """JSON calls to the HTTP API; every failure becomes a ProvisionError saying what."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.limit = trio.CapacityLimiter(CONCURRENCY)
        self.calls = 0

    async def call(
        self,
        what: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.limit:
            self.calls += 1
            try:
                response = await self.client.request(
                    method, path, json=json, content=content, headers=all_headers, params=params
                )
            except httpx.HTTPError as exc:
                raise ProvisionError(f"{what}: the API did not answer ({exc!r})") from None
        if response.status_code not in expect:
            raise ProvisionError(f"{what}: HTTP {response.status_code}: {_error_text(response)}")
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or "(empty response)"


async def fetch_server_key(api: Api) -> bytes:
    body = await api.call("reading the server key", "GET", "/.well-known/obrol/server-key")
    try:
        key = unb64url(body["public_key"])
    except (KeyError, TypeError, ValueError):
        raise ProvisionError("the server key endpoint answered something unexpected") from None
    if len(key) != 32:
        raise ProvisionError("the server key is not a 32-byte Ed25519 public key")
    return key


class Provisioner:
    def __init__(
        self, api: Api, entry: ServerEntry, report: Callable[[str], None] | None = None
    ) -> None:
        self.api = api
        self.entry = entry
        self.report = report or (lambda _: None)
        self.created: dict[str, int] = {"users": 0, "devices": 0, "conversations": 0}
        self.tokens: dict[int, str] = {}  # user index (-1: owner) -> access token
        self._token_locks: dict[int, trio.Lock] = {}

    # -- sessions --------------------------------------------------------------------------

    async def _login(self, who: str, email: str, password: str, key: SigningKey) -> dict[str, Any]:
        body: dict[str, Any] = await self.api.call(
            f"logging in {who}",
            "POST",
            "/v1/login",
            json={
                "email": email,
                "password": password,
                "device": {
                    "name": "loadtest",
                    "platform": "linux",
                    "public_key": b64url(bytes(key.verify_key)),
                },
            },
        )
        return body

    async def _token(self, user: int) -> str:
        """An access token for a user (-1: the owner): refreshed, else a password login.

        One at a time per user: a refresh token used twice would end the session."""
        async with self._token_locks.setdefault(user, trio.Lock()):
            return await self._new_token(user)

    async def _new_token(self, user: int) -> str:
        if user in self.tokens:
            return self.tokens[user]
        record = self.entry.owner if user < 0 else self.entry.users[user]
        assert record is not None
        if record.get("refresh"):
            try:
                body = await self.api.call(
                    "refreshing a token",
                    "POST",
                    "/v1/tokens/refresh",
                    json={"refresh_token": record["refresh"]},
                )
                record["refresh"] = body["refresh_token"]
                self.tokens[user] = body["access_token"]
                return self.tokens[user]
            except ProvisionError:
                record["refresh"] = None
        key = SigningKey(bytes.fromhex(record["devices"][0]["key"])[:32])
        body = await self._login(f"user {user}", record["email"], record["password"], key)
        record["refresh"] = body["refresh_token"]
        record["devices"][0]["id"] = body["device"]["id"]
        self.tokens[user] = body["access_token"]
        return self.tokens[user]

    def _report_progress(self, text: str) -> None:
        self.report(f"{text} ({self.api.calls:,} API calls)")

    # -- steps -----------------------------------------------------------------------------

    async def ensure_org(self) -> None:
        """Create the organization and its owner unless the cached one still works."""
        entry = self.entry
        if entry.owner:
            try:
                await self._token(-1)
                return
            except ProvisionError:
                self.report("the cached load-test organization is not accepted: making a new one")
                entry.reset()
        tag = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))
        email, password = f"lt{tag}owner@loadtest.example", new_password()
        answer = await self.api.call(
            "creating the load-test organization",
            "POST",
            "/v1/orgs",
            json={
                "name": f"obrol load test {tag}",
                "owner": {
                    "account_name": f"lt{tag}owner",
                    "work_email": email,
                    "display_name": "Load Test Owner",
                    "password": password,
                },
            },
            expect=(201, 202, 403),
        )
        refusal = (answer or {}).get("error")
        if refusal is not None:
            if refusal.get("code") == "signup_closed":
                raise ProvisionError(SIGNUP_CLOSED_HINT)
            raise ProvisionError(f"creating the load-test organization: HTTP 403: {refusal}")
        key = SigningKey.generate()
        body = await self._login("the owner", email, password, key)
        entry.tag = tag
        entry.org_id = body["account"]["org_id"]
        entry.owner = {
            "email": email,
            "password": password,
            "refresh": body["refresh_token"],
            "devices": [{"id": body["device"]["id"], "key": _secret_hex(key)}],
        }
        self.tokens[-1] = body["access_token"]

    async def ensure_users(self, topology: Topology) -> None:
        """Every user with as many devices as the topology gives them."""
        entry = self.entry
        done = [0]

        async def one(user: int) -> None:
            if user >= len(entry.users) or entry.users[user] is None:
                await self._add_user(user)
            if not entry.users[user].get("consents"):
                await self._grant_consents(user)
            need = len(topology.devices_of(user))
            have = entry.users[user]["devices"]
            if len(have) < need:
                token = await self._token(user)
                for _ in range(need - len(have)):
                    key = SigningKey.generate()
                    body = await self.api.call(
                        "enrolling a device",
                        "POST",
                        "/v1/devices",
                        token=token,
                        json={
                            "name": f"loadtest-{len(have)}",
                            "platform": "linux",
                            "public_key": b64url(bytes(key.verify_key)),
                        },
                    )
                    have.append({"id": body["id"], "key": _secret_hex(key)})
                    self.created["devices"] += 1
            done[0] += 1

        while len(entry.users) < topology.users:
            entry.users.append(None)
        jobs = [partial(one, u) for u in range(topology.users)]
        await run_all(jobs, done, "users", self._report_progress)

    async def _grant_consents(self, user: int) -> None:
        """The user's own grants for what the traffic mix shares (file and location
        messages are refused without them), recorded in the cache once given."""
        token = await self._token(user)
        for purpose in CONSENTS:
            await self.api.call(
                f"granting {purpose}", "PUT", f"/v1/me/consents/{purpose}", token=token
            )
        self.entry.users[user]["consents"] = True

    async def _add_user(self, user: int) -> None:
        entry = self.entry
        name = f"lt{entry.tag}u{user}"
        email, password = f"{name}@loadtest.example", new_password()
        await self.api.call(
            "adding a user",
            "POST",
            f"/v1/orgs/{entry.org_id}/members",
            token=await self._token(-1),
            json={
                "account_name": name,
                "work_email": email,
                "display_name": f"Load Test User {user}",
                "initial_password": password,
            },
        )
        key = SigningKey.generate()
        body = await self._login(f"user {user}", email, password, key)
        # A member added with an initial password must replace it before anything else.
        changed = new_password()
        await self.api.call(
            "changing a user's initial password",
            "POST",
            "/v1/me/password",
            token=body["access_token"],
            json={"current_password": password, "new_password": changed},
            expect=(204,),
        )
        password = changed
        entry.users[user] = {
            "id": body["account"]["id"],
            "email": email,
            "password": password,
            "refresh": body["refresh_token"],
            "devices": [{"id": body["device"]["id"], "key": _secret_hex(key)}],
        }
        self.tokens[user] = body["access_token"]
        self.created["users"] += 1
        self.created["devices"] += 1

    async def ensure_conversations(self, topology: Topology, layout: str, files: bool) -> None:
        """The topology's conversations (reused if this layout was made before), each with
        an uploaded file when the traffic mix sends files."""
        entry = self.entry
        made = entry.layouts.setdefault(
            layout, {"conversations": [None] * len(topology.conversations)}
        )
        conversations: list[Any] = made["conversations"]
        done = [0]

        async def one(index: int) -> None:
            members = topology.conversations[index]
            creator = members[0]
            if conversations[index] is None:
                token = await self._token(creator)
                others = [entry.users[u]["id"] for u in members[1:]]
                if len(members) == 2:
                    payload: dict[str, Any] = {"kind": "direct", "member_ids": others}
                else:
                    payload = {"kind": "group", "title": f"load test {index}", "member_ids": others}
                body = await self.api.call(
                    "creating a conversation",
                    "POST",
                    "/v1/conversations",
                    token=token,
                    json=payload,
                )
                conversations[index] = {"id": body["id"], "file_id": None}
                self.created["conversations"] += 1
            if files and conversations[index]["file_id"] is None:
                body = await self.api.call(
                    "uploading a file",
                    "POST",
                    f"/v1/conversations/{conversations[index]['id']}/files",
                    token=await self._token(creator),
                    content=FILE_CONTENT,
                    headers={"Content-Type": FILE_MIME},
                    params={"name": FILE_NAME},
                )
                conversations[index]["file_id"] = body["id"]
            done[0] += 1

        jobs = [partial(one, i) for i in range(len(topology.conversations))]
        await run_all(jobs, done, "conversations", self._report_progress)


async def run_all(
    jobs: Sequence[Callable[[], Awaitable[None]]],
    done: list[int],
    what: str,
    report: Callable[[str], None],
) -> None:
    """Run the jobs concurrently (the API client limits how many at once), reporting
    progress every second; the first failure cancels the rest and is raised."""

    async def progress() -> None:
        while True:
            await trio.sleep(1)
            report(f"provisioning {what}: {done[0]}/{len(jobs)}")

    async with trio.open_nursery() as outer:
        outer.start_soon(progress)
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job)
        outer.cancel_scope.cancel()


def _secret_hex(key: SigningKey) -> str:
    """The 64-byte Ed25519 secret key (seed and public key) in hex."""
    return (bytes(key) + bytes(key.verify_key)).hex()


async def provision(
    api: Api,
    cache: ProvisionCache,
    topology: Topology,
    layout: str,
    files: bool,
    fresh: bool,
    report: Callable[[str], None],
) -> Provisioned:
    """Make sure everything the topology needs exists on the server; save the cache."""
    started = time.monotonic()
    server_key = await fetch_server_key(api)
    entry = cache.entry(b64url(server_key), fresh=fresh)
    provisioner = Provisioner(api, entry, report)
    try:
        await provisioner.ensure_org()
        await provisioner.ensure_users(topology)
        await provisioner.ensure_conversations(topology, layout, files)
    finally:
        cache.save()
    devices: list[tuple[uuid.UUID, bytes]] = []
    for index in range(topology.devices):
        record = entry.users[topology.user_of(index)]["devices"][index // topology.users]
        devices.append((uuid.UUID(record["id"]), bytes.fromhex(record["key"])))
    conversations = [
        (uuid.UUID(c["id"]), uuid.UUID(c["file_id"]) if c["file_id"] else None)
        for c in entry.layouts[layout]["conversations"]
    ]
    created = provisioner.created
    return Provisioned(
        server_key=server_key,
        devices=devices,
        conversations=conversations,
        cursor=entry.cursor,
        seconds=time.monotonic() - started,
        created=created,
        reused={
            "users": topology.users - created["users"],
            "devices": topology.devices - created["devices"],
            "conversations": len(conversations) - created["conversations"],
        },
    )
