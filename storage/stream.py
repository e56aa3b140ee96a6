"""The global message stream: one lock and one sequence order every stored message.

Whoever allocates stream positions (or moves a membership window) first takes the stream
lock, a transaction-level advisory lock. Commits that allocate positions are therefore
serialised, and a position is never visible before a smaller one: "pos > cursor" catch-up
cannot skip a message. Group commit keeps this cheap: one lock per batch, not per message.
"""

from __future__ import annotations

from typing import Any

STREAM_LOCK_KEY = 0x0B_01_57_8E_A4


async def lock_stream(conn: Any) -> None:
    """Take the stream lock until the end of the current transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", STREAM_LOCK_KEY)


async def current_pos(conn: Any) -> int:
    """The highest stream position allocated so far (0 before the first message)."""
    value = await conn.fetchval(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM stream_pos"
    )
    return int(value)


async def allocate_positions(conn: Any, count: int) -> list[int]:
    """`count` new, increasing stream positions. Call with the stream lock held."""
    rows = await conn.fetch(
        "SELECT nextval('stream_pos') AS pos FROM generate_series(1, $1) ORDER BY 1", count
    )
    return [int(r["pos"]) for r in rows]
