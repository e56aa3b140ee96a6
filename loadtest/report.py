"""The report: `report.json`, the summary table, and who was the bottleneck.

Built only from what was measured; figures a run could not measure (a worker died, the run
was stopped at once) are null and `loss_check` says `incomplete`.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.coordinator import RunRecord
from loadtest.metrics import Latency
from loadtest.procstats import Mark, ServerWatch, cpu_count
from loadtest.schedule import KEY_WORKER_BITS
from loadtest.server_metrics import Snapshot, between

TESTER_CPU_LIMIT = 0.85
"""A worker using this share of a core or more during the send phase is saturated."""
SERVER_CPU_LIMIT = 0.90
LAG_LIMIT_MS = 50.0
"""Sends handed out this late (p99) mean the tester could not keep its own schedule."""
LOOP_LAG_LIMIT_MS = 25.0
"""A worker whose event loop is busy this long at a stretch adds that to latencies."""
MACHINE_LIMIT = 0.90
OTHERS_LIMIT = 0.25
"""Cores used by processes that are neither the tester nor the server worth a warning."""
MIN_SEND_S = 1.0
"""Shorter send phases (a stopped run) say nothing about saturation."""


def _merged(finals: list[dict[str, Any]], name: str) -> Latency:
    merged = Latency()
    for final in finals:
        merged.merge(Latency.decode(final[name]))
    return merged


def _rate(count: float, seconds: float | None) -> float | None:
    if seconds is None or seconds <= 0:
        return None
    return round(count / seconds, 1)


def _sum(finals: list[dict[str, Any]], *path: str) -> int:
    total = 0
    for final in finals:
        value: Any = final
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        total += int(value or 0)
    return total


def build_report(record: RunRecord) -> dict[str, Any]:
    config = record.config
    finals = [f for f in record.finals if f is not None]
    complete = (
        bool(finals)
        and len(finals) == config.workers
        and all("loss" in f for f in finals)
        and not record.dead_workers
    )
    aggregator = record.aggregator
    errors: Counter[str] = Counter()
    for index, final in enumerate(record.finals):
        if final is not None:
            errors.update(final["counts"]["errors"])
        elif aggregator is not None:  # what its last progress message said
            errors.update(aggregator.workers[index].counts.get("errors", {}))

    latency = _merged(finals, "latency")
    # How long sends went on: the configured duration, or less if the run was stopped.
    walls = [f["send_phase"]["wall_s"] for f in finals if f.get("send_phase")]
    send_s = max(walls) if walls else None
    send_start = record.times.get("send_start")
    last_delivery = max((f["last_delivery_at"] or 0 for f in finals), default=0) or None
    delivery_window = (
        None if send_start is None or last_delivery is None else last_delivery - send_start
    )
    first_connect = min(
        (f["first_connect_at"] for f in finals if f["first_connect_at"]), default=None
    )
    last_ready = max((f["last_ready_at"] or 0 for f in finals), default=0) or None
    connected = _sum(finals, "loss", "devices_checked") if complete else None
    if connected is None and aggregator is not None:
        connected = aggregator.settled()
    initial_handshakes = Latency()
    for final in finals:
        initial_handshakes.merge(Latency.decode(final["ready"]))

    duplicates = {
        k: _sum(finals, "duplicates", k) for k in ("catch_up", "switch", "live", "stored_twice")
    }
    loss = {k: _sum(finals, "loss", k) for k in ("expected", "received", "lost", "unexpected")}
    sent = _sum(finals, "counts", "sent")
    unsettled = _sum(finals, "unsettled")
    lost_sample, unexpected_sample = (
        [
            {"device": d, "message": f"{key & 0xFF}.{key >> KEY_WORKER_BITS}"}
            for f in finals
            for d, key in f.get("loss", {}).get(name, [])
        ][:20]
        for name in ("lost_sample", "unexpected_sample")
    )
    storm = _storm(record, finals)
    soak_parts = [f["soak"] for f in finals if f.get("soak")]
    soak = (
        {
            "seconds": config.soak_s,
            **{
                k: sum(p[k] for p in soak_parts)
                for k in ("connected_at_start", "connected_at_end", "disconnects")
            },
        }
        if soak_parts
        else None
    )
    server = _server(record, connected, loss["received"] if complete else None)
    tester = _tester(record, finals)
    machine = _machine(record, server, tester)
    live = _live(record, finals, send_s)
    report: dict[str, Any] = {
        "tool": "obrol loadtest",
        "started_at": datetime.fromtimestamp(record.started_at, UTC).isoformat(),
        "command": " ".join(["obrol", "loadtest", *record.argv]),
        "interrupted": record.interrupted,
        "target": None
        if record.target is None
        else {
            "api_url": record.target.api_url,
            "gateway_url": record.target.gateway_url,
            "own_server": record.target.local is not None,
        },
        "devices": config.devices,
        "users": config.users,
        "conversations": 0 if record.topology is None else len(record.topology.conversations),
        "groups": [dataclasses.asdict(g) for g in config.groups],
        "connected": connected,
        "connected_at_end": _sum(finals, "connected_at_end"),
        "messages_sent": sent,
        "messages_acked": _sum(finals, "sends", "acked"),
        "messages_refused": _sum(finals, "sends", "refused"),
        "messages_unacked": _sum(finals, "sends", "unacked"),
        "messages_unsent": _sum(finals, "sends", "unwritten"),
        "messages_per_s": _rate(sent, send_s),
        "deliveries_expected": loss["expected"] if complete else None,
        "deliveries_received": loss["received"] if complete else None,
        "lost": loss["lost"] if complete else None,
        "duplicates": duplicates["live"] + duplicates["stored_twice"],
        "duplicates_dropped": duplicates["catch_up"] + duplicates["switch"],
        "duplicate_detail": duplicates,
        "unexpected_deliveries": loss["unexpected"] if complete else None,
        "stale_messages": _sum(finals, "stale"),
        "erased_notices": _sum(finals, "erased"),
        "live": live,
        "out_of_order": _sum(finals, "out_of_order"),
        "unsettled_sends": unsettled,
        "loss_check": _combined(
            _verdict(complete, loss, duplicates, unsettled),
            None if config.push_share <= 0 else (record.push or {}).get("loss_check", "incomplete"),
        ),
        "message_loss_check": _verdict(complete, loss, duplicates, unsettled),
        "push": record.push,
        "lost_sample": lost_sample,
        "unexpected_sample": unexpected_sample,
        "deliveries_per_s": _rate(loss["received"], delivery_window),
        "offered_deliveries_per_s": _rate(loss["expected"], send_s),
        "latency_ms": latency.summary_ms(),
        "latency_by_node_ms": _by_node(record, finals),
        "ack_latency_ms": _merged(finals, "ack_latency").summary_ms(),
        "handshake_ms": _merged(finals, "handshake").summary_ms(),
        "connect_to_synced_ms": initial_handshakes.summary_ms(),
        "handshakes_per_s": None
        if first_connect is None or last_ready is None or not connected
        else round(connected / max(last_ready - first_connect, 1e-3), 1),
        "catch_up_deliveries": _sum(finals, "catch_up_deliveries"),
        "errors": dict(sorted(errors.items())),
        "storm": storm,
        "soak": soak,
        "server": server,
        "server_latency": _server_latency(record),
        "tester": tester,
        "machine": machine,
        "bottleneck": _bottleneck(server, tester, machine),
        "provisioning": None
        if record.provisioned is None
        else {
            "seconds": round(record.provisioned.seconds, 2),
            "created": record.provisioned.created,
            "reused": record.provisioned.reused,
        },
        "config": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in dataclasses.asdict(config).items()
            if k not in ("groups",)
        },
        "notes": record.notes
        + (
            [
                "new messages arrived below an earlier position on the same connection "
                "(PROTOCOL.md 6.1 promises increasing positions)"
            ]
            if _sum(finals, "out_of_order")
            else []
        )
        + (
            [
                f"{unsettled} sends were not acknowledged when the drain ended (their "
                "devices were still reconnecting?): the loss check left them out; a longer "
                "--drain-timeout covers them"
            ]
            if unsettled
            else []
        )
        + _push_notes(record.push)
        + _live_notes(live)
        + [f"worker {w} exited unexpectedly" for w in record.dead_workers]
        + (["aborted: no device could connect"] if record.aborted else []),
        "timeline_s": _timeline(record),
        "timeseries": []
        if aggregator is None
        else [dataclasses.asdict(t) for t in aggregator.ticks],
    }
    return report


def _by_node(record: RunRecord, finals: list[dict[str, Any]]) -> dict[str, Any] | None:
    """With the devices on several nodes: delivery latency where the sending device was on
    the receiving device's node (`same_node`) and where it was on another (`cross_node`),
    and what crossing adds at p50/p90/p99 (None with one node)."""
    target = record.target
    if target is None or len(target.gateway_url.split(",")) < 2:
        return None
    if not all("latency_same_node" in f for f in finals):
        return None
    same = _merged(finals, "latency_same_node")
    cross = _merged(finals, "latency_cross_node")
    split: dict[str, Any] = {
        "nodes": len(target.gateway_url.split(",")),
        "same_node": {"count": same.count, **same.summary_ms()},
        "cross_node": {"count": cross.count, **cross.summary_ms()},
        "cross_minus_same_ms": None,
    }
    if same.count and cross.count:
        split["cross_minus_same_ms"] = {
            name: round(split["cross_node"][name] - split["same_node"][name], 3)
            for name in ("p50", "p90", "p99")
        }
    return split


def _timeline(record: RunRecord) -> dict[str, float | None]:
    """When each phase (and the storm) began, in seconds on the time series' clock."""
    if record.aggregator is None:
        return {}
    origin = record.aggregator.started
    times = record.times

    def at(name: str) -> float | None:
        return None if name not in times else round(times[name] - origin, 2)

    storm = record.config.storm_time_s
    send = at("send_start")
    stops = [t for t in (at("send_stop"), at("stopped")) if t is not None]
    return {
        "ramp": at("ramp_start"),
        "send": send,
        "storm": None if storm is None or send is None else round(send + storm, 2),
        "drain": min(stops) if stops else None,
        "end": at("end"),
    }


