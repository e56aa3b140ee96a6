"""Exact loss accounting with bitsets.

A message's key is (worker w, number n): worker w numbers its sends 0, 1, 2, ... So the set
of messages a device received from worker w is a bitset with bit n set, and so is the set
a conversation should have delivered. Missing = expected & ~received, unexpected =
received & ~expected: exact, whatever the scale, in a few big-integer operations per device.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from loadtest.schedule import KEY_WORKER_BITS

WORKER_MASK = (1 << KEY_WORKER_BITS) - 1

SCHEDULED, WRITTEN, ACKED, REFUSED, ABANDONED = 0, 1, 2, 3, 4
"""A send's life: handed to a device, in its outbox (written), acknowledged, refused by the
server, or never written because its device gave up connecting."""


class Received:
    """The messages one device has received, as one growable bitmap per sending worker."""

    __slots__ = ("_maps",)

    def __init__(self) -> None:
        self._maps: dict[int, bytearray] = {}

    def add(self, key: int) -> bool:
        """Record `key`; False if it was already there."""
        worker, n = key & WORKER_MASK, key >> KEY_WORKER_BITS
        bitmap = self._maps.get(worker)
        if bitmap is None:
            bitmap = self._maps[worker] = bytearray()
        byte = n >> 3
        if byte >= len(bitmap):
            bitmap.extend(bytes(max(byte + 1 - len(bitmap), len(bitmap))))
        bit = 1 << (n & 7)
        if bitmap[byte] & bit:
            return False
        bitmap[byte] |= bit
        return True

    def __contains__(self, key: int) -> bool:
        bitmap = self._maps.get(key & WORKER_MASK)
        n = key >> KEY_WORKER_BITS
        return (
            bitmap is not None and (n >> 3) < len(bitmap) and bool(bitmap[n >> 3] & (1 << (n & 7)))
        )

    def as_ints(self) -> dict[int, int]:
        return {w: int.from_bytes(m, "little") for w, m in self._maps.items()}


def bitset(numbers: Iterable[int]) -> int:
    """The bitset with bit n set for every n in `numbers`."""
    numbers = list(numbers)
    if not numbers:
        return 0
    data = bytearray((max(numbers) >> 3) + 1)
    for n in numbers:
        data[n >> 3] |= 1 << (n & 7)
    return int.from_bytes(data, "little")


def bits(value: int, limit: int) -> Iterator[int]:
    """The positions of the lowest `limit` set bits of `value`."""
    for _ in range(limit):
        if not value:
            return
        low = value & -value
        yield low.bit_length() - 1
        value ^= low


@dataclass
class DeviceCheck:
    expected: int
    received: int
    lost: int
    unexpected: int
    lost_sample: list[int]
    unexpected_sample: list[int]


def check_device(
    expected: dict[int, int], received: dict[int, int], sample: int, unsettled: dict[int, int]
) -> DeviceCheck:
    """Compare what a device should have got (bitsets per worker) with what it got; what it
    may or may not get (`unsettled`) counts neither way."""
    result = DeviceCheck(0, 0, 0, 0, [], [])
    for worker in expected.keys() | received.keys():
        want, got = expected.get(worker, 0), received.get(worker, 0)
        missing, extra = want & ~got, got & ~want & ~unsettled.get(worker, 0)
        result.expected += want.bit_count()
        result.received += (want & got).bit_count()
        result.lost += missing.bit_count()
        result.unexpected += extra.bit_count()
        for n in bits(missing, sample - len(result.lost_sample)):
            result.lost_sample.append(n << KEY_WORKER_BITS | worker)
        for n in bits(extra, sample - len(result.unexpected_sample)):
            result.unexpected_sample.append(n << KEY_WORKER_BITS | worker)
    return result


class SendLedger:
    """The sends of one worker, by number: conversation and state."""

    def __init__(self) -> None:
        self.conversation = array("i")
        self.sender = array("i")  # the sending user
        self.state = bytearray()
        self.refusals: Counter[str] = Counter()
        self.stored: dict[int, tuple[bytes, int, int]] = {}
        """With `keep_stored`: per acknowledged send, its message id, position and `at`."""
        self.keep_stored = False

    def schedule(self, conversation: int, sender: int = -1) -> int:
        """A new send in `conversation` by user `sender`; returns its number."""
        self.conversation.append(conversation)
        self.sender.append(sender)
        self.state.append(SCHEDULED)
        return len(self.state) - 1

    def written(self, n: int) -> None:
        if self.state[n] == SCHEDULED:
            self.state[n] = WRITTEN

    def acked(self, n: int, stored: tuple[bytes, int, int] | None = None) -> bool:
        """Mark `n` acknowledged (as message id, position, `at` = `stored`); True the
        first time."""
        if self.state[n] in (SCHEDULED, WRITTEN):
            self.state[n] = ACKED
            if self.keep_stored and stored is not None:
                self.stored[n] = stored
            return True
        return False

    def stored_messages(self) -> list[list[Any]]:
        """[conversation, sending user, position, message id, at ms] of every send
        acknowledged as stored (with `keep_stored`)."""
        return [
            [self.conversation[n], self.sender[n], pos, message_id, at_ms]
            for n, (message_id, pos, at_ms) in self.stored.items()
        ]

    def refused(self, n: int, code: str) -> None:
        if self.state[n] != REFUSED:
            self.state[n] = REFUSED
            self.refusals[code] += 1

    def abandon(self, n: int) -> None:
        if self.state[n] == SCHEDULED:
            self.state[n] = ABANDONED

    def count(self, state: int) -> int:
        return self.state.count(state)

    @property
    def outstanding(self) -> int:
        """Written but neither acknowledged nor refused yet."""
        return self.state.count(WRITTEN)

    def by_conversation(self, *states: int) -> dict[int, list[int]]:
        """Numbers of the sends in one of `states`, per conversation.

        ACKED ones are stored: every member device must receive them. SCHEDULED and WRITTEN
        ones are unsettled: the server may have stored them or not (yet), so a device that
        receives one is not wrong and one that does not is not short of it."""
        by_conversation: dict[int, list[int]] = {}
        for n, state in enumerate(self.state):
            if state in states:
                by_conversation.setdefault(self.conversation[n], []).append(n)
        return by_conversation
