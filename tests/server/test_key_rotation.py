"""`obrol keys rotate` over the real server and PostgreSQL: every data key is re-wrapped and
all data stays readable, also when the rotation is cut short and run again; the old key
file is gone, so copies of the wrapped keys from before (a backup) no longer open; it
refuses while a server runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from protocol import TextBody
from server.keys_command import KeyRotationError, rotate_master_key
from server.settings import load_settings
from storage.keyring import KeyringError, MasterKey, MasterKeyError, check_value, unwrap
from tests.harness import start_harness
from tests.server.test_encryption_at_rest import (
    PHONE,
    caught_up,
    failed_start,
    history,
    member,
    raw,
    sent,
    text,
)


class CutShort(Exception):
    pass


def keys_in(folder: Path) -> list[bytes]:
    """Every 32-byte file under `folder`."""
    return [p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.stat().st_size == 32]


def settings_for(database_url: str, data_dir: Path) -> Any:
    return load_settings(None, database_url=database_url, data_dir=data_dir)


async def test_rotation_rewraps_every_key_and_resumes_after_being_cut_short(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path) as server,
    ):
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob", phone=PHONE)
        cat = await server.add_member(ann, "cat")
        conv = await server.group(ann, bob, cat)
        for who, words in ((ann, "a-1"), (bob, "b-1"), (cat, "c-1")):
            await sent(server, who, text(conv, words))
        # Servers running: the rotation refuses, nothing changes.
        with pytest.raises(KeyRotationError, match="server is running"):
            await rotate_master_key(settings, 1)
    key_file = settings.master_key_path
    old_key = key_file.read_bytes()
    backup = await raw(database_url, "SELECT account_id, wrapped FROM data_keys")
    assert len(backup) == 3

    def cut_after_first(done: int, total: int) -> None:
        assert (done, total) == (1, 3)
        raise CutShort

    with pytest.raises(CutShort):
        await rotate_master_key(settings, 1, cut_after_first)
    versions = await raw(database_url, "SELECT version, retired_at FROM master_keys ORDER BY 1")
    assert [(v["version"], v["retired_at"]) for v in versions] == [(1, None), (2, None)]
    message = await failed_start(database_url, tmp_path)
    assert "rotation from version 1 to 2 is unfinished: run `obrol keys rotate`" in message

    progress: list[tuple[int, int]] = []
    rotated = await rotate_master_key(settings, 1, lambda d, t: progress.append((d, t)))
    assert (rotated.version, rotated.rewrapped) == (2, 2)
    assert progress == [(1, 2), (2, 2)]
    new_key = key_file.read_bytes()
    assert new_key != old_key and key_file.stat().st_mode & 0o777 == 0o600
    assert not key_file.with_name("master.key.next").exists()
    rows = await raw(database_url, "SELECT master_version FROM data_keys")
    assert {r["master_version"] for r in rows} == {2}
    versions = await raw(database_url, "SELECT version, retired_at FROM master_keys ORDER BY 1")
    assert versions[0]["retired_at"] is not None and versions[1]["retired_at"] is None

    # The wrapped keys of before (a backup) open with nothing on disk now.
    assert old_key not in keys_in(tmp_path)
    for row in backup:
        with pytest.raises(KeyringError):
            unwrap(MasterKey(1, new_key), row["account_id"], bytes(row["wrapped"]))

    # The old key file is refused with a clear word; the new one serves everything.
    key_file.write_bytes(old_key)
    message = await failed_start(database_url, tmp_path)
    assert "the master key is version 1, retired by a rotation" in message
    key_file.write_bytes(new_key)
    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path) as server,
    ):
        ann = await server.login("olivia@acme.example")
        bob = await server.login("bob@members.example")
        assert [m["body"]["text"] for m in await history(server, ann, conv)] == [
            "a-1",
            "b-1",
            "c-1",
        ]
        assert (await member(server, ann, bob))["phone"] == PHONE
        await sent(server, bob, text(conv, "b-2"))
        assert [m.body for m in await caught_up(server, ann)][-1] == TextBody(text="b-2")

    # And again: version 3.
    assert (await rotate_master_key(settings, 1000)).version == 3


async def test_a_rotation_cut_after_retiring_finishes_by_renaming(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path) as server,
    ):
        ann = await server.create_org()
        await server.add_member(ann, "bob", phone=PHONE)
    key_file = settings.master_key_path
    next_file = key_file.with_name("master.key.next")
    # Simulate a crash after the retirement, before the rename: the old file is back.
    old_key = key_file.read_bytes()
    await rotate_master_key(settings, 10)
    new_key = key_file.read_bytes()
    next_file.write_bytes(new_key)
    next_file.chmod(0o600)
    key_file.write_bytes(old_key)

    rotated = await rotate_master_key(settings, 10)
    assert (rotated.version, rotated.rewrapped) == (2, 0)
    assert key_file.read_bytes() == new_key and not next_file.exists()
    versions = await raw(
        database_url, "SELECT check_value FROM master_keys WHERE retired_at IS NULL"
    )
    assert [bytes(v["check_value"]) for v in versions] == [check_value(new_key)]


async def test_rotation_needs_the_current_key(database_url: str, tmp_path: Path) -> None:
    settings = settings_for(database_url, tmp_path)
    with pytest.raises(KeyRotationError, match="no master key yet"):
        await rotate_master_key(settings, 10)
    async with trio.open_nursery() as nursery, start_harness(nursery, database_url, tmp_path):
        pass
    settings.master_key_path.write_bytes(b"\x01" * 32)
    with pytest.raises(KeyRotationError, match="does not match this database"):
        await rotate_master_key(settings, 10)
    settings.master_key_path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="readable by other users"):
        await rotate_master_key(settings, 10)