def _verdict(
    complete: bool, loss: dict[str, int], duplicates: dict[str, int], unsettled: int
) -> str:
    """failed: a stored message missing, one delivered where it should not be, or a true
    duplicate; incomplete: the check could not cover everything (the run was cut short, or
    sends were still unacknowledged when the drain ended); passed otherwise."""
    if not complete or loss["expected"] == 0:
        return "incomplete"
    clean = (
        loss["lost"] == 0
        and loss["unexpected"] == 0
        and duplicates["live"] == 0
        and duplicates["stored_twice"] == 0
    )
    if not clean:
        return "failed"
    return "incomplete" if unsettled else "passed"


def _combined(messages: str, pushes: str | None) -> str:
    """The run's loss check: the messages', and with --push-share the pushes' too (None:
    no push check). Failed if either failed, incomplete if either was."""
    if pushes is None:
        return messages
    verdicts = {messages, pushes}
    if "failed" in verdicts:
        return "failed"
    return "incomplete" if "incomplete" in verdicts else "passed"


def _push_notes(push: dict[str, Any] | None) -> list[str]:
    if push is None:
        return []
    notes = []
    if push["lost"]:
        notes.append(f"{push['lost']} phones never got a push for their latest message")
    if push["unexpected"]:
        notes.append(
            f"{push['unexpected']} pushes told a phone of a message it should not hear of "
            "(its own account's, or of a conversation it is not in)"
        )
    if push["duplicates"]:
        notes.append(
            f"{push['duplicates']} pushes were accepted twice (at-least-once delivery allows "
            "it after a crash or a dropped connection)"
        )
    if push["to_connected_devices"]:
        notes.append(f"{push['to_connected_devices']} pushes went to connected devices")
    if push["standin_error"]:
        notes.append(push["standin_error"])
    return notes


