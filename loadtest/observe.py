"""What one worker process measures, shared by all its simulated devices.

Single-threaded (one trio loop per worker), so plain counters suffice. The coordinator gets
totals and interval histograms in every progress message and the rest at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from loadtest.ledger import WORKER_MASK, SendLedger
from loadtest.metrics import Counts, Latency
from loadtest.schedule import KEY_WORKER_BITS, parse_cid
from protocol import Err, ErrorCode, Sent

TEMPORARY_ERRORS = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE})
"""Refusals a client retries later with the same cid (PROTOCOL.md §6.2)."""


def now_us() -> int:
    """CLOCK_MONOTONIC in microseconds: the same clock in every process of the machine."""
    return time.monotonic_ns() // 1000


@dataclass
class Duplicates:
    """Messages a device received more than once, by what the protocol says of them."""

    catch_up: int = 0
    """Again during catch-up (after `sync`): allowed by PROTOCOL.md §6.3, dropped by id."""
    switch: int = 0
    """Again live, right after the same connection's catch-up brought it: allowed ("around
    the switch from catch-up to live"), dropped by id."""
    live: int = 0
    """Again in live delivery, same message: the server sent one message twice."""
    stored_twice: int = 0
    """Same send (`cid`) under a second message id: the server stored it twice."""

    @property
    def violations(self) -> int:
        return self.live + self.stored_twice


@dataclass
class LiveCounts:
    """Live-location traffic (the mix's `live` kind): ephemeral, so counted here and never
    in the loss check of stored messages."""

    picks: int = 0
    """Times the mix picked `live` for a device and conversation."""
    merged: int = 0
    """Picks that found an update of that conversation not written yet, or its session
    still starting: one position goes out for them (the latest, as a real client does)."""
    starts: int = 0
    """`live_start` written."""
    started: int = 0
    """`live_ok` received."""
    start_refusals: Counter[str] = field(default_factory=Counter)
    """`err` answering a `live_start`, by code."""
    starts_unanswered: int = 0
    """Starts whose connection ended (or whose batch was refused as a whole) before the
    answer came: the next pick of the conversation starts again."""
    updates_sent: int = 0
    """`live_pos` written."""
    update_refusals: Counter[str] = field(default_factory=Counter)
    """`err` refusing a `live_pos` (`rt` = live_pos), by code."""
    updates_received: int = 0
    """Live updates (ephemeral `msg` frames with `live_until`) received by the devices."""
    stops: int = 0
    """`live_stop` written: at the end of the run, or for a session no longer wanted."""
    stops_confirmed: int = 0
    """Stops whose `live_end` came back to the stopping device: the session is over."""
    stop_refusals: Counter[str] = field(default_factory=Counter)
    ends_received: int = 0
    """`live_end` frames received (the audience hears of every session that ends) before
    the device's run ended."""
    sent_by_conversation: Counter[int] = field(default_factory=Counter)
    """`live_pos` written, per conversation: times its devices make the most the audience
    could have received."""

    def as_wire(self) -> dict[str, Any]:
        return {
            "picks": self.picks,
            "merged": self.merged,
            "starts": self.starts,
            "started": self.started,
            "start_refusals": dict(self.start_refusals),
            "starts_unanswered": self.starts_unanswered,
            "updates_sent": self.updates_sent,
            "update_refusals": dict(self.update_refusals),
            "updates_received": self.updates_received,
            "stops": self.stops,
            "stops_confirmed": self.stops_confirmed,
            "stop_refusals": dict(self.stop_refusals),
            "ends_received": self.ends_received,
            "sent_by_conversation": dict(self.sent_by_conversation),
        }


