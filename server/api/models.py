"""Request bodies: strict pydantic models (unknown fields refused, lengths bounded).

Every string passes `server.text`: no field takes NUL, and one-line fields (all but the
password) take no control characters. A refused value is a 422 naming its field.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
)

from protocol.fields import POLICY_VERSION_PATTERN
from server.text import text_problem


def _one_line(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _any_text(value: str) -> str:
    problem = text_problem(value, one_line=False)
    if problem is not None:
        raise ValueError(problem)
    return value


OneLine = AfterValidator(_one_line)
AnyText = AfterValidator(_any_text)

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), OneLine
]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
    OneLine,
]
AccountName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=2, max_length=64, pattern=r"^[A-Za-z0-9._-]+$"
    ),
]
Phone = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9][0-9 ()-]{2,31}$")
]
Password = Annotated[str, StringConstraints(min_length=1, max_length=128), AnyText]
Token = Annotated[str, StringConstraints(min_length=1, max_length=256), OneLine]
Role = Literal["owner", "admin", "department_admin", "member"]
Platform = Literal["ios", "android", "macos", "windows", "linux", "web"]


def _ed25519_key(value: object) -> bytes:
    """Base64 (standard or URL-safe, padding optional) of exactly 32 bytes."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("must be a base64 string")
    try:
        raw = base64.urlsafe_b64decode(
            value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4)
        )
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    if len(raw) != 32:
        raise ValueError("must be a 32-byte Ed25519 public key")
    return raw


PublicKey = Annotated[bytes, BeforeValidator(_ed25519_key)]


def _iso_date(value: object) -> date:
    """A calendar date written YYYY-MM-DD, nothing else (no numbers, no times)."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("must be a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a real calendar date (YYYY-MM-DD)") from None


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
Relation = Literal["parent", "legal_guardian", "other"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OwnerIn(Strict):
    account_name: AccountName
    work_email: Email
    display_name: Name
    password: Password
    phone: Phone | None = None
    position: Name | None = None


class CreateOrgIn(Strict):
    name: Name
    owner: OwnerIn


class DeviceIn(Strict):
    name: Name
    platform: Platform
    public_key: PublicKey


class LoginIn(Strict):
    email: Email
    password: Password
    device: DeviceIn


class RefreshIn(Strict):
    refresh_token: Token


class DepartmentIn(Strict):
    name: Name
    parent_id: uuid.UUID | None = None


class DepartmentPatch(Strict):
    name: Name


class MemberIn(Strict):
    account_name: AccountName
    work_email: Email
    display_name: Name
    initial_password: Password
    phone: Phone | None = None
    department_id: uuid.UUID | None = None
    position: Name | None = None
    role: Role = "member"
    admin_department_id: uuid.UUID | None = None
    birth_date: IsoDate | None = None  # owners and admins only


class MemberPatch(Strict):
    """Only the fields sent are changed; `null` clears phone, department, position or
    birth date."""

    account_name: AccountName | None = None
    work_email: Email | None = None
    display_name: Name | None = None
    phone: Phone | None = None
    department_id: uuid.UUID | None = None
    position: Name | None = None
    role: Role | None = None
    admin_department_id: uuid.UUID | None = None
    birth_date: IsoDate | None = None  # owners and admins only

    def changes(self) -> dict[str, Any]:
        """The fields sent; raises ValueError for a null where a value is required."""
        sent = self.model_dump(exclude_unset=True)
        required = {"account_name", "work_email", "display_name", "role"}
        nulls = sorted(k for k in required & set(sent) if sent[k] is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
        return sent


class ProfilePatch(Strict):
    """Self-service corrections. Admin-controlled fields are accepted here only so the
    handler can refuse them by name."""

    display_name: Name | None = None
    phone: Phone | None = None
    account_name: object = None
    work_email: object = None
    department_id: object = None
    position: object = None
    role: object = None
    admin_department_id: object = None
    birth_date: object = None

    def changes(self) -> dict[str, Any]:
        sent = self.model_dump(exclude_unset=True)
        if "display_name" in sent and sent["display_name"] is None:
            raise ValueError("display_name cannot be null")
        return sent


class OrgPatch(Strict):
    serves_children: StrictBool  # true or false, not 1 or "yes"


class GuardianConsentIn(Strict):
    """A guardian's consent as an admin records it: who gave it, as what, on which day,
    and where the proof is kept (a reference such as a document id, never the document)."""

    guardian_name: Name
    relation: Relation
    given_on: IsoDate
    evidence_ref: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), OneLine
    ]


class PasswordChangeIn(Strict):
    current_password: Password
    new_password: Password


class ReauthIn(Strict):
    password: Password


class CancellationIn(Strict):
    """The account's work email, typed again to confirm a cancellation."""

    confirm: str = Field(min_length=1, max_length=320)