LIVE_COUNTS = (
    "picks",
    "merged",
    "starts",
    "started",
    "starts_unanswered",
    "updates_sent",
    "updates_received",
    "stops",
    "stops_confirmed",
    "ends_received",
)
LIVE_REFUSALS = ("start_refusals", "update_refusals", "stop_refusals")


def _live(
    record: RunRecord, finals: list[dict[str, Any]], send_s: float | None
) -> dict[str, Any] | None:
    """The live-location traffic (mix kind `live`; None without it). Ephemeral, so outside
    the loss check: `updates_audience` is how many deliveries the updates sent would make if
    every member device of their conversations was online when each one arrived - what
    `updates_received` may reach and never pass."""
    if record.config.mix.live <= 0:
        return None
    parts = [f["live"] for f in finals if f.get("live")]
    live: dict[str, Any] = {k: sum(p[k] for p in parts) for k in LIVE_COUNTS}
    for name in LIVE_REFUSALS:
        refusals: Counter[str] = Counter()
        for part in parts:
            refusals.update(part[name])
        live[name] = dict(sorted(refusals.items()))
    live["starts_refused"] = sum(live["start_refusals"].values())
    live["updates_refused"] = sum(live["update_refusals"].values())
    live["updates_per_s"] = _rate(live["updates_sent"], send_s)
    live["updates_audience"] = None
    if record.topology is not None:
        topology, phones = record.topology, record.phones
        audience = 0
        for part in parts:
            for conv, count in part["sent_by_conversation"].items():
                members = topology.conversations[int(conv)]
                devices = sum(1 for u in members for d in topology.devices_of(u) if d not in phones)
                audience += count * devices
        live["updates_audience"] = audience
    return live


