"""The push bridge of one server process: providers from the settings, the outbox workers.

A provider whose credentials are missing is off (registrations for it are refused); one whose
credentials are unusable is reported (log, /healthz) and its jobs wait, retried, for an
operator to fix the files; the server itself keeps running either way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import trio

from push.metrics import PushMetrics, sample_outbox
from push.providers import Provider, PushConfigError
from push.registration import RegistrationSpec, check_registration
from push.worker import PushWorker, WorkerConfig
from storage.bridge import AsyncioBridge
from storage.outages import OutageLog
from storage.push_outbox import PushOutbox
from storage.push_registrations import NewRegistration

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PushConfig:
    """The push settings, as the server's settings give them (push/ reads no settings)."""

    worker: WorkerConfig = field(default_factory=WorkerConfig)
    workers: int = 4  # outbox loops in this process
    send_timeout_s: float = 10.0
    ca_file: Path | None = None  # an extra CA to trust (a stand-in's)
    apns_key_file: Path | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topics: tuple[str, ...] = ()
    apns_production_host: str = "api.push.apple.com"
    apns_sandbox_host: str = "api.sandbox.push.apple.com"
    apns_port: int = 443
    fcm_service_account_file: Path | None = None
    fcm_base_url: str = "https://fcm.googleapis.com"


@dataclass
class PushBridge:
    """What the API and the gateway need to know about push in this process."""

    config: PushConfig
    outbox: PushOutbox
    metrics: PushMetrics = field(default_factory=PushMetrics)
    providers: dict[str, Provider] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # provider -> why
    fcm_project: str | None = None

    @property
    def configured(self) -> set[str]:
        """Providers with credentials given (usable or not): registrations may name them."""
        return {*self.providers, *self.unavailable}

    def check(self, spec: RegistrationSpec) -> NewRegistration:
        """The registration as stored, or RegistrationError (push.registration)."""
        return check_registration(
            spec, self.configured, list(self.config.apns_topics), self.fcm_project
        )

    def status(self, *, detail: bool = False) -> dict[str, str]:
        """Per provider: "ok", "off" (no credentials), or "unusable" (with `detail`: why,
        which names files: for admins only)."""
        return {
            name: "ok"
            if name in self.providers
            else "off"
            if name not in self.unavailable
            else self.unavailable[name]
            if detail
            else "unusable"
            for name in ("apns", "fcm")
        }

    def start_providers(self, bridge: AsyncioBridge) -> None:
        """Set up every provider that has credentials; never raises for bad credentials."""
        s = self.config
        for key_file in (s.apns_key_file, s.fcm_service_account_file):
            if key_file is not None:
                self._warn_if_shared(key_file)
        if s.apns_key_file is not None:
            from push.apns import ApnsProvider  # noqa: PLC0415 - aioapns only when configured

            try:
                assert s.apns_key_id is not None and s.apns_team_id is not None
                self.providers["apns"] = ApnsProvider(
                    bridge,
                    key_file=s.apns_key_file,
                    key_id=s.apns_key_id,
                    team_id=s.apns_team_id,
                    default_topic=s.apns_topics[0],
                    production_host=s.apns_production_host,
                    sandbox_host=s.apns_sandbox_host,
                    port=s.apns_port,
                    ca_file=s.ca_file,
                    timeout_s=s.send_timeout_s,
                )
            except PushConfigError as exc:
                self._refuse("apns", exc)
        if s.fcm_service_account_file is not None:
            from push.fcm import FcmProvider  # noqa: PLC0415 - as for APNs

            try:
                self.fcm_project = _fcm_project(s.fcm_service_account_file)
                self.providers["fcm"] = FcmProvider(
                    service_account_file=s.fcm_service_account_file,
                    base_url=s.fcm_base_url,
                    ca_file=s.ca_file,
                    timeout_s=s.send_timeout_s,
                )
            except PushConfigError as exc:
                self._refuse("fcm", exc)

    @staticmethod
    def _warn_if_shared(path: Path) -> None:
        """Provider keys sign on our behalf: anyone who can read them can push as us."""
        try:
            mode = path.stat().st_mode
        except OSError:
            return  # the provider reports the unreadable file
        if mode & 0o077:
            logger.warning(
                "%s is readable by other users (mode %o): make it 0600, owned by obrol's user",
                path,
                mode & 0o777,
            )

    def _refuse(self, name: str, exc: PushConfigError) -> None:
        logger.error("push provider %s is unusable, its pushes wait: %s", name, exc)
        self.unavailable[name] = str(exc)

    async def run(self, bridge: AsyncioBridge, stop: trio.Event) -> None:
        """Run the providers and `push_workers` outbox loops until `stop` is set and the
        batches in flight are recorded."""
        self.start_providers(bridge)
        try:
            async with trio.open_nursery() as nursery:
                outage = OutageLog(logger, "push outbox")  # one line per outage, not per loop
                for _ in range(self.config.workers):
                    worker = PushWorker(
                        self.outbox,
                        self.providers,
                        self.unavailable,
                        self.config.worker,
                        self.metrics,
                        outage,
                    )
                    nursery.start_soon(worker.run, stop)
                nursery.start_soon(sample_outbox, self.outbox, stop)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                for provider in self.providers.values():
                    await provider.aclose()


def _fcm_project(path: Path) -> str:
    """The project id of an FCM service-account file (PushConfigError if unreadable)."""
    try:
        account = json.loads(path.read_text(encoding="utf-8"))
        project = account["project_id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PushConfigError(
            f"FCM service account file {path}: no readable project_id ({type(exc).__name__})"
        ) from None
    if not isinstance(project, str) or not project:
        raise PushConfigError(f"FCM service account file {path}: project_id is empty")
    return project