class OrgCancellationIn(Strict):
    """The organization's name, typed again to confirm its deletion, and whether its data
    was exported first (`done`: an export ready in the last 30 days is required) or the
    owner does not want it (`declined`)."""

    confirm: str = Field(min_length=1, max_length=200)
    export: Literal["done", "declined"] = "done"


class ConversationIn(Strict):
    """`direct`: exactly one other member. `group`: a title and any members."""

    kind: Literal["direct", "group"]
    title: Name | None = None
    member_ids: list[uuid.UUID] = Field(default_factory=list, max_length=5000)


class MembersIn(Strict):
    account_ids: list[uuid.UUID] = Field(min_length=1, max_length=5000)


class PushRegistrationIn(Strict):
    provider: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    environment: Annotated[str, StringConstraints(max_length=16)] | None = None
    topic: Annotated[str, StringConstraints(max_length=155)] | None = None
    project: Annotated[str, StringConstraints(max_length=128)] | None = None
    preview: bool = False


LocalTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class QuietHoursIn(Strict):
    start: LocalTime  # "22:00", local time
    end: LocalTime  # "07:00": a window may wrap midnight


class PushSettingsIn(Strict):
    do_not_disturb: QuietHoursIn | None = None
    time_zone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "UTC"


class MuteIn(Strict):
    until: datetime | None = None  # none: until unmuted


class RedriveIn(Strict):
    ids: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=1000)]


class CircleIn(Strict):
    """Numbers are checked by the handler (server.handlers.geofence), whose messages name
    the rule and never the value."""

    lat: object
    lon: object
    radius_m: object


class PointIn(Strict):
    lat: object
    lon: object


class SiteIn(Strict):
    """An attendance site: a circle or a polygon (exactly one)."""

    name: Name
    department_id: uuid.UUID | None = None
    circle: CircleIn | None = None
    polygon: list[PointIn] | None = Field(default=None, max_length=1000)


class CheckIn(Strict):
    """A one-shot check-in or out; the position is judged and dropped, never stored."""

    action: Literal["in", "out"]
    lat: object
    lon: object
    acc: object = None  # metres, optional


PolicyVersionLabel = Annotated[
    str, StringConstraints(min_length=1, max_length=32, pattern=f"^{POLICY_VERSION_PATTERN}$")
]
Language = Annotated[
    str,
    StringConstraints(min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$"),
]
MAX_POLICY_TEXT_CHARS = 200_000


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class PolicyIn(Strict):
    """A privacy-policy version to publish: `version` is its label (unique in the org),
    `language` a BCP 47 tag such as "id" or "en-GB"."""

    version: PolicyVersionLabel
    language: Language
    material: StrictBool
    text: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_POLICY_TEXT_CHARS),
        AnyText,
        AfterValidator(_not_blank),
    ]


class PolicyAcceptIn(Strict):
    version: PolicyVersionLabel


# -- retention, data-rights requests and notices ------------------------------------------

RetentionDays = Annotated[StrictInt, Field(ge=1, le=36500)]
DeadlineDays = Annotated[StrictInt, Field(ge=1, le=90)]
MAX_REQUEST_TEXT_CHARS = 4000
RequestText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_REQUEST_TEXT_CHARS),
    AnyText,
    AfterValidator(_not_blank),
]


class OrgRetentionPatch(Strict):
    """Only the fields sent change; `"message_retention_days": null` keeps messages until
    they are deleted."""

    message_retention_days: RetentionDays | None = None
    request_deadline_days: DeadlineDays | None = None

    def changes(self) -> dict[str, Any]:
        """The fields sent; ValueError for none at all or a null deadline."""
        sent = self.model_dump(exclude_unset=True)
        if not sent:
            raise ValueError("send message_retention_days, request_deadline_days or both")
        if "request_deadline_days" in sent and sent["request_deadline_days"] is None:
            raise ValueError("request_deadline_days cannot be null")
        return sent


class ConversationRetentionIn(Strict):
    message_retention_days: RetentionDays | None  # required: null keeps messages until deleted


RequestKind = Literal[
    "access",
    "correction",
    "export",
    "deletion",
    "cancellation",
    "org_export",
    "org_deletion",
    "other",
]


class RequestIn(Strict):
    kind: RequestKind
    details: RequestText | None = None  # what you ask, in your words


class RequestAnswerIn(Strict):
    status: Literal["in_progress", "done", "refused"]
    note: RequestText | None = None  # the answer; required to refuse


class NoticeIn(Strict):
    """A notice to the organization's members: `account_ids` absent for everyone."""

    kind: Literal["service_ending", "security_incident"]
    title: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), OneLine
    ]
    text: Annotated[
        str, StringConstraints(min_length=1, max_length=16_000), AnyText, AfterValidator(_not_blank)
    ]
    ends_at: AwareDatetime | None = None  # service_ending: the last day of service
    account_ids: Annotated[list[uuid.UUID], Field(min_length=1, max_length=10_000)] | None = None