def _live_notes(live: dict[str, Any] | None) -> list[str]:
    if live is None:
        return []
    notes = []
    if live["starts_refused"]:
        notes.append(f"{live['starts_refused']} live_start refused: {live['start_refusals']}")
    if live["updates_refused"]:
        notes.append(f"{live['updates_refused']} live_pos refused: {live['update_refusals']}")
    audience = live["updates_audience"]
    if audience is not None and live["updates_received"] > audience:
        notes.append(
            f"devices received {live['updates_received']} live updates, more than the "
            f"{audience} their audience could take"
        )
    return notes


def live_rows(live: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The live-location figures, as (name, value) rows (none without `live` in --mix)."""
    if live is None:
        return []
    unanswered = (
        f", {_n(live['starts_unanswered'])} unanswered" if live["starts_unanswered"] else ""
    )
    return [
        (
            "live sessions",
            f"{_n(live['starts'])} started ({_n(live['started'])} ok, "
            f"{_n(live['starts_refused'])} refused{unanswered}), {_n(live['stops'])} stopped "
            f"({_n(live['stops_confirmed'])} confirmed by live_end)",
        ),
        (
            "live updates",
            f"{_n(live['updates_sent'])} sent ({_n(live['updates_per_s'])}/s, "
            f"{_n(live['updates_refused'])} refused) of {_n(live['picks'])} picks; "
            f"{_n(live['updates_received'])} received (at most {_n(live['updates_audience'])}: "
            "ephemeral, for the devices online then)",
        ),
    ]


def _storm(record: RunRecord, finals: list[dict[str, Any]]) -> dict[str, Any] | None:
    parts = [f["storm"] for f in finals if f.get("storm")]
    if not parts:
        return None
    ready = _merged(finals, "storm_ready")
    send_start = record.times.get("send_start", 0.0)
    return {
        "percent": record.config.storm_percent,
        "at_s": round(min(p["at"] for p in parts) - send_start, 2),
        "dropped": sum(p["dropped"] for p in parts),
        "reconnected": ready.count,
        "reconnect_to_synced_ms": ready.summary_ms(),
    }


def _server(
    record: RunRecord, connected: int | None, deliveries: int | None
) -> dict[str, Any] | None:
    """The server's CPU and memory, and what they bought: deliveries per CPU-second (CPU
    from the start of sending to the end of the drain, storm reconnections included) and
    handshakes per CPU-second (CPU during the ramp, catch-up to `synced` included)."""
    watch = record.server
    if watch is None:
        return None
    whole = watch.between("ramp_start", "end") or watch.between("ramp_start", "send_end")
    send = watch.between("send_start", "send_end")
    ramp = watch.between("ramp_start", "ramp_end")
    result: dict[str, Any] = {
        "pid": watch.pid,
        "pids": watch.pids,
        "nodes": len(watch.pids),
        "db_pid": watch.postmaster(),
        "cpu_s": None if whole is None else round(whole[1].cpu_s - whole[0].cpu_s, 2),
        "rss_mb": round(watch.max_rss_mb, 1),
        "rss_peak_mb": round(watch.peak_rss_mb, 1),
        "cpu_util_send": None,
        "db_cpu_s": None,
        "rss_per_connection_kb": None,
        "deliveries_per_cpu_s": None,
        "handshakes_per_cpu_s": None,
    }
    sending = watch.between("send_start", "end")
    if sending is not None and deliveries:
        cpu = sending[1].cpu_s - sending[0].cpu_s
        result["deliveries_per_cpu_s"] = round(deliveries / cpu) if cpu > 0 else None
    if send is not None:
        wall = max(send[1].at - send[0].at, 1e-6)
        result["cpu_util_send"] = round((send[1].cpu_s - send[0].cpu_s) / wall, 3)
        if send[0].db_cpu_s is not None and send[1].db_cpu_s is not None:
            result["db_cpu_util_send"] = round((send[1].db_cpu_s - send[0].db_cpu_s) / wall, 3)
    if whole is not None and whole[0].db_cpu_s is not None and whole[1].db_cpu_s is not None:
        result["db_cpu_s"] = round(whole[1].db_cpu_s - whole[0].db_cpu_s, 2)
    if watch.bus_pid is not None:
        result["bus"] = _bus(watch)
    if ramp is not None and connected:
        grown = ramp[1].rss_mb - ramp[0].rss_mb
        result["rss_per_connection_kb"] = round(grown * 1024 / connected, 1)
        cpu = ramp[1].cpu_s - ramp[0].cpu_s
        result["handshakes_per_cpu_s"] = round(connected / cpu) if cpu > 0 else None
    return result


def _bus(watch: ServerWatch) -> dict[str, Any]:
    """The NATS server between the nodes: its CPU (the whole run, and the share of a core
    while sending) and its highest resident memory; counted apart from the server's."""
    whole = watch.between("ramp_start", "end") or watch.between("ramp_start", "send_end")
    send = watch.between("send_start", "send_end")

    def cpu(pair: tuple[Mark, Mark] | None) -> float | None:
        if pair is None or pair[0].bus_cpu_s is None or pair[1].bus_cpu_s is None:
            return None
        return pair[1].bus_cpu_s - pair[0].bus_cpu_s

    whole_cpu, send_cpu = cpu(whole), cpu(send)
    return {
        "kind": "nats",
        "pid": watch.bus_pid,
        "cpu_s": None if whole_cpu is None else round(whole_cpu, 2),
        "cpu_util_send": None
        if send_cpu is None or send is None
        else round(send_cpu / max(send[1].at - send[0].at, 1e-6), 3),
        "rss_mb": round(watch.bus_max_rss_mb, 1),
    }


