"""What a device may register for push, checked the same way over REST and the channel."""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.errors import ObrolError
from push.fcm_auth import PROJECT_ID
from storage.push_registrations import NewRegistration

# Apple's device tokens are 32 bytes today (64 hex digits); Apple warns they may grow.
APNS_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")
# FCM registration tokens: URL-safe characters and colons, a few hundred long.
FCM_TOKEN = re.compile(r"[A-Za-z0-9_:\-]{20,4096}")


class RegistrationError(ObrolError):
    """The registration is refused: `field` names what is wrong; `unavailable` means this
    server has no credentials for the provider (nothing the device can fix)."""

    def __init__(self, message: str, field: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.unavailable = unavailable


@dataclass(frozen=True, slots=True)
class RegistrationSpec:
    provider: str
    token: str
    environment: str | None = None
    topic: str | None = None
    project: str | None = None
    preview: bool = False


def check_registration(
    spec: RegistrationSpec,
    configured: set[str],
    apns_topics: list[str],
    fcm_project: str | None,
) -> NewRegistration:
    """The registration as stored; RegistrationError naming the field otherwise.

    `configured`: the providers this server has credentials for; `apns_topics`: the bundle
    ids it sends for (the first is the default); `fcm_project`: its Firebase project."""
    if spec.provider not in ("apns", "fcm"):
        raise RegistrationError("provider must be 'apns' or 'fcm'", "provider")
    if spec.provider not in configured:
        raise RegistrationError(
            f"this server has no {spec.provider} credentials configured",
            "provider",
            unavailable=True,
        )
    if spec.provider == "apns":
        if not APNS_TOKEN.fullmatch(spec.token):
            raise RegistrationError("an APNs device token is 64 or more hex digits", "token")
        if spec.project is not None:
            raise RegistrationError("project is for fcm registrations", "project")
        environment = spec.environment or "production"
        if environment not in ("sandbox", "production"):
            raise RegistrationError("must be 'sandbox' or 'production'", "environment")
        topic = spec.topic or apns_topics[0]
        if topic not in apns_topics:
            raise RegistrationError("not an app this server sends for", "topic")
        return NewRegistration("apns", spec.token.lower(), environment, topic, None, spec.preview)
    if not FCM_TOKEN.fullmatch(spec.token):
        raise RegistrationError("not an FCM registration token", "token")
    if spec.environment is not None or spec.topic is not None:
        field = "environment" if spec.environment is not None else "topic"
        raise RegistrationError(f"{field} is for apns registrations", field)
    project = spec.project or fcm_project
    if project is not None and not PROJECT_ID.fullmatch(project):
        raise RegistrationError("not a Firebase project id", "project")
    if project is None:  # the service account is unreadable just now: the device must say
        raise RegistrationError("give the Firebase project id", "project")
    if fcm_project is not None and project != fcm_project:
        raise RegistrationError("not the Firebase project this server sends for", "project")
    return NewRegistration("fcm", spec.token, None, None, project, spec.preview)
