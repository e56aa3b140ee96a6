"""Search everywhere a running obrol could have put a value it promised not to keep.

After a scenario that handled personal data which must not persist (the coordinates of a
check-in, an ephemeral location message), `find_everywhere(harness, needles, logs)` looks
for every needle in:

- every row of every table of the test's database, rendered as text (`row::text`: numbers
  as PostgreSQL prints them, bytea as hex);
- the log output captured while the scenario ran (`capture_logs()`: every record of every
  logger, DEBUG and up, formatted with the exception text);
- every file under the server's data folder (identity key, blobs);
- PostgreSQL's own log file(s), and, after a CHECKPOINT, every file of the embedded cluster
  (tables, indexes, WAL): a value written once and then deleted still shows in the WAL.

Needles are text (searched as UTF-8) or bytes (searched raw, and as hex where text holds
bytes: bytea in row text, a log line quoting bytes). `coordinate_needles()` makes the
usual renderings of numbers. Choose values no other test uses and that no timestamp can
produce (give a latitude with its minus sign: "-6.1235" is never part of a time).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import msgpack
import trio

from tests.harness import Harness

Needle = str | bytes


@dataclass
class Findings:
    """Where each needle was found (`found`: "place: needle"), and what was searched."""

    found: list[str] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)


class LogCapture(logging.Handler):
    """Every log record while installed, formatted as the server's text log would be,
    plus any exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def capture_logs() -> Iterator[LogCapture]:
    """Capture every record (the root logger lowered to DEBUG meanwhile)."""
    capture = LogCapture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


def coordinate_needles(*values: float) -> list[Needle]:
    """How a coordinate could be written down: repr, 4 to 6 decimals, scaled to whole
    micro- and 1e-7 degrees, and as IEEE 754 double bytes (big-endian as in msgpack, with
    msgpack's float64 marker, and little-endian as PostgreSQL and numpy store them)."""
    needles: list[Needle] = []
    for v in values:
        texts = [repr(v), *(f"{v:.{d}f}" for d in (4, 5, 6)), str(round(v * 1e6))]
        texts.append(str(round(v * 1e7)))
        needles += [t for t in dict.fromkeys(texts) if t not in needles]
        needles += [struct.pack(">d", v), msgpack.packb(v), struct.pack("<d", v)]
    return needles


def _search(haystack: bytes, place: str, needles: Sequence[Needle], findings: Findings) -> None:
    for needle in needles:
        forms = [needle.encode()] if isinstance(needle, str) else [needle, needle.hex().encode()]
        if any(form in haystack for form in forms):
            findings.found.append(f"{place}: {needle!r}")


async def _database_rows(database_url: str, checkpoint: bool) -> dict[str, bytes]:
    """Each table of the public schema -> all its rows as text, one a line."""

    async def dump() -> dict[str, bytes]:
        conn = await asyncpg.connect(database_url)
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
            rows = {}
            for t in tables:
                name = t["tablename"]
                text = await conn.fetch(f'SELECT t::text AS row FROM public."{name}" t')
                rows[name] = "\n".join(r["row"] for r in text).encode()
            if checkpoint:
                await conn.execute("CHECKPOINT")  # every change reaches the cluster's files
            return rows
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, dump())


def _files(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _search_files(
    paths: Sequence[Path], place: str, needles: Sequence[Needle], findings: Findings
) -> None:
    """Runs in a worker thread: a cluster's files can be hundreds of megabytes."""
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # a file PostgreSQL removed meanwhile (a recycled WAL segment)
        _search(data, f"{place} {path}", needles, findings)
    findings.searched.append(f"{place} ({len(paths)} files)")


async def find_everywhere(
    harness: Harness,
    needles: Sequence[Needle],
    logs: LogCapture,
    *,
    cluster_files: bool = True,
) -> Findings:
    """Search the places of the module doc for `needles`. PostgreSQL's files are searched
    only when the tests run it (embedded): `harness.postgres` says where they are."""
    findings = Findings()
    assert harness.settings.database_url is not None
    url = harness.settings.database_url.get_secret_value()
    postgres = harness.postgres
    tables = await _database_rows(url, checkpoint=cluster_files and postgres is not None)
    for name, rows in tables.items():
        _search(rows, f"table {name}", needles, findings)
    findings.searched.append(f"database ({len(tables)} tables)")
    _search(logs.text().encode(), "log output", needles, findings)
    findings.searched.append(f"log output ({len(logs.lines)} lines)")
    places = [("data folder", list(_files(harness.settings.data_dir)))]
    if postgres is not None:
        log_files = [postgres.log_file]
        for folder in ("log", "pg_log"):  # only if logging_collector were on
            log_files += list(_files(postgres.cluster_dir / folder))
        places.append(("PostgreSQL log", log_files))
        if cluster_files:
            places.append(("PostgreSQL cluster", list(_files(postgres.cluster_dir))))
    for place, paths in places:
        await trio.to_thread.run_sync(_search_files, paths, place, needles, findings)
    return findings