def _server_latency(record: RunRecord) -> dict[str, Any] | None:
    """The server's own latency histograms (GET /metrics): handshakes during the ramp;
    delivery (commit to the socket write) and commits from the start of sending to the end
    of the drain."""
    marks = record.server_metrics
    if not marks:
        return None
    ramp = between(marks.get("ramp_start"), marks.get("ramp_end")) or {}
    send = between(marks.get("send_start"), marks.get("end")) or {}
    result: dict[str, Any] = {
        "handshake_ms": ramp.get("handshake_ms"),
        "delivery_ms": send.get("delivery_ms"),
        "commit_ms": send.get("commit_ms"),
    }
    nodes = record.node_metrics
    if nodes:
        # Each node's own, in node order (the figures above are all of them merged).
        result["by_node"] = []
        for index in range(len(next(iter(nodes.values())))):

            def of(name: str, i: int = index) -> Snapshot | None:
                found = nodes.get(name)
                return None if found is None else found[i]

            ramp = between(of("ramp_start"), of("ramp_end")) or {}
            send = between(of("send_start"), of("end")) or {}
            result["by_node"].append(
                {
                    "node": index + 1,
                    "handshake_ms": ramp.get("handshake_ms"),
                    "delivery_ms": send.get("delivery_ms"),
                    "commit_ms": send.get("commit_ms"),
                }
            )
    return result


