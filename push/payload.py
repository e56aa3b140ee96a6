"""From a claimed outbox job to a minimized, provider-neutral `Push`.

What a push may carry, by construction: the conversation id, the message id, the badge, and
a generic alert; for an organization's notice, the notice id and kind with a generic alert.
A sender name and text preview only where the recipient opted in on that device, and only
for an untagged text message (location and file messages carry consent tags, so never).
Ephemeral messages are never stored and so never reach the outbox.
A muted conversation or the account's do-not-disturb hours turn an alert into a badge update.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgpack

from push.providers import Push, PushKind, Target
from storage.push_outbox import ClaimedJob

logger = logging.getLogger(__name__)

# push_id = uuid5(namespace, device:pos): the same job keeps the same apns-id on every try.
PUSH_ID_NAMESPACE = uuid.UUID("5b7e8f2e-3f0c-4d55-9a59-0b7f0f1c9a11")
PREVIEW_MAX_CHARS = 100


def in_quiet_hours(job: ClaimedJob, now: datetime) -> bool:
    """Whether `now` falls in the account's do-not-disturb window (local time; a window
    whose end is before its start wraps midnight). An unknown time zone counts as UTC."""
    if job.dnd_start_min is None or job.dnd_end_min is None:
        return False
    try:
        zone = ZoneInfo(job.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = now.astimezone(zone)
    minute = local.hour * 60 + local.minute
    start, end = job.dnd_start_min, job.dnd_end_min
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end


def _preview(job: ClaimedJob) -> tuple[str | None, str | None]:
    """(title, body) for an opted-in device and an untagged text message, else (None, None)."""
    if job.preview_kind != "text" or job.preview_body is None:
        return None, None
    try:
        body = msgpack.unpackb(job.preview_body, raw=False)
        text = body["text"] if isinstance(body, dict) else None
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        text = None
    if not isinstance(text, str) or not text:
        return None, None
    if job.burst > 1:
        return job.preview_sender, f"{job.burst} new messages"
    if len(text) > PREVIEW_MAX_CHARS:
        text = text[: PREVIEW_MAX_CHARS - 1] + "\u2026"
    return job.preview_sender, text


def build_notice_push(job: ClaimedJob, now: datetime, expiry_s: int) -> Push:
    """A notice's push: a generic alert for its kind with the notice id, never its title or
    text (the app reads those at GET /v1/me/notices). Not a chat message, so no mute
    applies, and quiet hours neither: a service ending or a security incident is what they
    must not hide. One collapse id per notice: never merged with another push."""
    return Push(
        push_id=uuid.uuid5(PUSH_ID_NAMESPACE, f"{job.device_id}:notice:{job.notice_id}"),
        target=Target(
            provider=job.provider,
            token=job.token,
            environment=job.environment,
            topic=job.topic,
            project=job.project,
        ),
        kind=PushKind.NOTICE,
        badge=job.badge,
        collapse_id=f"notice:{job.notice_id}",
        expires_at=int((now + timedelta(seconds=expiry_s)).astimezone(UTC).timestamp()),
        notice_id=job.notice_id,
        notice_kind=job.notice_kind,
    )


def build_push(job: ClaimedJob, now: datetime, expiry_s: int) -> Push:
    """The push for a claimed job, as of `now`."""
    if job.notice_id is not None:
        return build_notice_push(job, now, expiry_s)
    alert = job.kind == "alert" and not job.muted and not in_quiet_hours(job, now)
    title, body = _preview(job) if alert else (None, None)
    conversation = job.conversation_id
    return Push(
        push_id=uuid.uuid5(PUSH_ID_NAMESPACE, f"{job.device_id}:{job.pos}:{job.kind}"),
        target=Target(
            provider=job.provider,
            token=job.token,
            environment=job.environment,
            topic=job.topic,
            project=job.project,
        ),
        kind=PushKind.ALERT if alert else PushKind.BADGE,
        badge=job.badge,
        conversation_id=conversation,
        message_id=job.message_id,
        # One collapse id per device and conversation: a later push replaces an earlier one
        # still on the phone's lock screen instead of piling up. Badge updates share one.
        collapse_id=str(conversation) if alert and conversation else "badge",
        expires_at=int((now + timedelta(seconds=expiry_s)).astimezone(UTC).timestamp()),
        title=title,
        body=body,
    )
