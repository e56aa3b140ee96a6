"""Sealing what was stored before encryption at rest (migration 0013), in bounded batches.

Migration 0013 cannot seal anything (the master key never reaches SQL), so values written
before it stay plaintext until the server seals them: message bodies, phone numbers and
birth dates, file names and digests, and blobs. `LegacySealer.seal_batch` walks one table in
keyset order (messages by pos, accounts and files by id), `batch` rows per transaction, and
records how far it got in `legacy_sealing`, so a restart resumes where it stopped; a table
is walked once, ever. Every read already handles both forms (`storage.sealing.is_sealed`),
so serving goes on meanwhile.

What belongs to an account whose data key was destroyed is not sealed but cleared (bodies
emptied, personal fields nulled, blobs deleted): it reads as erased either way, and no
plaintext of an erased person may stay behind.

Processes take turns through the row lock on the table's `legacy_sealing` row. A blob is
sealed outside any transaction (a write, fsync and rename of its own, possibly large), then
its row: a crash in between leaves a sealed blob under a plaintext row, which the next pass
recognises (the blob opens) and leaves alone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

from storage.accounts import PERSONAL, seal_personal
from storage.database import Database
from storage.files import BlobStore
from storage.keyring import Keyring
from storage.sealing import FILE_NAME, FILE_SHA256, MESSAGE_BODY, ad, is_sealed, seal

TABLES = ("accounts", "messages", "files")
_NIL = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class Batch:
    sealed: int  # values (or blobs) sealed or cleared
    done: bool  # the table has nothing left to seal


async def _state(conn: Any, what: str) -> tuple[str | None, bool]:
    row = await conn.fetchrow(
        "SELECT after, done_at FROM legacy_sealing WHERE what = $1 FOR UPDATE", what
    )
    return (None, True) if row is None else (row["after"], row["done_at"] is not None)


async def _advance(conn: Any, what: str, after: str | None, done: bool) -> None:
    await conn.execute(
        """UPDATE legacy_sealing SET after = $2, done_at = CASE WHEN $3 THEN now() END
           WHERE what = $1""",
        what,
        after,
        done,
    )


async def _messages(conn: Any, keyring: Keyring, batch: int) -> Batch:
    after, done = await _state(conn, "messages")
    if done:
        return Batch(0, True)
    rows = await conn.fetch(
        "SELECT id, pos, sender_id, body FROM messages WHERE pos > $1 ORDER BY pos LIMIT $2",
        int(after or 0),
        batch,
    )
    plain = [r for r in rows if not is_sealed(bytes(r["body"]))]
    if plain:
        keys, erased = await keyring.for_write(conn, {r["sender_id"] for r in plain})
        await conn.execute(
            """UPDATE messages m SET body = u.body
               FROM unnest($1::uuid[], $2::bytea[]) AS u(id, body) WHERE m.id = u.id""",
            [r["id"] for r in plain],
            [
                b""
                if r["sender_id"] in erased
                else seal(keys[r["sender_id"]], bytes(r["body"]), ad(MESSAGE_BODY, r["id"]))
                for r in plain
            ],
        )
    last = str(rows[-1]["pos"]) if rows else after
    await _advance(conn, "messages", last, len(rows) < batch)
    return Batch(len(plain), len(rows) < batch)


async def _accounts(conn: Any, keyring: Keyring, batch: int) -> Batch:
    after, done = await _state(conn, "accounts")
    if done:
        return Batch(0, True)
    rows = await conn.fetch(
        """SELECT id, phone, birth_date FROM accounts WHERE id > $1::uuid
           ORDER BY id LIMIT $2""",
        after or _NIL,
        batch,
    )
    count = 0
    for row in rows:
        plain = {
            name: bytes(row[name]).decode()
            for name in PERSONAL
            if row[name] is not None and not is_sealed(bytes(row[name]))
        }
        if not plain:
            continue
        if await _erased(conn, keyring, row["id"]):
            sealed: dict[str, Any] = dict.fromkeys(plain)
        else:
            typed = {n: _typed(n, v) for n, v in plain.items()}
            sealed = await seal_personal(conn, keyring, row["id"], typed)
        names = sorted(sealed)
        await conn.execute(
            f"""UPDATE accounts SET {", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names))}
                WHERE id = $1""",
            row["id"],
            *(sealed[n] for n in names),
        )
        count += len(plain)
    last = str(rows[-1]["id"]) if rows else after
    await _advance(conn, "accounts", last, len(rows) < batch)
    return Batch(count, len(rows) < batch)


def _typed(name: str, text: str) -> Any:
    return date.fromisoformat(text) if name == "birth_date" else text


async def _erased(conn: Any, keyring: Keyring, account_id: uuid.UUID) -> bool:
    keys = await keyring.for_read(conn, [account_id])
    return account_id in keys and keys[account_id] is None


@dataclass(frozen=True, slots=True)
class _File:
    id: uuid.UUID
    uploader: uuid.UUID
    name: bytes
    sha256: bytes
    key: bytes | None  # None: the uploader's key was destroyed


async def _file_batch(
    conn: Any, keyring: Keyring, batch: int
) -> tuple[str | None, list[_File], str | None, bool]:
    """(where the batch starts, its files not sealed yet with their keys, the last id it
    read, whether the table is done after it). With nothing to seal, it moves on now."""
    after, done = await _state(conn, "files")
    if done:
        return after, [], after, True
    rows = await conn.fetch(
        """SELECT id, uploader_id, name, sha256 FROM files WHERE id > $1::uuid
           ORDER BY id LIMIT $2""",
        after or _NIL,
        batch,
    )
    plain = [r for r in rows if not is_sealed(bytes(r["name"]))]
    keys, erased = await keyring.for_write(conn, {r["uploader_id"] for r in plain})
    files = [
        _File(
            r["id"],
            r["uploader_id"],
            bytes(r["name"]),
            bytes(r["sha256"]),
            None if r["uploader_id"] in erased else keys[r["uploader_id"]],
        )
        for r in plain
    ]
    last = str(rows[-1]["id"]) if rows else after
    if not files:
        await _advance(conn, "files", last, len(rows) < batch)
    return after, files, last, len(rows) < batch


async def _file_rows(
    conn: Any, started: str | None, files: list[_File], last: str | None, done: bool
) -> list[uuid.UUID] | None:
    """Seal (or clear) the rows of `files`, whose blobs are sealed (or deleted), and move
    on; the ids whose rows are gone meanwhile. None if another process did this batch."""
    after, _ = await _state(conn, "files")
    if after != started:
        return None
    rows = await conn.fetch(
        """UPDATE files f SET name = u.name, sha256 = u.sha256
           FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS u(id, name, sha256)
           WHERE f.id = u.id RETURNING f.id""",
        [f.id for f in files],
        [b"" if f.key is None else seal(f.key, f.name, ad(FILE_NAME, f.id)) for f in files],
        [b"" if f.key is None else seal(f.key, f.sha256, ad(FILE_SHA256, f.id)) for f in files],
    )
    await _advance(conn, "files", last, done)
    kept = {r["id"] for r in rows}
    return [f.id for f in files if f.id not in kept]


class LegacySealer:
    def __init__(self, db: Database, keyring: Keyring, blobs: BlobStore) -> None:
        self._db = db
        self._keyring = keyring
        self._blobs = blobs

    async def seal_batch(self, what: str, batch: int) -> Batch:
        """Seal up to `batch` rows of table `what` (one of TABLES) not sealed yet."""
        if what == "messages":
            return await self._db.transaction(_messages, self._keyring, batch)
        if what == "accounts":
            return await self._db.transaction(_accounts, self._keyring, batch)
        return await self._files(batch)

    async def _files(self, batch: int) -> Batch:
        started, files, last, done = await self._db.transaction(_file_batch, self._keyring, batch)
        if not files:
            return Batch(0, done)
        for f in files:
            if f.key is None:
                await self._blobs.delete(f.id)
            else:
                await self._blobs.seal_in_place(f.id, f.key)
        gone = await self._db.transaction(_file_rows, started, files, last, done)
        for file_id in gone or []:
            await self._blobs.delete(file_id)  # erased meanwhile: no blob without its row
        return Batch(len(files), done)