def _machine(
    record: RunRecord, server: dict[str, Any] | None, tester: dict[str, Any]
) -> dict[str, Any] | None:
    """How busy this machine was while sending, and how much of that was neither the
    tester nor (when it is ours) the server and its database."""
    times, busy = record.times, record.machine_busy
    if "send_start" not in busy or "send_end" not in busy:
        return None
    wall = times["send_end"] - times["send_start"]
    if wall < MIN_SEND_S:
        return None
    busy_cores = (busy["send_end"] - busy["send_start"]) / wall
    known = sum(tester["worker_cpu_util_send"])
    if server is not None:
        known += (server.get("cpu_util_send") or 0) + (server.get("db_cpu_util_send") or 0)
        known += (server.get("bus") or {}).get("cpu_util_send") or 0
    return {
        "cores": cpu_count(),
        "busy_cores_send": round(busy_cores, 2),
        "others_cores_send": round(max(busy_cores - known, 0.0), 2),
        "others_include_server": server is None,
    }


def _tester(record: RunRecord, finals: list[dict[str, Any]]) -> dict[str, Any]:
    utils = [
        f["send_phase"]["cpu_s"] / f["send_phase"]["wall_s"]
        for f in finals
        if f.get("send_phase") and f["send_phase"]["wall_s"] >= MIN_SEND_S
    ]
    lag = _merged(finals, "schedule_lag")
    loop_lag = _merged(finals, "loop_lag")
    return {
        "workers": record.config.workers,
        "cpu_s": round(sum(f["cpu_s"] for f in finals) + record.coordinator_cpu_s, 2),
        "worker_cpu_util_send": [round(u, 3) for u in utils],
        "schedule_lag_ms": lag.summary_ms(),
        "loop_lag_ms": loop_lag.summary_ms(),
        "cores": cpu_count(),
    }