@dataclass
class Observations:
    run: str
    worker: int
    counts: Counts = field(default_factory=Counts)
    latency: Latency = field(default_factory=Latency)
    """Send (intended time) to delivery, every delivery of the run up to the last interval
    taken (`total_latency()` includes the current one)."""
    interval: Latency = field(default_factory=Latency)
    """The same, since the last progress message (each delivery is recorded once, here)."""
    same_node: Latency = field(default_factory=Latency)
    cross_node: Latency = field(default_factory=Latency)
    """The same deliveries when the devices are spread over several nodes, split by whether
    the sending device was on the receiving device's node or on another."""
    ack_latency: Latency = field(default_factory=Latency)
    handshake: Latency = field(default_factory=Latency)
    """Connect to established secure channel (every connection)."""
    ready: Latency = field(default_factory=Latency)
    """Connect to `synced` (first connection of each device)."""
    storm_ready: Latency = field(default_factory=Latency)
    """Drop to `synced` again, for devices dropped by the reconnect storm."""
    schedule_lag: Latency = field(default_factory=Latency)
    """How late the scheduler handed sends to devices: the tester's own delay."""
    loop_lag: Latency = field(default_factory=Latency)
    """How late a 5 ms timer fires in this worker while sending: how long its event loop
    is busy at a stretch, which deliveries arriving meanwhile wait for."""
    sends: SendLedger = field(default_factory=SendLedger)
    duplicates: Duplicates = field(default_factory=Duplicates)
    out_of_order: int = 0
    """New messages whose position was below one already received on the same connection
    (PROTOCOL.md §6.1 promises increasing positions); repeats are counted as duplicates."""
    stale: int = 0
    """Messages not of this run (earlier runs on a reused server, other clients)."""
    erased: int = 0
    """Message ids received in `erased` frames (tombstones, PROTOCOL.md 6.9): messages the
    server erased (a consent clock, a withdrawal, a deletion). Not deliveries: outside the
    loss check."""
    catch_up_deliveries: int = 0
    disconnects: int = 0
    """Connections that ended without the tester ending them."""
    first_connect_at: float | None = None
    last_ready_at: float | None = None
    last_delivery_at: float | None = None
    interval_deliveries: int = 0
    settled: int = 0
    """Devices whose first connection succeeded or finally failed (the ramp waits for all)."""
    refused_errors: Counter[str] = field(default_factory=Counter)
    live: LiveCounts = field(default_factory=LiveCounts)

    def on_sent(self, frame: Sent, at_us: int) -> None:
        tag = parse_cid(frame.cid)
        if tag is None or tag.run != self.run or tag.key & WORKER_MASK != self.worker:
            return
        stored = None if frame.pos is None else (frame.id, frame.pos, frame.sent_at)
        if self.sends.acked(tag.key >> KEY_WORKER_BITS, stored):
            self.counts.acked += 1
            self.ack_latency.record_us(at_us - tag.intended_us)

    def on_err(self, frame: Err) -> None:
        self.counts.errors[f"err:{frame.code.value}"] += 1
        if frame.code in TEMPORARY_ERRORS:
            return  # retried with the same cid
        tag = parse_cid(frame.ref)
        if tag is not None and tag.run == self.run and tag.key & WORKER_MASK == self.worker:
            self.sends.refused(tag.key >> KEY_WORKER_BITS, frame.code.value)

    def on_delivery(
        self, intended_us: int, at_us: int, catching_up: bool, cross_node: bool | None = None
    ) -> None:
        """`cross_node`: None with a single node, else whether sender and receiver were on
        different nodes."""
        self.counts.delivered += 1
        self.interval_deliveries += 1
        self.interval.record_us(at_us - intended_us)
        if cross_node is not None:
            (self.cross_node if cross_node else self.same_node).record_us(at_us - intended_us)
        self.last_delivery_at = at_us / 1e6
        if catching_up:
            self.catch_up_deliveries += 1

    def take_interval(self) -> tuple[Latency, int]:
        """The interval histogram and delivery count, and start a new interval."""
        interval, count = self.interval, self.interval_deliveries
        self.latency.merge(interval)
        self.interval, self.interval_deliveries = Latency(), 0
        return interval, count

    def total_latency(self) -> Latency:
        """Every delivery of the run so far."""
        self.latency.merge(self.interval)
        self.interval = Latency()
        return self.latency
