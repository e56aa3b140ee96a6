"""CPU and memory of processes and of the machine, read from /proc (Linux).

Every reader returns None (or 0 for the machine) rather than raising when a process is gone
or /proc is unavailable: statistics must never end a run.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_s: float
    """utime + stime of the process itself."""
    children_cpu_s: float
    """cutime + cstime: CPU of its children that have exited and been waited for."""
    rss_mb: float
    peak_rss_mb: float


def _stat_fields(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    # The command name (field 2) may hold spaces; fields after it start at field 3.
    return data[data.rindex(")") + 2 :].split()


def sample(pid: int) -> ProcSample | None:
    """CPU seconds and resident memory of `pid`, or None if it cannot be read."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    rss = peak = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except (OSError, UnicodeDecodeError, ValueError, IndexError):
        pass
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    return ProcSample(
        cpu_s=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        children_cpu_s=(int(fields[13]) + int(fields[14])) / CLOCK_TICKS,
        rss_mb=rss,
        peak_rss_mb=peak,
    )


def children(pid: int) -> list[int]:
    """Pids of the live children of `pid`."""
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and len(fields) > 1 and fields[1] == str(pid):
                found.append(int(entry))
    return found


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of `pid`, its live children and the children it has reaped (a
    PostgreSQL postmaster and its backends, say)."""
    own = sample(pid)
    if own is None:
        return None
    total = own.cpu_s + own.children_cpu_s
    for child in children(pid):
        child_sample = sample(child)
        if child_sample is not None:
            total += child_sample.cpu_s + child_sample.children_cpu_s
    return total


def postmaster_pid(data_dir: Path) -> int | None:
    """The PostgreSQL postmaster of an obrol data folder's embedded cluster, if running."""
    try:
        first = (data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores) since boot."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def raise_open_files_limit(needed: int) -> str | None:
    """Raise this process's open-file limit (children inherit it) to cover `needed`
    descriptors if the hard limit allows; a warning if it does not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < needed:
        return (
            f"the open-file limit ({target}) is below the ~{needed} sockets this run needs; "
            "raise it (ulimit -n) or use fewer devices"
        )
    return None


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True, slots=True)
class Mark:
    at: float
    cpu_s: float
    rss_mb: float
    db_cpu_s: float | None
    machine_busy_s: float
    bus_cpu_s: float | None = None


class ServerWatch:
    """CPU and memory of a local server - one process, or the nodes of `--nodes K` - (and of
    its PostgreSQL, and of a NATS server between the nodes) at the moments the run marks,
    plus the highest resident memory seen.

    `pids`: the server processes (each with its workers, if any); `db_pid`: the postmaster
    when the tester runs it (default: the one of `data_dir`'s embedded cluster); `bus_pid`:
    the nats-server, counted apart."""

    def __init__(
        self,
        pids: Sequence[int],
        data_dir: Path | None = None,
        *,
        db_pid: int | None = None,
        bus_pid: int | None = None,
    ) -> None:
        self.pids = list(pids)
        self.pid = self.pids[0]
        self.data_dir = data_dir
        self.db_pid = db_pid
        self.bus_pid = bus_pid
        self.marks: dict[str, Mark] = {}
        self.max_rss_mb = 0.0
        self.peak_rss_mb = 0.0
        self.bus_max_rss_mb = 0.0

    def postmaster(self) -> int | None:
        if self.db_pid is not None:
            return self.db_pid
        return None if self.data_dir is None else postmaster_pid(self.data_dir)

    def _server(self) -> tuple[float, float, float] | None:
        """CPU seconds, resident and peak memory (MB) of the server: each process, and with
        `--workers N` its worker processes (live, and those it reaped after they died); never
        the PostgreSQL or the NATS server, counted apart. None if none can be read."""
        postmaster = self.postmaster()
        cpu = rss = peak = 0.0
        readable = False
        for pid in self.pids:
            found = sample(pid)
            if found is None:
                continue
            readable = True
            cpu += found.cpu_s + found.children_cpu_s
            rss += found.rss_mb
            peak += found.peak_rss_mb
            for child in children(pid):
                if child == postmaster:
                    continue
                worker = sample(child)
                if worker is not None:
                    cpu += worker.cpu_s + worker.children_cpu_s
                    rss += worker.rss_mb
                    peak += worker.peak_rss_mb
        return (cpu, rss, peak) if readable else None

    def cpu_now(self) -> float | None:
        """The server's CPU seconds so far (all its processes)."""
        found = self._server()
        return None if found is None else found[0]

    def poll(self) -> None:
        found = self._server()
        if found is not None:
            self.max_rss_mb = max(self.max_rss_mb, found[1])
            self.peak_rss_mb = max(self.peak_rss_mb, found[2])
        if self.bus_pid is not None:
            bus = sample(self.bus_pid)
            if bus is not None:
                self.bus_max_rss_mb = max(self.bus_max_rss_mb, bus.rss_mb)

    def mark(self, name: str, at: float) -> None:
        found = self._server()
        if found is None:
            return
        self.poll()
        postmaster = self.postmaster()
        db = None if postmaster is None else tree_cpu_s(postmaster)
        bus = None if self.bus_pid is None else sample(self.bus_pid)
        self.marks[name] = Mark(
            at, found[0], found[1], db, machine_busy_s(), None if bus is None else bus.cpu_s
        )

    def between(self, first: str, last: str) -> tuple[Mark, Mark] | None:
        if first in self.marks and last in self.marks:
            return self.marks[first], self.marks[last]
        return None
