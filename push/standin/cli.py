"""`python -m push.standin` / `obrol push-standin`: run the stand-in as a process.

Once listening it prints ONE line of JSON to stdout (URL, credential files and ids), then
logs to stderr, until SIGINT or SIGTERM stops it (exit status 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import trio

from push.standin.app import running_standin

logger = logging.getLogger("push.standin")

# The keys of the start-up line; GET /_standin/credentials answers a superset.
ANNOUNCED = (
    "url",
    "ca_file",
    "apns_key_file",
    "apns_key_id",
    "apns_team_id",
    "apns_topic",
    "fcm_service_account_file",
    "fcm_project",
    "fcm_token_uri",
    "directory",
)


def build_parser(prog: str = "python -m push.standin") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="local APNs + FCM stand-in over HTTP/2 and TLS (for tests and load tests)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8443, help="port (0: any free port)")
    parser.add_argument(
        "--dir",
        type=Path,
        help="folder for the credentials (reused if present; default: a new private "
        "temporary folder, removed on exit)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="added to every answer (milliseconds)"
    )
    parser.add_argument(
        "--access-token-ttl-s", type=int, default=3599, help="FCM access token lifetime"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


async def _serve(args: argparse.Namespace, directory: Path) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with running_standin(
            directory,
            host=args.host,
            port=args.port,
            access_token_ttl_s=args.access_token_ttl_s,
            latency_s=args.latency_ms / 1000,
        ) as standin:
            described = standin.describe()
            print(json.dumps({key: described[key] for key in ANNOUNCED}), flush=True)
            async for signum in signals:
                logger.info("%s received: stopping", signal.Signals(signum).name)
                break


def main(argv: list[str] | None = None, prog: str = "python -m push.standin") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("hpack").setLevel(logging.WARNING)
    temporary = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix="obrol-push-standin-")) if temporary else args.dir
    try:
        trio.run(_serve, args, directory)
    except OSError as exc:  # the port is taken, the folder unwritable
        print(f"push stand-in: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return 0
