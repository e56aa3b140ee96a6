"""The server's Prometheus metrics (`GET /metrics`), defined in one place.

Every value here is a count, a size or a duration: no label ever carries an id, a name or
anything else about a person, so the endpoint can be scraped without exposing anyone.

Several processes (`obrol serve --workers N`) share one view through prometheus-client's
multiprocess mode: when PROMETHEUS_MULTIPROC_DIR is set (before this module is imported;
the supervisor sets it for its workers), each process writes its values to files there and
`exposition()` sums them, whichever worker answers the scrape. Without it, the values are
this process's.

What the storage layer and the push bridge measure is defined beside them
(storage.metrics, push.metrics) and collected here with the rest.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from server.gateway.states import State

# Latency buckets (seconds) from a millisecond to ten seconds: what delivery, handshakes
# and commits span on a healthy server and in an overload.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

CONNECTIONS = Gauge(
    "obrol_connections",
    "Gateway connections by state (handshake, waiting_sync, syncing, live, resync)",
    ["state"],
    multiprocess_mode="livesum",
)
_BY_STATE = {state: CONNECTIONS.labels(state.value) for state in State if state is not State.CLOSED}


def connection_moved(old: State | None, new: State) -> None:
    """A connection entered `new` (from `old`, None when it was just accepted)."""
    if old is not None and old is not State.CLOSED:
        _BY_STATE[old].dec()
    if new is not State.CLOSED:
        _BY_STATE[new].inc()


HANDSHAKES = Counter(
    "obrol_handshakes",
    "Gateway handshakes by outcome: ok (established, the device may connect), timeout, "
    "busy (no admission slot within the queue deadline), closed (refused, malformed, a "
    "step too slow, the peer went away, or the database was down)",
    ["outcome"],
)
HANDSHAKE_SECONDS = Histogram(
    "obrol_handshake_seconds",
    "From admission (a handshake slot) to an established secure channel",
    buckets=LATENCY_BUCKETS,
)
DELIVERIES = Counter(
    "obrol_deliveries",
    "Frames handed to live connections by the fan-out (messages and live-only events)",
)
DELIVERY_SECONDS = Histogram(
    "obrol_delivery_latency_seconds",
    "From the commit of a message batch to the socket write that carried it: one "
    "observation per connection write, the oldest message in that write",
    buckets=LATENCY_BUCKETS,
)
COMMIT_BATCH = Histogram(
    "obrol_commit_batch_size",
    "Sends committed together by one group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
COMMIT_SECONDS = Histogram(
    "obrol_commit_seconds",
    "Duration of one group commit (the store's append, one transaction)",
    buckets=LATENCY_BUCKETS,
)
WORKER_RESTARTS = Gauge(
    "obrol_worker_restarts",
    "Worker processes the supervisor restarted after they died (obrol serve --workers N)",
    multiprocess_mode="max",
)
# The supervisor tells each worker it starts how many restarts there were so far.
WORKER_RESTARTS.set(int(os.environ.get("OBROL_WORKER_RESTARTS", "0") or 0))
BUS_LAG_SECONDS = Histogram(
    "obrol_bus_lag_seconds",
    "From a commit on another process (its message's time) to this process reading it from "
    "the store to fan it out: the bus's announcement, or the timer when the bus is down",
    buckets=LATENCY_BUCKETS,
)
BUS_UP = Gauge(
    "obrol_bus_up",
    "1 while this process listens on the bus (0: down, announcements missed; the feed's "
    "timer reads the store meanwhile); with several workers the lowest counts",
    multiprocess_mode="livemin",
)
SWEEP_ERASED = Counter(
    "obrol_sweep_erased_rows",
    "Rows the retention sweeper erased, by rule",
    ["rule"],
)
SWEEP_FILES = Counter(
    "obrol_sweep_erased_files",
    "Files (blobs) the retention sweeper erased, by rule",
    ["rule"],
)
SWEEP_PASSES = Counter("obrol_sweep_passes", "Passes of the retention sweeper")


def delivered(committed_at: float) -> None:
    """A write carried messages, the oldest committed at `committed_at` (time.time())."""
    DELIVERY_SECONDS.observe(max(time.time() - committed_at, 0.0))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (all processes' in multiprocess mode) and its
    content type."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
