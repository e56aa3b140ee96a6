"""The send phase of one worker: the open-loop scheduler and the messages it sends.

Each worker sends its share of the global rate. A send picks a (conversation, member) pair
with weight 1/size - so every conversation is equally likely overall and any member may be
the sender - then one of that member's devices and a kind from the traffic mix. A `live`
pick is no stored message: it becomes an update of that device's live-location session in
that conversation (see loadtest.live), outside the send ledger and its loss check.
"""

from __future__ import annotations

import random
import string
import time
from dataclasses import dataclass

import trio

from loadtest.config import Arrival, Mix
from loadtest.device import SimDevice
from loadtest.live import Target
from loadtest.observe import Observations
from loadtest.schedule import WeightedChoice, arrivals, kind_picker, make_cid
from protocol import Consent, FileBody, LocationBody, Send, TextBody

LATE_BATCH = 100
"""Sends handed out back to back, at most, when the scheduler is behind."""
FILE_CONTENT = b"obrol load test attachment\n" * 40
FILE_NAME = "notes.txt"
FILE_MIME = "text/plain"
"""One such file is uploaded to each conversation; `file` messages refer to it."""
MEDIA_CONSENT = Consent(purpose="media_share", scope="conversation", retention="default")
LOCATION_CONSENT = Consent(purpose="location_share", scope="conversation", retention=3600)
"""Stored for an hour (not `ephemeral`): stored messages have an exact loss check;
ephemeral ones are only for the devices online at that instant."""


@dataclass(frozen=True, slots=True)
class Conversation:
    index: int
    id: bytes
    size: int
    file_id: bytes | None


class Bodies:
    """Message bodies, built once and shared (frames are immutable)."""

    def __init__(self, text_chars: int, rng: random.Random) -> None:
        alphabet = string.ascii_letters + string.digits + " "
        self.text = TextBody(text="".join(rng.choice(alphabet) for _ in range(text_chars)))
        self.location = LocationBody(lat=-6.2, lon=106.816666, acc=12.5)
        self._files: dict[bytes, FileBody] = {}

    def file(self, file_id: bytes) -> FileBody:
        body = self._files.get(file_id)
        if body is None:
            body = self._files[file_id] = FileBody(
                file_id=file_id, name=FILE_NAME, size=len(FILE_CONTENT), mime=FILE_MIME
            )
        return body


@dataclass
class Traffic:
    """What a worker needs to send its share."""

    obs: Observations
    rate: float
    arrival: Arrival
    mix: Mix
    slots: WeightedChoice[tuple[Conversation, int]]
    devices_of_user: dict[int, list[SimDevice]]
    bodies: Bodies
    seed: int

    def _send(self, intended: float, rng: random.Random, kinds: WeightedChoice[str]) -> None:
        conversation, user = self.slots.draw()
        usable = [d for d in self.devices_of_user[user] if d.failed is None]
        kind = kinds.draw()
        if not usable:  # every device of this member gave up connecting
            if kind != "live":  # a live update owes nothing to the loss check
                self.obs.sends.abandon(self.obs.sends.schedule(conversation.index, user))
            return
        device = rng.choice(usable)
        if kind == "live":
            device.enqueue_live(Target(conversation.index, conversation.id))
            return
        if kind == "file" and conversation.file_id is None:
            kind = "text"
        n = self.obs.sends.schedule(conversation.index, user)
        cid = make_cid(self.obs.run, self.obs.worker, n, int(intended * 1e6), device.node)
        if kind == "text":
            send = Send(cid=cid, conv=conversation.id, body=self.bodies.text)
        elif kind == "file":
            assert conversation.file_id is not None
            body = self.bodies.file(conversation.file_id)
            send = Send(cid=cid, conv=conversation.id, body=body, consent=MEDIA_CONSENT)
        else:
            send = Send(
                cid=cid, conv=conversation.id, body=self.bodies.location, consent=LOCATION_CONSENT
            )
        device.enqueue(send)

    async def run(self, start: float, end: float) -> None:
        """Hand out every send intended in [start, end) (CLOCK_MONOTONIC seconds) at its
        time, or at once when late; returns at `end` or when cancelled."""
        if self.rate <= 0:
            await trio.sleep(max(0.0, end - time.monotonic()))
            return
        rng = random.Random(self.seed)  # noqa: S311 (a simulation, not security)
        kinds = kind_picker(self.mix, rng)
        late_in_a_row = 0
        for intended in arrivals(self.rate, start, end, self.arrival, self.seed + 1):
            delay = intended - time.monotonic()
            if delay > 0:
                late_in_a_row = 0
                await trio.sleep(delay)
            elif (late_in_a_row := late_in_a_row + 1) % LATE_BATCH == 0:
                # Behind schedule: hand out what is due without yielding after each send
                # (a yield waits for every runnable device task), but not forever.
                await trio.lowlevel.checkpoint()
            late = time.monotonic() - intended
            self.obs.schedule_lag.record_us(int(late * 1e6))
            self._send(intended, rng, kinds)
        await trio.sleep(max(0.0, end - time.monotonic()))
