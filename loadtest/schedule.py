"""The open-loop send schedule, and how each message names itself.

Sends are planned at intended times drawn in advance (Poisson or constant rate) and never
wait for earlier ones: a slow server makes sends late, and latency counts from the intended
time, so coordinated omission cannot hide the delay.

Every message carries its identity in its client message id (`cid`), which the server hands
back in every `msg`: `<run>.<worker>.<n>.<intended time in µs>`, and when the devices are
spread over several nodes `.<node>` after it (the node the sending device is connected to, so
the receiver tells same-node from cross-node deliveries). The time is CLOCK_MONOTONIC, which
all processes of a Linux machine share, so any worker can time any delivery.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from loadtest.config import KINDS, Arrival, Mix

T = TypeVar("T")

KEY_WORKER_BITS = 8
"""A message's key is `n << 8 | worker`: unique in a run, cheap to keep in sets."""


@dataclass(frozen=True, slots=True)
class MessageTag:
    run: str
    key: int
    intended_us: int
    node: int | None = None
    """The sending device's node (index into the gateways), when there are several."""


def make_cid(run: str, worker: int, n: int, intended_us: int, node: int | None = None) -> str:
    cid = f"{run}.{worker}.{n}.{intended_us}"
    return cid if node is None else f"{cid}.{node}"


def message_key(worker: int, n: int) -> int:
    return n << KEY_WORKER_BITS | worker


def parse_cid(cid: str | None) -> MessageTag | None:
    """The tag of a load-test message, or None for anything else."""
    if cid is None:
        return None
    parts = cid.split(".")
    if len(parts) not in (4, 5):
        return None
    run, worker, n, intended = parts[:4]
    node = parts[4] if len(parts) == 5 else None
    if not (worker.isdigit() and n.isdigit() and intended.isdigit()):
        return None
    if node is not None and not node.isdigit():
        return None
    return MessageTag(
        run,
        message_key(int(worker), int(n)),
        int(intended),
        None if node is None else int(node),
    )


def arrivals(rate: float, start: float, end: float, mode: Arrival, seed: int) -> Iterator[float]:
    """Intended send times in [start, end) for `rate` sends per second: exponential gaps
    (`poisson`) or evenly spaced (`constant`)."""
    if mode == "constant":
        for k in itertools.count():
            t = start + k / rate
            if t >= end:
                return
            yield t
    rng = random.Random(seed)  # noqa: S311 (a simulation, not security)
    t = start + rng.expovariate(rate)
    while t < end:
        yield t
        t += rng.expovariate(rate)


class WeightedChoice(Generic[T]):
    """Draws items in proportion to their weights (cumulative weights and bisection)."""

    def __init__(self, items: Sequence[T], weights: Sequence[float], rng: random.Random) -> None:
        if not items or len(items) != len(weights):
            raise ValueError("need as many weights as items, and at least one item")
        self._items = list(items)
        self._cumulative = list(itertools.accumulate(weights))
        self._total = self._cumulative[-1]
        self._rng = rng

    @property
    def total_weight(self) -> float:
        return self._total

    def draw(self) -> T:
        index = bisect.bisect_right(self._cumulative, self._rng.random() * self._total)
        return self._items[min(index, len(self._items) - 1)]


def kind_picker(mix: Mix, rng: random.Random) -> WeightedChoice[str]:
    """Draws one of KINDS in proportion to the mix's weights (kinds weighing 0 never)."""
    kinds = [k for k, w in zip(KINDS, mix.weights, strict=True) if w > 0]
    weights = [w for w in mix.weights if w > 0]
    return WeightedChoice(kinds, weights, rng)
