"""`report.png` (latency over time, throughput and CPU, latency distribution) and the
`index.html` that shows it with the main figures. matplotlib with the Agg backend: no
display needed."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, FuncFormatter

from loadtest.metrics import Latency
from loadtest.report import push_rows

PERCENTILE_TICKS = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
PLAIN = FuncFormatter(lambda y, _: f"{y:g}")


def _tail(percentile: float) -> float:
    """x position of a percentile on a 'nines' axis: 1 / (1 - p)."""
    return 1.0 / max(1.0 - percentile / 100.0, 1e-7)


def write_plot(report: dict[str, Any], latency: Latency, path: Path) -> None:
    ticks = report["timeseries"]
    fig = plt.figure(figsize=(10, 11))
    ax_lat = fig.add_subplot(3, 1, 1)
    ax_rate = fig.add_subplot(3, 1, 2, sharex=ax_lat)
    ax_dist = fig.add_subplot(3, 1, 3)
    fig.suptitle(
        f"obrol load test: {report['devices']:,} devices, {report['messages_sent']:,} messages, "
        f"loss check {report['loss_check']}",
        fontsize=12,
    )
    t = [row["t"] for row in ticks]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        points = [(x, row[key]) for x, row in zip(t, ticks, strict=True) if row[key] is not None]
        if points:
            ax_lat.plot([p[0] for p in points], [p[1] for p in points], label=label)
    ax_lat.set_yscale("log")
    ax_lat.yaxis.set_major_formatter(PLAIN)
    ax_lat.set_ylabel("latency (ms, per second)")
    ax_lat.set_title("send (intended time) to delivery, over time")
    _phase_marks(ax_lat, report)
    if ax_lat.get_legend_handles_labels()[0]:
        ax_lat.legend(loc="upper right")
    ax_lat.grid(True, which="both", alpha=0.3)

    ax_rate.plot(t, [row["deliveries_per_s"] for row in ticks], label="deliveries/s")
    ax_rate.plot(t, [row["sent_per_s"] for row in ticks], label="sent/s")
    if any(row.get("pushes_per_s") is not None for row in ticks):
        ax_rate.plot(t, [row.get("pushes_per_s") or 0 for row in ticks], label="pushes/s")
    ax_rate.set_ylabel("per second")
    ax_rate.set_xlabel("seconds since the start of the ramp-up")
    ax_rate.grid(True, alpha=0.3)
    cpu = ax_rate.twinx()
    cpu.plot(t, [row["tester_cpu"] for row in ticks], "--", color="tab:red", label="tester CPU")
    if any(row["server_cpu"] is not None for row in ticks):
        cpu.plot(
            t,
            [row["server_cpu"] or 0 for row in ticks],
            "--",
            color="tab:purple",
            label="server CPU",
        )
    cpu.set_ylabel("cores")
    lines = ax_rate.get_legend_handles_labels()
    more = cpu.get_legend_handles_labels()
    ax_rate.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right")
    _phase_marks(ax_rate, report)

    points = latency.distribution_ms()
    if points:
        ax_dist.plot([_tail(p) for p, _ in points], [v for _, v in points])
        ax_dist.set_xscale("log")
        ax_dist.set_yscale("log")
        ax_dist.yaxis.set_major_formatter(PLAIN)
        ax_dist.xaxis.set_major_locator(FixedLocator([_tail(p) for p in PERCENTILE_TICKS]))
        ax_dist.xaxis.set_major_formatter(
            FuncFormatter(lambda x, _: f"p{100 - 100 / x:g}" if x > 1 else "p0")
        )
        ax_dist.xaxis.set_minor_locator(FixedLocator([]))
    ax_dist.set_title("latency distribution (all deliveries)")
    ax_dist.set_ylabel("latency (ms)")
    ax_dist.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _phase_marks(ax: Any, report: dict[str, Any]) -> None:
    """Dotted lines where the phases (and the storm) began."""
    for name, at in report["timeline_s"].items():
        if at is None or name == "end":
            continue
        ax.axvline(at, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            name,
            (at, 0.02),
            xycoords=("data", "axes fraction"),
            xytext=(2, 0),
            textcoords="offset points",
            fontsize=8,
            color="grey",
        )


def write_html(report: dict[str, Any], path: Path) -> None:
    """A page with the plot and the headline figures (and the full JSON below)."""
    lat = report["latency_ms"]
    figures = [
        ("devices connected", f"{report['connected']} / {report['devices']}"),
        ("messages sent", report["messages_sent"]),
        (
            "deliveries expected / received",
            f"{report['deliveries_expected']} / {report['deliveries_received']}",
        ),
        ("lost", report["lost"]),
        (
            "duplicates (dropped in catch-up)",
            f"{report['duplicates']} ({report['duplicates_dropped']})",
        ),
        ("deliveries/s", report["deliveries_per_s"]),
        (
            "latency p50 / p90 / p99 / p99.9 / max (ms)",
            " / ".join(str(lat[k]) for k in ("p50", "p90", "p99", "p999", "max")),
        ),
        ("handshakes/s", report["handshakes_per_s"]),
        ("errors", ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"),
        ("bottleneck", report["bottleneck"]["verdict"]),
        *push_rows(report.get("push")),
        ("loss check", report["loss_check"]),
    ]
    rows = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in figures
    )
    shown = {k: v for k, v in report.items() if k != "timeseries"}
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>obrol load test report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.3em 1em; border-bottom: 1px solid #ddd; }}
th {{ font-weight: 600; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }}
</style></head><body>
<h1>obrol load test</h1>
<p><code>{html.escape(report["command"])}</code> &mdash; {html.escape(report["started_at"])}</p>
<table>{rows}</table>
<img src="report.png" alt="latency over time and latency distribution" width="1000">
<h2>report.json</h2>
<pre>{html.escape(json.dumps(shown, indent=2))}</pre>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
