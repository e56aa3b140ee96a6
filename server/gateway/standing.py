"""The safety net under the bus for who may stay connected.

A revocation, deactivation, sign-out, cancellation or guardian's withdrawal on one process
reaches the others as a bus event (server/bus/), which closes the device's connections and
drops its cached key there within a second. An event can be lost: the bus was down when
it was sent (its sender drops it) or when it would have arrived, or a NATS server dropped
it. Then another process would keep serving a device that may no longer connect, and,
worse, its device-key cache would let that device connect again.

So every process with a bus also asks the database, every `standing_check_interval_s` and
whenever its bus connection comes back, which devices' standing changed since it last
asked (the database stamps each change: migration 0024). For each it forgets the cached
key, and for each connected here it reads the standing and closes the connections with the
same code the handshake would refuse it with. A change is looked at again for a margin
after it (a transaction stamps its start, and may commit later than a check that did not
see it); looking twice only drops a cache entry twice.

The same check reads the newest material privacy-policy version of each organization
connected here, so a publication the bus lost still gates the accounts that have not
accepted it (`reconsent_required`). A lost acceptance needs no net: it errs on the safe
side (the account stays gated here until its device reconnects, which reads it).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import trio

from protocol import CloseCode, ErrorCode
from server.gateway.hub import Hub
from server.handlers.access import gateway_refusal
from storage.devices import DeviceStore
from storage.errors import DatabaseUnavailableError
from storage.outages import OutageLog
from storage.policies import PolicyStore

logger = logging.getLogger(__name__)

MARGIN = timedelta(seconds=30)  # longer than any transaction that changes a standing
GONE = (CloseCode.DEVICE_REVOKED, ErrorCode.DEVICE_REVOKED, "device revoked")  # purged since


class StandingWatch:
    def __init__(self, devices: DeviceStore, policies: PolicyStore, hub: Hub) -> None:
        self._devices = devices
        self._policies = policies
        self._hub = hub
        self._since: datetime | None = None
        self._lock = trio.Lock()  # one check at a time (the timer, a reconnection)
        self._reads = OutageLog(logger, "standing checks")
        self.closed = 0  # connections closed by a check (the bus had not closed them)

    async def check(self) -> None:
        """Act on the standing changes since the last check (the first one only sets the
        clock: a process starts with an empty cache and no connections). Raises
        DatabaseUnavailableError; the next check covers the same changes."""
        async with self._lock:
            now, changed = await self._devices.standing_changed(self._since)
            hub = self._hub
            connected = []
            for device_id in changed:
                hub.device_keys.invalidate_device(device_id)
                if hub.is_connected(device_id):
                    connected.append(device_id)
            if connected:
                standing = await self._devices.credentials_many(connected)
                for device_id in connected:
                    credentials = standing.get(device_id)
                    refusal = GONE if credentials is None else gateway_refusal(credentials)
                    if refusal is not None and hub.is_connected(device_id):
                        logger.info("device %s may no longer connect: closed", device_id)
                        self.closed += 1
                        hub.refuse_device(device_id, *refusal)
            self._since = now - MARGIN
            orgs = hub.connected_orgs()
            if orgs:
                for org_id, policy_id in (await self._policies.newest_material(orgs)).items():
                    if hub.material_policy_found(org_id, policy_id):
                        logger.info("a material policy version the bus did not bring: gated")

    async def run(self, interval_s: float) -> None:
        """Check every `interval_s` until cancelled, through database outages."""
        while True:
            try:
                await self.check()
            except DatabaseUnavailableError as exc:
                self._reads.failed(1, exc)
            except Exception:  # a bug must not take the server down: log, try again later
                logger.exception("standing check failed")
            else:
                self._reads.succeeded()
            await trio.sleep(interval_s)
