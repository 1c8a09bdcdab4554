"""`dermtwin status`: what the running gateway is doing, from its health file
(gateway.health), without touching the daemon."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gateway.health import STALE_AFTER_S, health_path_for, read_health

GIB = 1024 ** 3
LOW_DISK_FRACTION = 0.05


class StatusUnavailable(RuntimeError):
    pass


def add_parser(sub, default_db: Path) -> None:
    status = sub.add_parser("status", help="what the running gateway is doing (patches, "
                                           "backlogs, outbox, broker, alarms, disk)")
    status.add_argument("--db", type=Path,
                        help=f"the gateway's database; its health file is next to it "
                             f"({default_db})")
    status.add_argument("--json", action="store_true", help="the health file as it is")


def _age(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "never"
    seconds = max(0, (now_ms - ms) / 1000)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def is_stale(health: dict, now_ms: int) -> bool:
    return (now_ms - health["written_ms"]) / 1000 > STALE_AFTER_S


def format_status(health: dict, now_ms: int) -> str:
    """Plain text, at most 80 columns."""
    broker = health["broker"]
    disk = health["disk"]
    lines = [
        f"gateway pid {health['pid']}, session {health['sess']}, updated "
        f"{_age(health['written_ms'], now_ms)}"
        + ("  STALE: values from then" if is_stale(health, now_ms) else ""),
        f"broker  {broker.get('url') or '?'}  "
        f"{'connected' if broker['connected'] else 'DISCONNECTED'}, "
        f"{broker['published']} published, outbox {health['outbox']}",
        f"disk    {disk['free_bytes'] / GIB:.1f} GiB free of {disk['total_bytes'] / GIB:.1f} GiB"
        f" ({disk['path']})"
        + ("  LOW" if disk["free_bytes"] < LOW_DISK_FRACTION * disk["total_bytes"] else ""),
        "",
        f"{'subject':<16} {'patch':<7} {'link':<12} {'backlog':>8} {'batt':>5}  last sample",
    ]
    for p in health["patches"]:
        batt = "—" if p.get("battery_pct") is None else f"{p['battery_pct']:.0f}%"
        lines.append(f"{p['subject'][:16]:<16} {p['name']:<7} {p['link'][:12]:<12} "
                     f"{p['backlog']:>8} {batt:>5}  {_age(p.get('last_sample_ms'), now_ms)}")
    if not health["patches"]:
        lines.append("(no paired patches)")
    lines.append("")
    if health["alarms"]:
        for alarm in health["alarms"]:
            where = alarm["kind"] + (f" {alarm['source']}" if alarm.get("source") else "")
            lines.append(f"ALARM {where}: {alarm['detail']}")
    else:
        lines.append("no alarms")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    path = health_path_for(args.db)
    try:
        health = read_health(path)
    except FileNotFoundError:
        raise StatusUnavailable(
            f"no health file at {path}: the gateway has not run with --db {args.db} (start it: "
            "`sudo systemctl start dermtwin`, or `dermtwin run`)") from None
    except (ValueError, OSError) as error:
        raise StatusUnavailable(f"cannot read {path}: {error}") from None
    now_ms = int(time.time() * 1000)
    if args.json:
        print(json.dumps(health, indent=2, sort_keys=True))
    else:
        print(format_status(health, now_ms))
    age_s = (now_ms - health["written_ms"]) / 1000
    if is_stale(health, now_ms):
        raise StatusUnavailable(
            f"the health file is {age_s:.0f} s old: the gateway is not running or is stuck "
            "(`systemctl status dermtwin`, `journalctl -u dermtwin`)")
    return 0
