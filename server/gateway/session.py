"""What each client frame does on an established connection."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from protocol import (
    Ack,
    ClientFrame,
    ConsentGet,
    ConsentSet,
    ErrorCode,
    FileBody,
    LivePos,
    LiveStart,
    LiveStop,
    Msg,
    Ping,
    Pong,
    PushOk,
    PushRegister,
    PushUnregister,
    Receipt,
    ReceiptNotice,
    RemoteProtocolError,
    Send,
    Sent,
    Sync,
    Synced,
    Typing,
    TypingNotice,
    encode,
)
from protocol.codec import decode_body, decode_consent, encode_body, encode_consent
from push.registration import RegistrationError, RegistrationSpec
from server.gateway import live
from server.gateway.committer import (
    CONSENT_NOT_GRANTED_TEXT,
    ERASED_BODY,
    NOT_MEMBER_TEXT,
    SCOPE_INVALID_TEXT,
    Committer,
    PendingSend,
    err_frame,
    msg_frame,
    recipients,
)
from server.gateway.connection import Connection
from server.gateway.consent import purpose_mismatch, retention, scope_accounts
from server.gateway.cursors import CursorSaver
from server.gateway.erased import catch_up_frames
from server.gateway.hub import Hub
from server.services import Services
from storage.errors import DatabaseUnavailableError, NotFoundError
from storage.messages import NewMessage, StoredMessage
from storage.outages import OutageLog
from storage.receipts import ReceiptRecord
from storage.tombstones import Tombstone

logger = logging.getLogger(__name__)

PONG = encode(Pong())
# What an account may not do while a material privacy-policy version awaits its acceptance
# (PROTOCOL.md 6.6); ping, ack, sync and push_unreg go on, so the device can still read.
# What waits for a material privacy policy's acceptance: anything that shares or processes
# data (withdrawing a consent, reading, acks and catch-up never wait).
GATED_BY_POLICY = (Send, Receipt, Typing, PushRegister, LiveStart, LivePos)
# Catch-up pauses when this share of the connection's outbound limit is buffered, until it
# drains below a quarter of that: catch-up alone never makes a connection overflow.
CATCH_UP_HIGH_WATER_SHARE = 0.5


@dataclass
class GatewayContext:
    """What every session of the process shares."""

    services: Services
    hub: Hub
    committer: Committer
    cursors: CursorSaver
    catch_up_page: int = 500
    reads: OutageLog = field(default_factory=lambda: OutageLog(logger, "gateway reads"))
    """Throttled log of the sessions' store reads failing (a line per refusal would flood
    the log during an outage)."""


def stored_msg_frame(message: StoredMessage) -> bytes:
    """Rebuild the `msg` frame of a stored message for catch-up (an erased one as a
    `system` message with the event `erased`)."""
    if message.erased:
        return msg_frame(message, ERASED_BODY, None)
    body = decode_body(message.kind, message.body)
    consent = None if message.consent is None else decode_consent(message.consent)
    return msg_frame(message, body, consent)


def page_frames(rows: list[StoredMessage | Tombstone]) -> Iterator[bytes]:
    """The frames of one catch-up page, in pos order: a `msg` per message, an `erased` per
    run of tombstones (storage.tombstones)."""
    run: list[Tombstone] = []
    for row in rows:
        if isinstance(row, Tombstone):
            run.append(row)
            continue
        if run:
            yield from catch_up_frames(run)
            run = []
        try:
            yield stored_msg_frame(row)
        except RemoteProtocolError:
            logger.error("stored message %s is unreadable; skipped", row.id)
    if run:
        yield from catch_up_frames(run)


class Session:
    """The frames of one authenticated device connection."""

    def __init__(self, conn: Connection, gw: GatewayContext, nursery: trio.Nursery) -> None:
        assert conn.account_id and conn.device_id and conn.org_id
        self.conn = conn
        self.gw = gw
        self.account_id: uuid.UUID = conn.account_id
        self.device_id: uuid.UUID = conn.device_id
        self.org_id: uuid.UUID = conn.org_id
        self._nursery = nursery
        self._catch_up: trio.CancelScope | None = None

    async def handle(self, frame: ClientFrame) -> None:
        """Act on one frame. A database outage is answered with `unavailable` (the device
        retries; a send with the same cid), never by closing the connection."""
        try:
            await self._handle(frame)
        except DatabaseUnavailableError as exc:
            self.gw.reads.failed(1, exc)
            cid = getattr(frame, "cid", None)
            self.conn.reply(
                err_frame(
                    ErrorCode.UNAVAILABLE,
                    "the database is unavailable; retry later"
                    + ("" if not isinstance(frame, Send) else " with the same cid"),
                    cid,
                    frame.TYPE,
                )
            )

    async def _handle(self, frame: ClientFrame) -> None:
        if isinstance(frame, GATED_BY_POLICY) and self.gw.hub.policy_blocked(self.conn):
            self._refuse_until_accepted(frame)
            return
        if isinstance(frame, Send):
            await self._send(frame)
        elif isinstance(frame, Ack):
            self.gw.cursors.note(self.device_id, frame.pos)
        elif isinstance(frame, Sync):
            self._start_catch_up(frame.after)
        elif isinstance(frame, Ping):
            self.conn.reply(PONG)
        elif isinstance(frame, Typing):
            await self._typing(frame)
        elif isinstance(frame, Receipt):
            await self._receipt(frame)
        elif isinstance(frame, PushRegister | PushUnregister):
            await self._push_registration(frame)
        elif isinstance(frame, ConsentGet | ConsentSet | LiveStart | LivePos | LiveStop):
            await live.handle(self, frame)

    def _refuse_until_accepted(self, frame: ClientFrame) -> None:
        """A material privacy-policy version awaits this account's acceptance: the frame
        is refused and nothing of it is stored or forwarded (`Hub.policy_blocked` decides,
        from memory: no database read per frame)."""
        cid = getattr(frame, "cid", None)
        self.conn.reply(
            err_frame(
                ErrorCode.RECONSENT_REQUIRED,
                "accept the current privacy policy first (POST /v1/me/policy/accept)",
                cid,
                frame.TYPE,
            )
        )

    async def _push_registration(self, frame: PushRegister | PushUnregister) -> None:
        """Register or drop this device's push token (the same rules as over REST)."""
        store = self.gw.services.push_registrations
        if isinstance(frame, PushRegister):
            spec = RegistrationSpec(
                frame.provider, frame.token, frame.env, frame.topic, frame.project, frame.preview
            )
            try:
                new = self.gw.services.push.check(spec)
            except RegistrationError as exc:
                code = ErrorCode.INVALID_FIELD
                if exc.unavailable:
                    code = ErrorCode.PUSH_PROVIDER_UNAVAILABLE
                reason = f"{exc.field}: {exc.message}"
                self.conn.reply(err_frame(code, reason, frame.cid, frame.TYPE))
                return
            await store.register(self.device_id, new)
        else:
            await store.unregister(self.device_id)
        self.conn.reply(encode(PushOk(cid=frame.cid)))

    # -- sending -------------------------------------------------------------------------

    async def _send(self, frame: Send) -> None:
        conversation_id = uuid.UUID(bytes=frame.conv)
        body, consent = frame.body, frame.consent
        if isinstance(body, FileBody) and not await self._file_usable(body, conversation_id):
            self.conn.reply(
                err_frame(
                    ErrorCode.UNKNOWN_FILE, "no such file in this conversation", frame.cid, "send"
                )
            )
            return
        scope = None
        if consent is not None:
            mismatch = purpose_mismatch(body.KIND.value, consent)
            if mismatch is not None:
                self.conn.reply(err_frame(ErrorCode.CONSENT_INVALID, mismatch, frame.cid, "send"))
                return
            scope = scope_accounts(consent.scope)
        if consent is not None and consent.ephemeral:
            await self._send_ephemeral(frame, conversation_id, scope)
            return
        sent_at = self.gw.services.clock()
        kept = None if consent is None else retention(consent, sent_at)
        message = NewMessage(
            conversation_id=conversation_id,
            sender_id=self.account_id,
            sender_device_id=self.device_id,
            client_id=frame.cid,
            kind=body.KIND.value,
            body=encode_body(body),
            consent=None if consent is None else encode_consent(consent),
            sent_at=sent_at,
            scope=scope,
            purpose=None if consent is None else consent.purpose,
            erase_at=None if kept is None else kept.erase_at,
            until_withdrawn=kept is not None and kept.until_withdrawn,
            file_id=uuid.UUID(bytes=body.file_id) if isinstance(body, FileBody) else None,
        )
        await self.gw.committer.submit(PendingSend(message, body, consent, self.conn))

    async def _file_usable(self, body: FileBody, conversation_id: uuid.UUID) -> bool:
        try:
            record = await self.gw.services.files.get(uuid.UUID(bytes=body.file_id))
        except NotFoundError:
            return False
        return record.conversation_id == conversation_id and not record.erased

    async def members(self, conversation_id: uuid.UUID) -> frozenset[uuid.UUID] | None:
        """Active members, or None if the conversation is unknown or we are not in it."""
        try:
            conversation = await self.gw.services.conversations.get(conversation_id)
        except NotFoundError:
            return None
        self.gw.reads.succeeded()
        members = frozenset(conversation.member_ids)
        return members if self.account_id in members else None

    async def tag_refusal(
        self, members: frozenset[uuid.UUID], scope: tuple[uuid.UUID, ...] | None, purpose: str
    ) -> tuple[ErrorCode, str] | None:
        """Why data tagged with `purpose` for `scope` may not go out now, or None. The grant
        is read from the store every time: a withdrawal counts from the very next frame."""
        if scope is not None and not members.issuperset(scope):
            return ErrorCode.CONSENT_SCOPE_INVALID, SCOPE_INVALID_TEXT
        if not await self.gw.services.consent.holds(self.account_id, purpose):
            return ErrorCode.CONSENT_NOT_GRANTED, CONSENT_NOT_GRANTED_TEXT
        return None

    async def _send_ephemeral(
        self, frame: Send, conversation_id: uuid.UUID, scope: tuple[uuid.UUID, ...] | None
    ) -> None:
        """Never stored: delivered to the devices online now, then gone. The same rules as
        a stored send (membership, scope, the grant, read now: no cache), checked first."""
        assert frame.consent is not None
        members = await self.members(conversation_id)
        if members is None:
            self.conn.reply(err_frame(ErrorCode.NOT_MEMBER, NOT_MEMBER_TEXT, frame.cid, "send"))
            return
        refusal = await self.tag_refusal(members, scope, frame.consent.purpose)
        if refusal is not None:
            self.conn.reply(err_frame(*refusal, frame.cid, "send"))
            return
        message_id = uuid.uuid4().bytes
        sent_at = int(self.gw.services.clock().timestamp() * 1000)
        self.conn.reply(
            encode(
                Sent(
                    cid=frame.cid,
                    id=message_id,
                    conv=frame.conv,
                    seq=None,
                    pos=None,
                    sent_at=sent_at,
                )
            )
        )
        live = encode(
            Msg(
                id=message_id,
                conv=frame.conv,
                seq=None,
                pos=None,
                sender=self.account_id.bytes,
                sender_device=self.device_id.bytes,
                body=frame.body,
                consent=frame.consent,
                sent_at=sent_at,
                cid=frame.cid,
            )
        )
        self.gw.hub.fan_out(recipients(members, self.account_id, scope), None, live)

    # -- catch-up ------------------------------------------------------------------------

    def _start_catch_up(self, after: int) -> None:
        if self._catch_up is not None:
            self._catch_up.cancel()
        sync = self.conn.start_sync()
        if sync is None:
            return
        scope = trio.CancelScope()
        self._catch_up = scope
        self._nursery.start_soon(self._run_catch_up, sync, after, scope)

    async def _run_catch_up(self, sync: int, after: int, scope: trio.CancelScope) -> None:
        """Everything stored after `after` (messages, tombstones), in pos order, then
        `synced`, then live traffic.

        Every step is checked against `sync`, the number of this catch-up: a newer `sync`
        cancels this task, but a store read that already finished can still return, and what
        it read must then go nowhere."""
        conn = self.conn
        high_water = int(conn.max_outbound_bytes * CATCH_UP_HIGH_WATER_SHARE)
        with scope:
            pos = after
            while True:
                try:
                    rows, pos, limited = await self.gw.services.messages.after(
                        self.account_id, pos, self.gw.catch_up_page
                    )
                except DatabaseUnavailableError as exc:
                    self.gw.reads.failed(1, exc)
                    conn.sync_failed(
                        sync,
                        err_frame(
                            ErrorCode.UNAVAILABLE,
                            "the database is unavailable; sync again later",
                            None,
                            "sync",
                        ),
                    )
                    return
                self.gw.reads.succeeded()
                for frame in page_frames(rows):
                    conn.catch_up(sync, frame)
                    if conn.buffered_bytes > high_water:
                        await conn.wait_written(high_water // 4)
                    if not conn.syncing(sync):
                        return  # overflowed, closed or superseded meanwhile
                if not limited:
                    break
            conn.go_live(sync, pos, encode(Synced(pos=pos)))

    # -- receipts and typing -------------------------------------------------------------

    async def _typing(self, frame: Typing) -> None:
        """Typing notices go to the other members' live devices; never stored."""
        conversation_id = uuid.UUID(bytes=frame.conv)
        members = await self.members(conversation_id)
        if members is None:
            self.conn.reply(err_frame(ErrorCode.NOT_MEMBER, "not a member", None, "typing"))
            return
        notice = encode(TypingNotice(conv=frame.conv, who=self.account_id.bytes, on=frame.on))
        self.gw.hub.fan_out(members - {self.account_id}, None, notice)

    async def _receipt(self, frame: Receipt) -> None:
        """Receipts are stored per device and go to the live devices of every member who
        may see the message (its consent scope), the sender's other devices too. A receipt
        for a message this account cannot see is refused: it would tell others an id."""
        conversation_id = uuid.UUID(bytes=frame.conv)
        members = await self.members(conversation_id)
        if members is None:
            self.conn.reply(err_frame(ErrorCode.NOT_MEMBER, "not a member", None, "receipt"))
            return
        message_id = uuid.UUID(bytes=frame.id)
        try:
            sender, scope = await self.gw.services.messages.audience(
                message_id, conversation_id, self.account_id
            )
        except NotFoundError:
            self.conn.reply(
                err_frame(ErrorCode.UNKNOWN_MESSAGE, "no such message here", None, "receipt")
            )
            return
        now = self.gw.services.clock()
        at = int(now.timestamp() * 1000)
        self.gw.cursors.note_receipt(
            ReceiptRecord(
                message_id,
                conversation_id,
                self.account_id,
                self.device_id,
                frame.status.value,
                now,
            )
        )
        notice = encode(
            ReceiptNotice(
                conv=frame.conv, id=frame.id, status=frame.status, who=self.account_id.bytes, at=at
            )
        )
        self.gw.hub.fan_out(recipients(members, sender, scope), None, notice)
