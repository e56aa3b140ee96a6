"""Group commit: sends accepted while a commit is in flight are committed together.

One commit is in flight per process at a time, so positions are published in the order
they were committed: every connection receives `msg` frames in increasing `pos`. Each
sender gets its `sent` after the commit; then the `msg`, encoded once, fans out to every
live connection of this process of every member the commit saw (filtered by the consent
scope), and the bus tells the other processes the stream reached the batch's last position
(they read it from the store: server/gateway/stream.py).

Positions below the batch's first that this process has not fanned out yet (another
process committed them, or a commit of ours that failed after all) are read from the store
first (`StreamFeed.fill`), so that no member misses them nor acks past them.

The committer outlives any failure: a batch the database could not take (or that failed for
any other reason) is answered `unavailable`, never `sent`, and the next batch is tried. A
commit can fail after it happened (the connection lost around COMMIT): the next commit that
works looks those sends up, and the ones that were stored are fanned out (from the store)
before its own messages.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from protocol import Body, Consent, Err, ErrorCode, Msg, Sent, SystemBody, encode
from server.gateway.connection import Connection
from server.gateway.hub import Hub
from server.metrics import COMMIT_BATCH, COMMIT_SECONDS
from storage.errors import DatabaseUnavailableError
from storage.messages import (
    AppendBatch,
    AppendResult,
    MessageStore,
    NewMessage,
    Outcome,
    StoredMessage,
)
from storage.outages import OutageLog

if TYPE_CHECKING:
    from server.bus.base import Bus
    from server.gateway.stream import StreamFeed

logger = logging.getLogger(__name__)


def err_frame(
    code: ErrorCode, message: str, ref: str | None = None, ref_type: str | None = None
) -> bytes:
    """An encoded `err` frame; `ref`/`ref_type` point at the frame refused."""
    return encode(Err(code=code, message=message, ref=ref, ref_type=ref_type))


def unix_ms(message: StoredMessage) -> int:
    return int(message.sent_at.timestamp() * 1000)


def msg_frame(message: StoredMessage, body: Body, consent: Consent | None) -> bytes:
    """The encoded `msg` frame of a stored message (built once, shared by all recipients)."""
    return encode(
        Msg(
            id=message.id.bytes,
            conv=message.conversation_id.bytes,
            seq=message.seq,
            pos=message.pos,
            sender=message.sender_id.bytes,
            sender_device=message.sender_device_id.bytes,
            body=body,
            consent=consent,
            sent_at=unix_ms(message),
            cid=message.client_id,
        )
    )


# What a message of a sender whose data key was destroyed becomes (PROTOCOL.md 6.2): a
# `system` message with the event `erased`, keeping its place (id, seq, pos, sender).
ERASED_BODY = SystemBody(event="erased", text="")


def recipients(
    members: frozenset[uuid.UUID], sender: uuid.UUID, scope: tuple[uuid.UUID, ...] | None
) -> frozenset[uuid.UUID]:
    """Members who may see a message: all, or those its consent scope names, and the sender."""
    if scope is None:
        return members
    return members & frozenset((*scope, sender))


NOT_MEMBER_TEXT = "no such conversation, or you are not a member"
CONSENT_NOT_GRANTED_TEXT = "you have not granted (or have withdrawn) the tag's purpose"
SCOPE_INVALID_TEXT = "the tag's scope names someone who is not a member of the conversation"
SENDER_ERASED_TEXT = "this account's data was erased: it cannot send"

# How a send the store refused is answered.
REFUSALS = {
    Outcome.NOT_MEMBER: (ErrorCode.NOT_MEMBER, NOT_MEMBER_TEXT),
    Outcome.CONSENT_NOT_GRANTED: (ErrorCode.CONSENT_NOT_GRANTED, CONSENT_NOT_GRANTED_TEXT),
    Outcome.SCOPE_INVALID: (ErrorCode.CONSENT_SCOPE_INVALID, SCOPE_INVALID_TEXT),
    Outcome.SENDER_ERASED: (ErrorCode.ACCOUNT_DEACTIVATED, SENDER_ERASED_TEXT),
}

# Sends of failed commits kept to be looked up (see Committer._refuse). Only commits that
# reached the database can have stored anything: the first ones of an outage, kept first.
MAX_UNSURE = 100_000


@dataclass(frozen=True, slots=True)
class PendingSend:
    message: NewMessage
    body: Body
    consent: Consent | None
    conn: Connection


class Committer:
    def __init__(
        self,
        store: MessageStore,
        hub: Hub,
        feed: StreamFeed,
        *,
        bus: Bus | None = None,
        max_batch: int = 1000,
    ) -> None:
        self._store = store
        self._hub = hub
        self._feed = feed
        self._bus = bus
        self._max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[PendingSend](max_batch * 4)
        self._outage = OutageLog(logger, "commit")
        # Sends of failed commits, which may have been stored all the same: looked up with
        # the next commit that works (see `_commit`); the feed fans out those that were.
        self._unsure: dict[tuple[uuid.UUID, str], PendingSend] = {}
        self.committed = 0
        self.batches = 0

    async def submit(self, item: PendingSend) -> None:
        """Queue a send; waits only when the queue is full (back-pressure on the reader)."""
        await self._send.send(item)

    async def run(self) -> None:
        """Commit batches until cancelled. Nothing else ends it: a batch that fails, for
        whatever reason, is answered `unavailable` and the next one is tried."""
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._commit(batch)

    async def _commit(self, batch: list[PendingSend]) -> None:
        """Commit `batch` and answer every send in it once: `sent` (after the commit),
        `not_member`, or `unavailable` if the commit failed. Retrying an `unavailable` send
        with the same cid is safe even if the commit did happen (sends are idempotent)."""
        unsure = [p.message for p in self._unsure.values()]
        started = time.perf_counter()
        try:
            appended = await self._store.append([p.message for p in batch], unsure)
        except DatabaseUnavailableError as exc:
            self._outage.failed(len(batch), exc)
            self._refuse(batch)
            return
        except Exception:
            logger.exception("commit of %d sends failed unexpectedly", len(batch))
            self._refuse(batch)
            return
        self._outage.succeeded()
        committed_at = time.time()
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        COMMIT_BATCH.observe(len(batch))
        self.batches += 1
        self._unsure = {}
        answered = 0
        new = [r.message.pos for r in appended.results if r.outcome is Outcome.STORED and r.message]
        recovered = [m.pos for m in appended.recovered]
        try:
            async with self._feed.lock:
                # Below the batch's first position everything is settled: fan out what of it
                # this process has not yet, from the store, before the batch itself. If the
                # store cannot be read now, the batch too comes from the store later.
                settled = min(new) - 1 if new else max(recovered, default=0)
                live = await self._feed.fill(settled)
                for p, result in zip(batch, appended.results, strict=True):
                    stored = acknowledge(p, result)
                    answered += 1
                    if stored is not None:
                        self.committed += 1
                        if live and stored.pos > self._feed.last:
                            self._publish(stored, p, appended, committed_at)
                            self._feed.last = stored.pos
            if new and self._bus is not None:
                self._bus.announce(max(new))
        except Exception:
            # A bug. What is committed stays committed: a retry with the cid gets its `sent`.
            logger.exception("answering a committed batch of %d sends failed", len(batch))
            self._refuse(batch[answered:])

    def _refuse(self, sends: list[PendingSend]) -> None:
        """Answer each send `unavailable` (the client retries it with the same cid), and
        remember it as unsure: a commit that failed may have happened all the same."""
        for p in sends:
            p.conn.reply(
                err_frame(
                    ErrorCode.UNAVAILABLE,
                    "the database is unavailable; retry with the same cid",
                    p.message.client_id,
                    "send",
                )
            )
            if len(self._unsure) < MAX_UNSURE:
                key = (p.message.sender_device_id, p.message.client_id)
                self._unsure.setdefault(key, p)

    def _publish(
        self, message: StoredMessage, p: PendingSend, appended: AppendBatch, committed_at: float
    ) -> None:
        """Fan a stored message out (encoded once) to the members its scope allows."""
        members = appended.members.get(message.conversation_id, frozenset())
        self._hub.fan_out(
            recipients(members, message.sender_id, message.scope),
            message.pos,
            msg_frame(message, p.body, p.consent),
            committed_at,
        )


def acknowledge(p: PendingSend, result: AppendResult) -> StoredMessage | None:
    """Answer one committed send; returns the message if it is new (to fan out)."""
    message = result.message
    if message is None:
        code, text = REFUSALS[result.outcome]
        p.conn.reply(err_frame(code, text, p.message.client_id, "send"))
        return None
    p.conn.reply(
        encode(
            Sent(
                cid=message.client_id,
                id=message.id.bytes,
                conv=message.conversation_id.bytes,
                seq=message.seq,
                pos=message.pos,
                sent_at=unix_ms(message),
            )
        )
    )
    return message if result.outcome is Outcome.STORED else None
