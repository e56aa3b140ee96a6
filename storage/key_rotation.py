"""Rotating the master key: every data key re-wrapped under the next one, in batches.

`obrol keys rotate` (server.keys_command) drives it: register the next master key's check
value, re-wrap the data keys still under the old one `batch` rows per transaction (each row
records the version that wraps it, so a rotation cut short resumes where it stopped), then
retire the old version. Servers must not run meanwhile (they hold the old key only): the
caller holds `storage.keyring.KEYRING_LOCK` exclusively, which a running server holds shared.
"""

from __future__ import annotations

from typing import Any

from storage.keyring import (
    REGISTER_LOCK,
    KeyringError,
    MasterKey,
    MasterKeyError,
    unwrap,
    wrap,
)


async def register_next(conn: Any, check: bytes, current: int) -> int:
    """The version of the master key with check value `check`, registered now as the one
    after every known version unless it already is the next one. MasterKeyError if another
    rotation from `current` is unfinished or the key is an old one."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", REGISTER_LOCK)
    rows = await conn.fetch("SELECT version, check_value, retired_at FROM master_keys")
    for row in rows:
        if bytes(row["check_value"]) == check:
            if row["retired_at"] is not None or row["version"] <= current:
                raise MasterKeyError(
                    f"the next master key is version {row['version']}, which is not newer "
                    f"than the current one ({current}) or was retired",
                    "mismatch",
                )
            return int(row["version"])
    newer = [r["version"] for r in rows if r["version"] > current and r["retired_at"] is None]
    if newer:
        raise MasterKeyError(
            f"a rotation to master key version {max(newer)} is unfinished, and the next key "
            "file holds another key: restore the key file of that version",
            "rotation_unfinished",
        )
    version = max(r["version"] for r in rows) + 1
    await conn.execute(
        "INSERT INTO master_keys (version, check_value) VALUES ($1, $2)", version, check
    )
    return int(version)


async def left_to_rewrap(conn: Any, new_version: int) -> int:
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM data_keys
               WHERE wrapped IS NOT NULL AND master_version <> $1""",
            new_version,
        )
    )


async def rewrap_batch(conn: Any, old: MasterKey, new: MasterKey, limit: int) -> int:
    """Re-wrap up to `limit` data keys from `old` to `new`; how many (0: none left).
    KeyringError for a key wrapped by a version other than these two."""
    rows = await conn.fetch(
        """SELECT account_id, wrapped, master_version FROM data_keys
           WHERE wrapped IS NOT NULL AND master_version <> $1
           ORDER BY account_id LIMIT $2 FOR UPDATE""",
        new.version,
        limit,
    )
    if not rows:
        return 0
    stray = {r["master_version"] for r in rows} - {old.version}
    if stray:
        raise KeyringError(
            f"data keys wrapped by master key version(s) {sorted(stray)}, whose key this "
            "rotation does not hold"
        )
    await conn.execute(
        """UPDATE data_keys d SET wrapped = n.wrapped, master_version = $3
           FROM unnest($1::uuid[], $2::bytea[]) AS n(account_id, wrapped)
           WHERE d.account_id = n.account_id""",
        [r["account_id"] for r in rows],
        [
            wrap(new, r["account_id"], unwrap(old, r["account_id"], bytes(r["wrapped"])))
            for r in rows
        ],
        new.version,
    )
    return len(rows)


async def retire(conn: Any, old_version: int, new_version: int) -> None:
    """Retire `old_version` once no data key is wrapped by anything but `new_version`."""
    left = await left_to_rewrap(conn, new_version)
    if left:
        raise KeyringError(f"{left} data keys are not re-wrapped yet")
    await conn.execute(
        "UPDATE master_keys SET retired_at = now() WHERE version = $1 AND retired_at IS NULL",
        old_version,
    )
