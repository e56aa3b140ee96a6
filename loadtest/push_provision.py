"""Push registrations of the offline phones, over the REST API, remembered in the cache.

A registration belongs to the calling device (`PUT /v1/push/registration`), so each phone
gets a session of its own: a password login with the phone's own key (which opens a
session bound to that enrolled device), later runs renew it with its refresh token. Each
phone registers its token every run (idempotent: the same token again). A device an earlier
run registered that is not a phone in this run has its registration deleted, so the server
pushes only where this run expects it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from loadtest.cache import ServerEntry
from loadtest.phones import push_token
from loadtest.provision import Api, ProvisionError, b64url, run_all
from loadtest.topology import Topology


@dataclass(frozen=True, slots=True)
class Registered:
    registered: int  # phones registered (or registered again)
    removed: int  # registrations of earlier runs' phones deleted


def device_record(entry: ServerEntry, topology: Topology, device: int) -> dict[str, Any]:
    """The cache's record of a device of this layout: {id, key, ...}."""
    record: dict[str, Any] = entry.users[topology.user_of(device)]["devices"][
        device // topology.users
    ]
    return record


async def device_session(api: Api, user: dict[str, Any], device: dict[str, Any]) -> str:
    """An access token bound to `device` (not the user's first device): renewed with the
    refresh token kept in its cache record, else a password login with the device's key."""
    if device.get("refresh"):
        try:
            body = await api.call(
                "refreshing a phone's token",
                "POST",
                "/v1/tokens/refresh",
                json={"refresh_token": device["refresh"]},
            )
            device["refresh"] = body["refresh_token"]
            return str(body["access_token"])
        except ProvisionError:
            device["refresh"] = None
    public_key = bytes.fromhex(device["key"])[32:]
    body = await api.call(
        "logging a phone in with its own key",
        "POST",
        "/v1/login",
        json={
            "email": user["email"],
            "password": user["password"],
            "device": {
                "name": "loadtest-phone",
                "platform": "linux",
                "public_key": b64url(public_key),
            },
        },
    )
    if body["device"]["id"] != device["id"]:
        raise ProvisionError(
            f"logging a phone in: the server enrolled a new device {body['device']['id']} "
            f"instead of reusing {device['id']} (run again with --fresh)"
        )
    device["refresh"] = body["refresh_token"]
    return str(body["access_token"])


async def register_phones(
    api: Api,
    entry: ServerEntry,
    topology: Topology,
    phones: dict[int, str],
    report: Callable[[str], None],
) -> Registered:
    """Register every phone's token; delete the registrations earlier runs made for devices
    that are not phones now. Raises ProvisionError (e.g. push_provider_unavailable: the
    server has no credentials for that provider)."""
    wanted: dict[str, tuple[str, str]] = {}  # device id -> (provider, token)
    for device, provider in phones.items():
        device_id = device_record(entry, topology, device)["id"]
        wanted[device_id] = (provider, push_token(provider, uuid.UUID(device_id)))
    jobs = []
    removed = [0]
    for user in entry.users:
        for device in user["devices"] if user else []:
            if device["id"] in wanted:
                provider, token = wanted[device["id"]]
                jobs.append(partial(_register, api, user, device, provider, token))
            elif device.get("push"):
                jobs.append(partial(_unregister, api, user, device, removed))
    done = [0]

    async def counted(job: Callable[[], Any]) -> None:
        await job()
        done[0] += 1

    await run_all([partial(counted, j) for j in jobs], done, "push registrations", report)
    return Registered(len(wanted), removed[0])


async def _register(
    api: Api, user: dict[str, Any], device: dict[str, Any], provider: str, token: str
) -> None:
    session = await device_session(api, user, device)
    registration: dict[str, Any] = {"provider": provider, "token": token}
    if provider == "apns":
        registration["environment"] = "production"
    await api.call(
        "registering a phone's push token",
        "PUT",
        "/v1/push/registration",
        token=session,
        json=registration,
    )
    device["push"] = token


async def _unregister(
    api: Api, user: dict[str, Any], device: dict[str, Any], removed: list[int]
) -> None:
    session = await device_session(api, user, device)
    await api.call(
        "removing an earlier run's push registration",
        "DELETE",
        "/v1/push/registration",
        token=session,
        expect=(204, 404),
    )
    device["push"] = None
    removed[0] += 1
