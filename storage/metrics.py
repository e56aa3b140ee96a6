"""What the storage layer measures for the server's Prometheus metrics (server.metrics
serves them): how long a call waits for a database connection, and how long the call
itself takes across the asyncio bridge (the transaction included)."""

from __future__ import annotations

from prometheus_client import Histogram

STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

POOL_WAIT_SECONDS = Histogram(
    "obrol_storage_pool_wait_seconds",
    "Time a storage call waited for a free database connection",
    buckets=STORAGE_BUCKETS,
)
CALL_SECONDS = Histogram(
    "obrol_storage_call_seconds",
    "Round trip of a storage call over the asyncio bridge, the transaction included",
    buckets=STORAGE_BUCKETS,
)