def _bottleneck(
    server: dict[str, Any] | None, tester: dict[str, Any], machine: dict[str, Any] | None
) -> dict[str, Any]:
    reasons: list[str] = []
    utils: list[float] = tester["worker_cpu_util_send"]
    tester_bound = False
    if utils and max(utils) >= TESTER_CPU_LIMIT:
        tester_bound = True
        reasons.append(
            f"a tester worker used {max(utils):.0%} of a core while sending (add --workers)"
        )
    loop_p99 = tester["loop_lag_ms"]["p99"]
    if loop_p99 is not None and loop_p99 > LOOP_LAG_LIMIT_MS:
        tester_bound = True
        reasons.append(
            f"a tester worker was busy for {loop_p99:.0f} ms at a stretch (p99): deliveries "
            "arriving meanwhile waited for it"
        )
    lag_p99 = tester["schedule_lag_ms"]["p99"]
    if lag_p99 is not None and lag_p99 > LAG_LIMIT_MS:
        tester_bound = True
        reasons.append(f"the tester handed out sends late (p99 {lag_p99:.0f} ms behind schedule)")
    server_bound = False
    server_util = None if server is None else server.get("cpu_util_send")
    nodes = 1 if server is None else server.get("nodes", 1)
    if server_util is not None and server_util / nodes >= SERVER_CPU_LIMIT:
        server_bound = True
        reasons.append(
            f"the server process used {server_util:.0%} of a core"
            if nodes == 1
            else f"the {nodes} nodes used {server_util / nodes:.0%} of a core each"
        )
    if machine is not None:
        if machine["busy_cores_send"] >= MACHINE_LIMIT * machine["cores"]:
            reasons.append(
                f"the machine was busy ({machine['busy_cores_send']:.1f} of "
                f"{machine['cores']} cores): everything on it competed for the cores"
            )
        if not machine["others_include_server"] and machine["others_cores_send"] >= OTHERS_LIMIT:
            reasons.append(
                f"other processes used {machine['others_cores_send']:.1f} cores while sending: "
                "the figures are disturbed"
            )
    if tester_bound and not server_bound:
        verdict = (
            "tester-bound: the tester's own delays are part of these latencies "
            "(they overstate the server's)"
        )
    elif server_bound and not tester_bound:
        verdict = "server-bound"
    elif server_bound and tester_bound:
        verdict = "both saturated"
    else:
        verdict = "neither saturated: the offered load was handled"
    return {
        "tester_bound": tester_bound,
        "server_bound": server_bound if server is not None else None,
        "verdict": verdict,
        "reasons": reasons,
    }


def write_json(report: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,.2f} ms"


