"""The one settings object: defaults < TOML file < OBROL_* environment < command-line flags.

Validated once at start-up; an unknown key or a bad value stops the server with a message
naming the field. Units are in the names.
"""

from __future__ import annotations

import contextvars
import ipaddress
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from protocol.errors import ObrolError
from storage.audit_chain import MIN_RETENTION

_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "obrol_config_file", default=None
)


MIN_AUDIT_RETENTION_DAYS = MIN_RETENTION.days
# Retention periods the privacy policies promise to keep, at least (server/retention.py).
MIN_LOGIN_RECORDS_DAYS = 92
MIN_REQUESTS_DAYS = 1096


class SettingsError(ObrolError):
    """The configuration is invalid; the message names the field and the problem."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBROL_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8400, ge=0, le=65535)
    gateway_port: int | None = Field(None, ge=0, le=65535)  # default: port + 1
    serve_api: bool = True
    serve_gateway: bool = True
    data_dir: Path = Path("obrol-data")
    database_url: SecretStr | None = None
    db_pool_size: int = Field(10, ge=1, le=200)
    postgres_bin_dir: Path | None = None
    postgres_os_user: str | None = None
    # Run as root with a data folder the PostgreSQL account cannot enter: the cluster's home.
    postgres_shared_dir: Path = Path("/var/lib/obrol")

    # Encryption at rest (README, "Encryption at rest"): the 32-byte master key that wraps
    # every account's data key; default <data_dir>/master.key, made on first start (0600).
    # Never in the database: keep it out of database backups, and back it up apart.
    master_key_file: Path | None = None
    # Unwrapped data keys kept in memory (least recently used out first), each at most
    # key_cache_ttl_s: how long another process may still use a key destroyed elsewhere.
    key_cache_size: int = Field(50_000, ge=1)
    key_cache_ttl_s: float = Field(60.0, gt=0, le=3600)

    access_token_ttl_s: int = Field(15 * 60, ge=10, le=24 * 3600)
    # How long a password login or a re-entry of the password (POST /v1/me/reauth) lets
    # the session use the data-rights actions: access summary, export, deletion,
    # cancellation.
    reauth_window_s: int = Field(5 * 60, ge=10, le=3600)
    refresh_token_ttl_s: int = Field(30 * 24 * 3600, ge=60)
    login_failure_window_s: int = Field(15 * 60, ge=1)
    login_failures_per_account: int = Field(5, ge=1)
    login_failures_per_ip: int = Field(50, ge=1)
    password_hash_strength: Literal["minimal", "interactive", "moderate", "sensitive"] = (
        "interactive"
    )
    allow_org_signup: bool = False  # first org: `obrol org create`
    # Minors (README, "Minors and guardians"): a member younger than this, by the birth date
    # an admin gave, needs a recorded guardian consent before the account can be used. The
    # defaults are the strictest the privacy policies name (18; children under 14).
    age_of_consent_years: int = Field(18, ge=1, le=25)
    # Younger than this, the organization must also have declared it serves children (0: no
    # such rule).
    child_age_years: int = Field(14, ge=0, le=25)

    handshake_timeout_s: float = Field(10.0, gt=0)
    idle_timeout_s: float = Field(90.0, gt=0)
    max_outbound_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    resync_timeout_s: float = Field(30.0, gt=0)
    # How long a closing connection may take to write its last bytes and answer our close
    # frame before the socket is cut.
    close_grace_s: float = Field(2.0, gt=0)
    # Frames one gateway connection may send: this many a second on average, bursts up to
    # `gateway_frame_burst` (PROTOCOL.md §8); over it batches are refused, then it is closed.
    gateway_frames_per_s: float = Field(200.0, gt=0)
    gateway_frame_burst: int = Field(1000, ge=256)
    # Handshake admission (server/gateway/admission.py): at most this many handshakes in
    # progress; later connections wait in arrival order up to the queue timeout, then are
    # closed `busy` (1013). A slot holder silent for the step timeout loses it (4006).
    gateway_handshake_slots: int = Field(64, ge=1, le=100_000)
    gateway_handshake_queue_timeout_s: float = Field(10.0, gt=0)
    gateway_handshake_step_timeout_s: float = Field(5.0, gt=0)
    # Devices whose key and standing the gateway keeps in memory (0: none, every handshake
    # reads the database); kept exact by revocations, deactivations and sign-outs.
    gateway_device_cache_size: int = Field(100_000, ge=0)
    commit_batch_max: int = Field(1000, ge=1, le=10_000)
    # Freeze start-up objects out of the cyclic GC and collect generation 0 less often:
    # under fan-out load the default thresholds spend a large share of CPU in the GC.
    gc_tuning: bool = True
    gc_gen0_threshold: int = Field(50_000, ge=700)
    catch_up_page: int = Field(500, ge=1, le=5000)

    # TLS on both listeners (https:// and wss://): both files or neither (PEM; the
    # certificate file may hold the chain). Re-read on SIGHUP.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Peers (IP addresses or CIDR networks) whose X-Forwarded-For / X-Forwarded-Proto are
    # believed: a TLS-terminating proxy in front. Empty: both headers are ignored.
    trusted_proxies: list[str] = Field(default_factory=list)

    # Consent (README, "Privacy by construction"): the longest live-location session, and
    # the sweeper that erases consent-tagged data whose clock ran out and ends expired
    # sessions (every process runs one; they skip each other's rows).
    live_location_max_s: int = Field(8 * 3600, ge=60, le=7 * 24 * 3600)
    sweep_interval_s: float = Field(5.0, gt=0, le=3600)
    sweep_batch: int = Field(500, ge=1, le=100_000)  # rows per transaction: short locks
    # While working off a backlog, the sweeper rests between batches so that erasing takes at
    # most this share of the time (1: no rest); the rest grows with the database's load.
    sweep_busy_fraction: float = Field(0.25, gt=0, le=1)

    # The audit log (README, "Audit log"): entries are kept this long (access records: at
    # least 6 months), then pruned by the sweeper up to a checkpoint. The chain's head is
    # signed once this many entries are unsigned, or once the oldest unsigned entry is this
    # old, whichever comes first.
    audit_retention_days: int = 365
    audit_checkpoint_entries: int = Field(1000, ge=1, le=1_000_000)
    audit_checkpoint_interval_s: float = Field(300.0, gt=0, le=24 * 3600)
    # The retention schedule (server/retention.py lists every rule, its period and the promise
    # it keeps; the same sweeper runs them). A minimum is a period the policies promise to keep.
    login_records_retention_days: int = Field(92, le=3660)  # 3 months: never less
    live_sessions_retention_days: int = Field(7, ge=0, le=30)  # after a session ended
    requests_retention_days: int = Field(1096, le=3660)  # after a request closed: >= 3 years
    notices_retention_days: int = Field(366, ge=30, le=3660)  # after sending (or the end date)
    # Tombstones of erased messages, for devices that were offline (PROTOCOL.md 6.9): a
    # device offline longer than this reads its history again.
    tombstones_retention_days: int = Field(90, ge=7, le=3660)
    # A cancelled account's rows are purged from this many hours after the cancellation (its
    # data key is destroyed at once). At most 5 days, so that the purge ends within the 7
    # days the policies promise even with a backlog.
    cancelled_accounts_purge_delay_h: int = Field(0, ge=0, le=120)
    # Auth tokens (hashes) after they expired, revoked or not: until then a presented one is
    # answered "expired" or "revoked" (and a rotated-away refresh token ends its family).
    auth_tokens_retention_days: int = Field(7, ge=1, le=366)
    # Blobs in the files folder with no file row (a crash between a commit that deleted rows
    # and the deletion of their blobs) are deleted once this old: longer than any upload
    # takes between writing its blob and recording its row.
    orphan_blob_grace_s: int = Field(24 * 3600, ge=3600, le=30 * 24 * 3600)
    # How far ahead a service-ending notice must be sent (the policies promise 30 days).
    service_ending_notice_days: int = Field(30, ge=30, le=366)

    # Data exports (README, "Export"): a ready archive's download links work once, for this
    # long; then the sweeper deletes the archive. Jobs are run by `export_workers` tasks per
    # process (0: none here), each holding a job's lease for `export_lease_s` at a time
    # (renewed as it goes; a job whose worker died is taken over after that); they look for
    # queued jobs every `export_poll_interval_s` (at once for a job asked of this process).
    export_link_ttl_s: int = Field(24 * 3600, ge=60, le=30 * 24 * 3600)
    export_workers: int = Field(1, ge=0, le=8)
    export_lease_s: float = Field(60.0, ge=1, le=3600)
    export_poll_interval_s: float = Field(5.0, gt=0, le=3600)
    export_page_rows: int = Field(1000, ge=1, le=50_000)  # rows read per query

    # The push bridge (README, "Push notifications"). A provider with no credentials is off:
    # registrations for it are refused.
    push_grace_s: float = Field(2.0, ge=0, le=300)  # a job waits this long for the device
    push_workers: int = Field(4, ge=0, le=32)  # outbox loops in this process (0: none)
    push_batch: int = Field(100, ge=1, le=5000)
    push_lease_s: float = Field(60.0, ge=5)  # at least 3 x push_send_timeout_s
    push_max_attempts: int = Field(8, ge=1, le=100)
    push_backoff_base_s: float = Field(1.0, gt=0)
    push_backoff_cap_s: float = Field(600.0, gt=0)
    push_expiry_s: int = Field(24 * 3600, ge=0, le=30 * 24 * 3600)
    push_send_timeout_s: float = Field(10.0, gt=0)
    push_ca_file: Path | None = None  # extra CA to trust for the providers (stand-ins)
    apns_key_file: Path | None = None  # the .p8 signing key from Apple's developer account
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topics: list[str] = Field(default_factory=list)  # bundle ids; the first is default
    apns_production_host: str = "api.push.apple.com"
    apns_sandbox_host: str = "api.sandbox.push.apple.com"
    apns_port: int = Field(443, ge=1, le=65535)
    fcm_service_account_file: Path | None = None  # the service account's JSON key file
    fcm_base_url: str = "https://fcm.googleapis.com"

    # Bearer token for /v1/operator/* (this process's push counters, provider details): for
    # whoever runs the server, not the organizations on it. Unset: those endpoints are off.
    operator_token: SecretStr | None = None
    # Bearer token GET /metrics (Prometheus text format) requires; unset: open, as the
    # values are counts, sizes and durations only (no label names anyone). Set it when the
    # API port is reachable from outside your network.
    metrics_token: SecretStr | None = None

    max_request_bytes: int = Field(1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(30.0, gt=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    # Processes and nodes (README, "Deployment"). `workers`: gateway+API processes under one
    # supervisor (default: one per core; 1 serves in this process). `bus`: how processes and
    # nodes sharing the database tell each other what happened: "postgres" (LISTEN/NOTIFY),
    # "nats://host:port" (a NATS cluster), or "none" (a lone process). Whatever the bus,
    # each process also reads the committed stream every `bus_poll_interval_s`, which bounds
    # how late a message is while the bus is down.
    workers: int | None = Field(None, ge=1, le=256)
    bus: str = "postgres"
    bus_poll_interval_s: float = Field(1.0, gt=0, le=60)
    # ... and asks the database which devices' standing (revoked, signed out, account
    # deactivated or cancelled, ...) changed, every `standing_check_interval_s` and when its
    # bus comes back, closing what a lost bus event left open (server/gateway/standing.py).
    standing_check_interval_s: float = Field(2.0, gt=0, le=60)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                network = ipaddress.ip_network(entry)  # strict: 10.0.0.5/8 is a typo, not /8
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (like 10.0.0.5 or 10.0.0.0/8)"
                ) from None
            if network.prefixlen == 0:
                raise ValueError(
                    f"{entry!r} would trust every address: anyone could claim any client "
                    "address and dodge the per-address login limit"
                )
        return value

    @field_validator("bus")
    @classmethod
    def _bus_is_known(cls, value: str) -> str:
        if value in ("postgres", "none"):
            return value
        if not all(
            urlsplit(url).scheme in ("nats", "tls") and urlsplit(url).hostname
            for url in value.split(",")
        ):
            raise ValueError(
                f"{value!r} is not a bus: use postgres, none, or nats://host:port "
                "(several comma-separated for a NATS cluster)"
            )
        return value

    @field_validator("login_records_retention_days")
    @classmethod
    def _login_records_kept_three_months(cls, value: int) -> int:
        if value < MIN_LOGIN_RECORDS_DAYS:
            raise ValueError(
                f"must be at least {MIN_LOGIN_RECORDS_DAYS} days: the privacy policies keep "
                "login records 3 months (the longest 3 calendar months are 92 days)"
            )
        return value

    @field_validator("requests_retention_days")
    @classmethod
    def _requests_kept_three_years(cls, value: int) -> int:
        if value < MIN_REQUESTS_DAYS:
            raise ValueError(
                f"must be at least {MIN_REQUESTS_DAYS} days: the privacy policies keep records "
                "of how requests and complaints were handled 3 years"
            )
        return value

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "tls_cert_file and tls_key_file go together (--tls-cert and --tls-key): "
                "give both for TLS, or neither"
            )
        return self

    @field_validator("audit_retention_days")
    @classmethod
    def _audit_kept_six_months(cls, value: int) -> int:
        if value < MIN_AUDIT_RETENTION_DAYS:
            raise ValueError(
                f"must be at least {MIN_AUDIT_RETENTION_DAYS} days: access records are kept "
                "at least 6 months"
            )
        if value > 100 * 366:
            raise ValueError("must be at most 100 years")
        return value

    @field_validator("operator_token", "metrics_token")
    @classmethod
    def _token_is_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 24:
            raise ValueError("must be at least 24 characters (a long random secret)")
        return value

    @model_validator(mode="after")
    def _child_age_within_minority(self) -> Settings:
        if self.child_age_years > self.age_of_consent_years:
            raise ValueError(
                "child_age_years cannot be above age_of_consent_years: every child is a minor"
            )
        return self

    @model_validator(mode="after")
    def _push_lease_outlasts_sends(self) -> Settings:
        if self.push_lease_s < 3 * self.push_send_timeout_s:
            raise ValueError(
                "push_lease_s must be at least 3 x push_send_timeout_s: a claim that runs out "
                "while its pushes are still being sent lets another worker send them again"
            )
        return self

    @model_validator(mode="after")
    def _apns_credentials_complete(self) -> Settings:
        given = [self.apns_key_file, self.apns_key_id, self.apns_team_id]
        if any(v is not None for v in given) and (
            any(v is None for v in given) or not self.apns_topics
        ):
            raise ValueError(
                "APNs needs apns_key_file, apns_key_id, apns_team_id and at least one of "
                "apns_topics (your app's bundle id), or none of them"
            )
        return self

    @property
    def master_key_path(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def effective_gateway_port(self) -> int:
        if self.gateway_port is not None:
            return self.gateway_port
        return 0 if self.port == 0 else self.port + 1

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; raises SettingsError saying what is wrong."""
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file {config_file} does not exist")
    token = _config_file.set(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {config_file} is not valid TOML: {exc}") from None
    finally:
        _config_file.reset(token)
