"""The `obrol` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from protocol.errors import ObrolError
from server.audit_command import add_audit_commands, run_audit_command
from server.keys_command import add_keys_commands, run_keys_command
from server.logs import configure_logging
from server.org_command import add_org_commands, run_org_command
from server.runner import Running, serve
from server.settings import load_settings
from server.workers import default_workers, supervise

logger = logging.getLogger("obrol")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="obrol", description="obrol team messaging server")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("serve", help="run the server (HTTP API and database)")
    run.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="HTTP API port (default 8400)")
    run.add_argument(
        "--gateway-port", type=int, help="WebSocket gateway port (default: API port + 1)"
    )
    run.add_argument(
        "--only",
        choices=("api", "gateway"),
        help="run only the HTTP API or only the gateway (to scale them apart)",
    )
    run.add_argument("--data-dir", type=Path, help="data folder (default ./obrol-data)")
    run.add_argument(
        "--database-url",
        help="PostgreSQL URL; without it (or OBROL_DATABASE_URL) an embedded database "
        "is started in the data folder",
    )
    run.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="TLS certificate (PEM, chain included) to serve https:// and wss://; with --tls-key",
    )
    run.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the certificate's private key (PEM)"
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="gateway+API processes sharing the ports (default: one per core; 1 serves in "
        "this process)",
    )
    run.add_argument(
        "--bus",
        metavar="URL",
        help="how processes and nodes sharing the database talk: postgres (default, "
        "LISTEN/NOTIFY), nats://host:port, or none",
    )
    run.add_argument("--config", type=Path, help="TOML settings file")
    add_org_commands(commands)
    add_audit_commands(commands)
    add_keys_commands(commands)
    commands.add_parser(
        "loadtest",
        help="simulate devices against a server (see `obrol loadtest --help`)",
        add_help=False,
    )
    commands.add_parser(
        "push-standin",
        help="run local APNs + FCM stand-ins for tests (see `obrol push-standin --help`)",
        add_help=False,
    )
    return parser


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    settings = load_settings(
        args.config,
        host=args.host,
        port=args.port,
        gateway_port=args.gateway_port,
        serve_api=None if args.only is None else args.only == "api",
        serve_gateway=None if args.only is None else args.only == "gateway",
        data_dir=args.data_dir,
        database_url=args.database_url,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        workers=args.workers,
        bus=args.bus,
    )
    workers = settings.workers or default_workers()
    configure_logging(settings.log_level, settings.log_format)
    shutdown = trio.Event()
    # The receiver must outlive the nursery: its body ends long before the server does.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if shutdown.is_set():
                        logger.warning("second signal: stopping now")
                        nursery.cancel_scope.cancel()
                        return
                    logger.info("%s received: shutting down", signal.Signals(signum).name)
                    shutdown.set()
                    # A shutdown that hangs is cut short.
                    nursery.cancel_scope.deadline = (
                        trio.current_time() + settings.shutdown_timeout_s + 10
                    )

            async def run_server(task_status: trio.TaskStatus[Running]) -> None:
                try:
                    if workers > 1:
                        await supervise(settings, shutdown, workers, task_status=task_status)
                    else:
                        await serve(settings, shutdown, task_status=task_status)
                finally:
                    nursery.cancel_scope.cancel()  # the signal watcher is done too

            nursery.start_soon(watch_signals)
            running: Running = await nursery.start(run_server)
            print(
                f"obrol is running\n"
                f"  API:        {running.api_url or '(not served)'}\n"
                f"  gateway:    {running.gateway_url or '(not served)'}\n"
                f"  database:   {running.database}\n"
                f"  TLS:        {running.tls or 'off'}\n"
                f"  workers:    {running.workers} (bus: {settings.bus})\n"
                f"  server key: {running.server_key}\n"
                f"Press Ctrl-C to stop.",
                flush=True,
            )


# The operator's commands on the data folder and database: `obrol org ...`, `obrol audit
# ...`, `obrol keys ...`.
OPERATOR_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "org": run_org_command,
    "audit": run_audit_command,
    "keys": run_keys_command,
}


def _obrol_errors(exc: BaseException) -> list[ObrolError]:
    """The ObrolErrors inside `exc` (itself, or nested in exception groups)."""
    if isinstance(exc, ObrolError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in _obrol_errors(sub)]
    return []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:
        from loadtest.cli import main as loadtest_main  # noqa: PLC0415 - only loadtest needs it

        return loadtest_main(argv[1:])
    if argv[:1] == ["push-standin"]:
        from push.standin.cli import main as standin_main  # noqa: PLC0415 - only it needs it

        return standin_main(argv[1:], prog="obrol push-standin")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            # SIGHUP reloads the TLS certificate while serving; before (start-up, database,
            # migrations) and after (the drain) it must not kill the process.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            trio.run(_serve_until_signalled, args)
        else:
            return OPERATOR_COMMANDS[args.command](args)
    except (ObrolError, BaseExceptionGroup) as exc:
        errors = _obrol_errors(exc)
        if not errors:
            raise
        for error in errors:
            print(f"obrol: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a further Ctrl-C after everything was already stopped
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
