"""Measure seal and open costs of the secure channel (a measurement, never a test).

Run: `python -m tests.protocol.bench_channel`. Prints the best-of-5 microseconds per call for
100-byte and 16 KiB batch plaintexts, and the codec cost of one `msg` frame.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Iterator

from protocol.channel import RekeyPolicy, SecureChannel
from protocol.codec import decode_server_batch, encode
from protocol.frames import Msg, TextBody
from tests.protocol.helpers import ALICE, CONV, DEVICE_ID, MSG_ID, established

REKEY = RekeyPolicy(every_messages=1_000, interval_s=120.0)


def per_call_us(statement: Callable[[], object], number: int) -> float:
    """Best of five runs of `number` calls, in microseconds per call."""
    return min(timeit.repeat(statement, number=number, repeat=5)) / number * 1e6


def opener(channel: SecureChannel, messages: Iterator[bytes]) -> Callable[[], bytes]:
    return lambda: channel.open(next(messages))


def main() -> None:
    for size in (100, 16 * 1024):
        plaintext = b"x" * size
        number = 100_000 if size == 100 else 10_000
        pair = established(REKEY)
        seal = per_call_us(lambda: pair.server.seal(plaintext, 0.0), number)  # noqa: B023
        pair = established(REKEY)
        sealed = iter([pair.server.seal(plaintext, 0.0) for _ in range(number * 5)])
        opened = per_call_us(opener(pair.client, sealed), number)
        print(f"{size:>6} B: seal {seal:6.2f} us, open {opened:6.2f} us, sum {seal + opened:6.2f}")
    msg = Msg(
        id=MSG_ID,
        conv=CONV,
        seq=1,
        pos=1,
        sender=ALICE,
        sender_device=DEVICE_ID,
        body=TextBody(text="x" * 60),
        consent=None,
        sent_at=1,
        cid="c1",
    )
    data = encode(msg)
    print(f"encode(msg) -> {len(data)} B: {per_call_us(lambda: encode(msg), 100_000):.2f} us")
    decode_us = per_call_us(lambda: decode_server_batch(data), 100_000)
    print(f"decode_server_batch(one msg): {decode_us:.2f} us")


if __name__ == "__main__":
    main()