def _n(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def push_rows(push: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The push figures, as (name, value) rows (none without --push-share)."""
    if push is None:
        return []
    lat = push["latency_ms"]
    cpu = push["cpu_while_pushing"]
    return [
        (
            "push phones",
            f"{_n(push['phones'])} offline ({_n(push['pushes_expected'])} had messages; "
            f"{_n(push['messages_to_phones'])} (phone, message) pairs)",
        ),
        (
            "pushes",
            f"{_n(push['pushes_received'])} accepted ({_n(push['alerts'])} alerts, "
            f"{_n(push['badge_updates'])} badge updates; {_n(push['pushes_per_s'])}/s), "
            f"moot {_n(push['moot'])}, to connected devices {_n(push['to_connected_devices'])}",
        ),
        (
            "push lost / dup",
            f"{_n(push['lost'])} of {_n(push['pushes_expected'])} phones / "
            f"{_n(push['duplicates'])}; unexpected {_n(push['unexpected'])}",
        ),
        (
            "push latency p50/p99",
            f"{_ms(lat['p50'])} / {_ms(lat['p99'])} (commit to stand-in, grace "
            f"{push['grace_s']:g} s included)",
        ),
        ("push latency p99.9/max", f"{_ms(lat['p999'])} / {_ms(lat['max'])}"),
        (
            "oldest in push p50/p99",
            f"{_ms(push['oldest_latency_ms']['p50'])} / {_ms(push['oldest_latency_ms']['p99'])}"
            " (per alert, its oldest message)",
        ),
        (
            "cores while pushing",
            f"stand-in {_n(cpu['standin'])}, server {_n(cpu['server'])}, "
            f"database {_n(cpu['db'])}, machine {_n(cpu['machine'])}",
        ),
        ("push check", push["loss_check"]),
    ]


def node_latency_rows(split: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Same-node and cross-node delivery latency (none with one node)."""
    if not split:
        return []
    rows = []
    for name, key in (("same node", "same_node"), ("cross node", "cross_node")):
        part = split[key]
        rows.append(
            (
                f"latency {name} p50/p90/p99",
                f"{_ms(part['p50'])} / {_ms(part['p90'])} / {_ms(part['p99'])} "
                f"({_n(part['count'])} deliveries)",
            )
        )
    added = split["cross_minus_same_ms"]
    if added is not None:
        rows.append(
            (
                "cross-node adds",
                f"{added['p50']:+.2f} / {added['p90']:+.2f} / {added['p99']:+.2f} ms (p50/p90/p99)",
            )
        )
    return rows


def server_latency_rows(latency: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not latency:
        return []
    rows = []
    for name, key in (("server delivery", "delivery_ms"), ("server handshake", "handshake_ms")):
        part = latency.get(key)
        if part and part["count"]:
            rows.append(
                (
                    f"{name} p50/p90/p99",
                    f"{_ms(part['p50'])} / {_ms(part['p90'])} / {_ms(part['p99'])} "
                    f"({_n(part['count'])} observations)",
                )
            )
    for node in latency.get("by_node") or []:
        part = node.get("delivery_ms")
        if part and part["count"]:
            rows.append(
                (
                    f"  node {node['node']} delivery",
                    f"{_ms(part['p50'])} / {_ms(part['p90'])} / {_ms(part['p99'])} "
                    f"({_n(part['count'])} observations)",
                )
            )
    return rows


def summary_table(report: dict[str, Any]) -> str:
    """The end-of-run table for the terminal."""
    lat = report["latency_ms"]
    rows = [
        (
            "devices connected",
            f"{_n(report['connected'])} / {_n(report['devices'])}"
            + (f" ({report['push']['phones']:,} are offline phones)" if report["push"] else ""),
        ),
        ("handshakes/s", _n(report["handshakes_per_s"])),
        ("messages sent", f"{_n(report['messages_sent'])} ({_n(report['messages_per_s'])}/s)"),
        (
            "deliveries",
            f"{_n(report['deliveries_received'])} / {_n(report['deliveries_expected'])} expected",
        ),
        ("deliveries/s", _n(report["deliveries_per_s"])),
        ("lost", _n(report["lost"])),
        (
            "duplicates",
            _n(report["duplicates"])
            + (
                f" (and {_n(report['duplicates_dropped'])} re-sent around a catch-up, "
                "dropped by id as PROTOCOL.md 6.3 allows)"
                if report["duplicates_dropped"]
                else ""
            ),
        ),
        ("latency p50/p90/p99", f"{_ms(lat['p50'])} / {_ms(lat['p90'])} / {_ms(lat['p99'])}"),
        ("latency p99.9/max", f"{_ms(lat['p999'])} / {_ms(lat['max'])}"),
        *node_latency_rows(report.get("latency_by_node_ms")),
        ("errors", ", ".join(f"{k} {v}" for k, v in report["errors"].items()) or "none"),
    ]
    if report["out_of_order"]:
        rows.append(
            ("out of order", f"{_n(report['out_of_order'])} new messages below an earlier position")
        )
    if report["storm"]:
        storm = report["storm"]
        rows.append(
            (
                "reconnect storm",
                f"{storm['dropped']} dropped, {storm['reconnected']} back, "
                f"p99 {_ms(storm['reconnect_to_synced_ms']['p99'])} to synced",
            )
        )
    if report["server"]:
        server = report["server"]
        rows.append(
            (
                "server" if server.get("nodes", 1) == 1 else f"server ({server['nodes']} nodes)",
                f"cpu {_n(server['cpu_s'])} s, rss {_n(server['rss_mb'])} MB, "
                f"{_n(server['rss_per_connection_kb'])} KB/connection",
            )
        )
        bus = server.get("bus")
        if bus:
            rows.append(
                (
                    "NATS server",
                    f"cpu {_n(bus['cpu_s'])} s ({_n(bus['cpu_util_send'])} of a core while "
                    f"sending), rss {_n(bus['rss_mb'])} MB",
                )
            )
        rows.append(
            (
                "server per CPU-s",
                f"{_n(server['deliveries_per_cpu_s'])} deliveries (sending), "
                f"{_n(server['handshakes_per_cpu_s'])} handshakes (ramp)",
            )
        )
    rows += server_latency_rows(report.get("server_latency"))
    rows += push_rows(report["push"])
    rows += live_rows(report.get("live"))
    rows.append(("bottleneck", report["bottleneck"]["verdict"]))
    rows.append(("loss check", report["loss_check"]))
    rows += [("note", note) for note in report["notes"]]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
