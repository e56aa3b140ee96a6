"""Where the load goes: a server of our own, or a running one given by URL."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

from loadtest.cache import default_cache_path
from loadtest.client import ConnectError, TlsVerificationError, tls_handshake
from loadtest.config import RunConfig
from loadtest.localserver import LocalServer, local_server
from loadtest.nodes import LocalNodes, local_nodes
from loadtest.progress import Display
from loadtest.standin_proc import Standin, standin_process
from protocol.errors import ObrolError


class TargetError(ObrolError):
    """The server cannot be reached or used; the message says what to check."""


@dataclass
class Target:
    """The server under load: its addresses, and the process when it is ours."""

    api_url: str
    gateway_url: str
    local: LocalServer | None
    ca_file: Path | None = None
    """The CA to trust for https:// and wss:// (None: the system's trust store)."""
    standin: Standin | None = None
    """The APNs/FCM stand-in the server pushes to (runs with --push-share)."""
    nodes: LocalNodes | None = None
    """With --nodes: every node of ours (`local` is node 1; `gateway_url` lists them all)."""

    @property
    def api_urls(self) -> list[str]:
        """Every API whose /metrics the run reads: each node's, or the one."""
        if self.nodes is None:
            return [self.api_url]
        return [server.api_url for server in self.nodes.servers]


def default_gateway_url(api_url: str) -> str:
    """`obrol serve`'s default: the gateway listens on the API port + 1, with TLS (wss://)
    when the API has it (https://)."""
    parts = urlsplit(api_url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    return f"{'wss' if tls else 'ws'}://{parts.hostname}:{port + 1}/v1/ws"


def _untrusted(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate refusal somewhere in `exc`'s causes or contexts, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


CA_HINT = "pass --ca-file with the CA certificate (PEM) that issued it"


@asynccontextmanager
async def open_target(config: RunConfig, display: Display) -> AsyncIterator[Target]:
    """The server under load (and, with --push-share, the stand-in it pushes to): ours,
    started here and stopped on the way out, or the running one given by --url."""
    async with AsyncExitStack() as stack:
        standin = None
        if config.push_share > 0 and config.url is None:
            display.note("starting the APNs/FCM stand-in...")
            folder = config.report_dir / "standin"
            log = config.report_dir / "standin.log"
            standin = await stack.enter_async_context(standin_process(folder, log))
            display.note(f"stand-in up: {standin.url}")
        elif config.standin_url is not None and config.standin_ca is not None:
            standin = Standin(
                config.standin_url.rstrip("/"),
                config.standin_ca,
                operator_token=config.operator_token,
            )
        if config.url is not None:
            gateway = config.gateway_url or default_gateway_url(config.url)
            yield Target(config.url.rstrip("/"), gateway, None, config.ca_file, standin)
            return
        if config.nodes is not None:
            display.note(
                f"starting {config.nodes} node(s) of our own on one PostgreSQL, bus {config.bus}..."
            )
            nodes = await stack.enter_async_context(
                local_nodes(
                    config.nodes,
                    config.bus,
                    config.report_dir,
                    data_dir=config.data_dir,
                    workers=config.server_workers,
                )
            )
            first = nodes.servers[0]
            gateways = ",".join(server.gateway_url for server in nodes.servers)
            display.note(f"nodes up: API {first.api_url}, gateways {gateways}, bus {nodes.bus_url}")
            yield Target(first.api_url, gateways, first, None, standin, nodes)
            return
        display.note("starting a server of our own (embedded PostgreSQL)...")
        settings = None if standin is None else standin.server_env(config.push_grace_s)
        server = await stack.enter_async_context(
            local_server(
                config.data_dir,
                config.report_dir / "server.log",
                tls=config.tls,
                settings=settings,
                workers=config.server_workers,
            )
        )
        display.note(f"server up: API {server.api_url}, gateway {server.gateway_url}")
        yield Target(server.api_url, server.gateway_url, server, server.ca_file, standin)


async def check_reachable(
    client: httpx.AsyncClient, target: Target, ssl_context: ssl.SSLContext | None = None
) -> None:
    """The API answers and its database is up; the gateway port accepts connections (and,
    for wss://, completes a TLS handshake whose certificate `ssl_context` trusts).

    Raises TargetError with a one-line message saying what to check."""
    try:
        response = await client.get("/healthz")
    except httpx.HTTPError as exc:
        untrusted = _untrusted(exc)
        if untrusted is not None:
            raise TargetError(
                f"the TLS certificate of the API at {target.api_url} is not trusted "
                f"(certificate verify failed: {untrusted.verify_message}); {CA_HINT}"
            ) from None
        raise TargetError(f"cannot reach the obrol API at {target.api_url}: {exc}") from None
    if response.status_code != 200:
        raise TargetError(
            f"the API at {target.api_url} is not healthy (HTTP {response.status_code}: "
            f"{response.text[:200]})"
        )
    for gateway in target.gateway_url.split(","):
        await _check_gateway(gateway, ssl_context)


async def _check_gateway(gateway: str, ssl_context: ssl.SSLContext | None) -> None:
    parts = urlsplit(gateway)
    if parts.hostname is None or parts.port is None:
        raise TargetError(f"the gateway URL {gateway} has no host and port")
    try:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(parts.hostname, parts.port)
            try:
                if parts.scheme == "wss":
                    await tls_handshake(stream, parts.hostname, ssl_context)
            finally:
                await stream.aclose()
    except TlsVerificationError as exc:
        raise TargetError(
            f"the TLS certificate of the gateway at {gateway} is not trusted "
            f"(certificate verify failed: {exc.verify_message}); {CA_HINT}"
        ) from None
    except (OSError, ConnectError, trio.TooSlowError) as exc:
        raise TargetError(
            f"cannot reach the gateway at {gateway} ({exc}); "
            "pass --gateway-url if it does not listen on the API port + 1"
        ) from None


def cache_path_for(config: RunConfig) -> Path | None:
    if config.cache_path is not None:
        return config.cache_path
    if config.url is None:
        # A fresh server forgets everything; one on a kept data folder remembers.
        return None if config.data_dir is None else config.data_dir / "loadtest-cache.json"
    return default_cache_path()
