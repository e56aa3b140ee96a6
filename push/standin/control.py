"""What the stand-in recorded, the faults it was told to inject, and `/_standin/*`, the
same controls over HTTP for a stand-in in another process (loopback clients only).

    GET    /_standin/received[?since=N]  the records from index N on, as a JSON list
    DELETE /_standin/received            forget them
    GET    /_standin/faults              the faults still armed
    POST   /_standin/faults              arm one: a JSON object of Fault's fields
    DELETE /_standin/faults              disarm all
    POST   /_standin/unregister          {"service": "apns"|"fcm", "token": "..."}
    PUT    /_standin/latency             {"latency_s": 0.25}
    GET    /_standin/credentials         where the stand-in's credentials are, and its URL
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from push.standin.answers import JSON, json_bytes, parse_json
from push.standin.h2server import Request, Response

if TYPE_CHECKING:
    from push.standin.app import StandIn

logger = logging.getLogger(__name__)

SERVICES = ("apns", "fcm", "fcm_token")
CONTROL_PREFIX = "/_standin/"


@dataclass(frozen=True)
class Received:
    """One request as the stand-in saw it, and what it answered."""

    service: str  # "apns" | "fcm" | "fcm_token"
    token: str | None  # APNs device token from the path / FCM message.token
    headers: dict[str, str]  # lower-case names; authorization redacted to "bearer …"
    payload: Any  # the parsed JSON body (fcm_token: the form, assertion redacted), or None
    raw_size: int
    status: int  # what we answered (0 if we dropped the connection)
    reason: str | None  # APNs reason / FCM errorCode or status / OAuth error
    at: float  # time.time() when the request was complete


@dataclass
class Fault:
    """Answer matching requests this way instead of by the rules.

    A status below 400 means "answer by the rules": use it to delay or drop only.
    """

    service: str  # "apns" | "fcm" | "fcm_token"
    status: int = 500  # answer this status ...
    reason: str | None = None  # ... with this reason/errorCode (default: Apple's/Google's)
    count: int | None = 1  # for this many matching requests (None: until cleared)
    token: str | None = None  # only for this device token (None: any)
    delay_s: float = 0.0  # answer after this long (latency)
    drop: bool = False  # close the TCP connection instead of answering (record status 0)
    retry_after_s: int | None = None  # adds a retry-after header (429/503)


def check_fault(fault: Fault) -> None:
    """Raise ValueError if `fault` cannot be armed."""
    if fault.service not in SERVICES:
        raise ValueError(f"service must be one of {', '.join(SERVICES)}")
    if not 100 <= fault.status <= 599:
        raise ValueError("status must be an HTTP status (100-599)")
    if fault.count is not None and fault.count < 1:
        raise ValueError("count must be at least 1 (or None: until cleared)")
    if fault.delay_s < 0:
        raise ValueError("delay_s must not be negative")
    if fault.retry_after_s is not None and fault.retry_after_s < 0:
        raise ValueError("retry_after_s must not be negative")


def fault_from_json(value: Any) -> Fault:
    """A Fault from a JSON object of its fields; ValueError says what is wrong."""
    if not isinstance(value, dict):
        raise ValueError("a fault is a JSON object")
    fields = {f.name: f for f in dataclasses.fields(Fault)}
    unknown = set(value) - set(fields)
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    kinds: dict[str, tuple[type, ...]] = {
        "service": (str,),
        "status": (int,),
        "reason": (str, type(None)),
        "count": (int, type(None)),
        "token": (str, type(None)),
        "delay_s": (int, float),
        "drop": (bool,),
        "retry_after_s": (int, type(None)),
    }
    for name, item in value.items():
        bad_bool = isinstance(item, bool) and name != "drop"
        if bad_bool or not isinstance(item, kinds[name]):
            raise ValueError(f"fault field {name!r} has the wrong type")
    fault = Fault(**value)
    check_fault(fault)
    return fault


class FaultBook:
    """Armed faults, matched first-armed first; each spent as it matches."""

    def __init__(self) -> None:
        self._armed: list[tuple[Fault, list[int | None]]] = []

    def add(self, fault: Fault) -> None:
        check_fault(fault)
        self._armed.append((dataclasses.replace(fault), [fault.count]))

    def clear(self) -> None:
        self._armed.clear()

    def armed(self) -> list[Fault]:
        """The faults still armed, each with the count it has left."""
        return [dataclasses.replace(f, count=left[0]) for f, left in self._armed]

    def take(self, service: str, token: str | None) -> Fault | None:
        """The first armed fault for this request (spending one of its count), or None."""
        for index, (fault, left) in enumerate(self._armed):
            if fault.service != service or (fault.token is not None and fault.token != token):
                continue
            if left[0] is not None:
                left[0] -= 1
                if left[0] == 0:
                    del self._armed[index]
            return fault
        return None


def redacted_headers(request: Request) -> dict[str, str]:
    """The request's headers by lower-case name (repeats joined by ", "), with the
    authorization value cut to its scheme: "bearer …"."""
    headers: dict[str, str] = {}
    for name, raw in request.headers:
        value = f"{raw.partition(' ')[0].lower()} …" if name == "authorization" else raw
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _is_loopback(peer: str) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _json(status: int, value: Any) -> Response:
    return Response(status, (("content-type", JSON),), json_bytes(value))


class ControlApi:
    """`/_standin/*` for one stand-in."""

    def __init__(self, standin: StandIn) -> None:
        self._standin = standin

    async def handle(self, request: Request) -> Response:
        if not _is_loopback(request.peer):
            return _json(403, {"error": "the control API answers loopback clients only"})
        url = urlsplit(request.path)
        route = (request.method, url.path.removeprefix(CONTROL_PREFIX).rstrip("/"))
        try:
            return self._route(route, url.query, request.body)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})

    def _route(self, route: tuple[str, str], query: str, body: bytes) -> Response:  # noqa: PLR0911 - one return per endpoint
        standin = self._standin
        match route:
            case ("GET", "received"):
                since = parse_qs(query).get("since", ["0"])[0]
                if not since.isdigit():
                    raise ValueError("since must be a record index (0, 1, ...)")
                return _json(200, [dataclasses.asdict(r) for r in standin.received[int(since) :]])
            case ("DELETE", "received"):
                cleared = len(standin.received)
                standin.received.clear()
                return _json(200, {"cleared": cleared})
            case ("GET", "faults"):
                return _json(200, [dataclasses.asdict(f) for f in standin.faults()])
            case ("POST", "faults"):
                standin.add_fault(fault_from_json(_body(body)))
                return _json(201, {"armed": len(standin.faults())})
            case ("DELETE", "faults"):
                standin.clear_faults()
                return _json(200, {"armed": 0})
            case ("POST", "unregister"):
                value = _body(body)
                service, token = value.get("service", "apns"), value.get("token")
                if service not in ("apns", "fcm") or not isinstance(token, str) or not token:
                    raise ValueError('expected {"service": "apns"|"fcm", "token": "..."}')
                standin.unregister(token, service)
                return _json(200, {"unregistered": True})
            case ("PUT", "latency"):
                latency = _body(body).get("latency_s")
                if not isinstance(latency, int | float) or isinstance(latency, bool) or latency < 0:
                    raise ValueError('expected {"latency_s": <seconds, at least 0>}')
                standin.latency_s = float(latency)
                return _json(200, {"latency_s": standin.latency_s})
            case ("GET", "credentials"):
                return _json(200, standin.describe())
        return _json(404, {"error": "no such control endpoint"})


def _body(body: bytes) -> dict[str, Any]:
    ok, value = parse_json(body)
    if not ok or not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value
