"""The device-key cache on its own: only devices that may connect, bounded, and a read that
overlapped an invalidation is never kept."""

from __future__ import annotations

import uuid
from dataclasses import replace

from server.gateway.device_keys import DeviceKeyCache
from storage.devices import Credentials


def credentials(account: uuid.UUID | None = None, /, **flags: bool) -> Credentials:
    return Credentials(
        device_id=uuid.uuid4(),
        account_id=account or uuid.uuid4(),
        org_id=uuid.uuid4(),
        public_key=b"k" * 32,
        revoked=flags.get("revoked", False),
        account_active=flags.get("account_active", True),
        guardian_consent_required=flags.get("guardian_consent_required", False),
        password_change_required=flags.get("password_change_required", False),
        signed_out=flags.get("signed_out", False),
    )


def test_only_devices_that_may_connect_are_kept() -> None:
    cache = DeviceKeyCache()
    ok = credentials()
    assert cache.store(ok, cache.generation) and cache.get(ok.device_id) == ok
    for flag in ("revoked", "guardian_consent_required", "password_change_required"):
        refused = credentials(**{flag: True})
        assert cache.store(refused, cache.generation)  # current, but not kept
        assert cache.get(refused.device_id) is None
    for refused in (credentials(account_active=False), credentials(signed_out=True)):
        cache.store(refused, cache.generation)
        assert refused.device_id not in cache


def test_a_read_that_overlapped_an_invalidation_is_not_kept() -> None:
    cache = DeviceKeyCache()
    device = credentials()
    began = cache.generation
    cache.invalidate_device(device.device_id)  # e.g. revoked while the database was read
    assert not cache.store(device, began)
    assert device.device_id not in cache


def test_invalidation_by_device_and_by_account() -> None:
    cache = DeviceKeyCache()
    account = uuid.uuid4()
    phone, laptop, other = credentials(account), credentials(account), credentials()
    for device in (phone, laptop, other):
        cache.store(device, cache.generation)
    cache.invalidate_device(phone.device_id)
    assert phone.device_id not in cache and laptop.device_id in cache
    cache.store(phone, cache.generation)
    cache.invalidate_account(account)
    assert phone.device_id not in cache and laptop.device_id not in cache
    assert other.device_id in cache
    # A replaced entry moves with its account.
    moved = replace(other, account_id=account)
    cache.store(moved, cache.generation)
    cache.invalidate_account(account)
    assert other.device_id not in cache


def test_the_cache_is_bounded_least_recently_used_out_first() -> None:
    cache = DeviceKeyCache(max_entries=2)
    first, second, third = credentials(), credentials(), credentials()
    cache.store(first, cache.generation)
    cache.store(second, cache.generation)
    assert cache.get(first.device_id) is not None  # now the most recently used
    cache.store(third, cache.generation)
    assert len(cache) == 2 and second.device_id not in cache and first.device_id in cache
    off = DeviceKeyCache(max_entries=0)
    assert off.store(first, off.generation) and len(off) == 0
