"""The daemon's health file, read by `dermtwin status`: one JSON document next to the
database (`gateway.sqlite3` -> `gateway.health.json`), replaced atomically every few seconds
(written to a temporary file in the same directory, fsynced, renamed over the old one), so
a reader never sees half a file.

    {"written_ms": ..., "pid": ..., "sess": ..., "broker": {"connected": bool, ...},
     "outbox": n, "patches": [{"subject", "name", "link", "backlog", ...}],
     "alarms": [{"kind", "detail"}], "disk": {"free_bytes", "total_bytes", "path"}}

The writer also pings systemd's watchdog when the daemon runs under it (gateway.sd_notify).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import sd_notify
from gateway.clock import now_ms

log = logging.getLogger(__name__)

HEALTH_SUFFIX = ".health.json"
WRITE_EVERY_S = 5.0
# A file older than this says the daemon is not running (or is stuck).
STALE_AFTER_S = 3 * WRITE_EVERY_S
SCHEMA = 1


def health_path_for(db_path: Path) -> Path:
    return Path(db_path).with_suffix(HEALTH_SUFFIX)


def write_health(path: Path, snapshot: dict) -> None:
    """Replace `path` with `snapshot` as JSON, atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(snapshot, file, indent=1, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_health(path: Path) -> dict:
    """The last snapshot; FileNotFoundError if the daemon never wrote one, ValueError if the
    file is not a health snapshot."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a dermtwin health file (schema {SCHEMA})")
    return data


def _last_sample_ms(state: dict) -> int | None:
    times = [leaf["t"] for leaf in state.values()
             if isinstance(leaf, dict) and isinstance(leaf.get("t"), (int, float))]
    return int(max(times)) if times else None


def _alarms(gateway: Any) -> list[dict]:
    """The gateway's active alarms as {"kind", "detail"[, "source", "since"]}: from its alarm
    registry (gateway.alarms.Alarms.payload()) where it has one, else from what it reports
    itself (the store alarm, the BLE watchdog)."""
    registry = getattr(gateway, "alarms", None)
    if registry is not None and hasattr(registry, "payload"):
        alarms = [dict(a) for a in registry.payload()]
    else:
        alarms = []
        stats = gateway.ingest.stats
        if stats.store_alarm:
            alarms.append({"kind": "store", "detail": f"{stats.commit_failures} failed "
                                                      f"commits, not acknowledging: "
                                                      f"{stats.last_error}"})
    if getattr(gateway, "watchdog_escalations", 0) and not any(
            a["kind"] == "ble" for a in alarms):
        alarms.append({"kind": "ble", "detail": "no advertisement from unconnected patches "
                                                f"(watchdog escalation "
                                                f"{gateway.watchdog_escalations})"})
    return alarms


def snapshot(gateway: Any, *, now_s: Callable[[], float] = time.monotonic) -> dict:
    """What `dermtwin status` shows, from a running gateway.service.Gateway."""
    patches = []
    now = now_s()
    for device_id, slot in gateway.slots.items():
        dev = gateway.devices[device_id]
        twin = gateway.engine.twins.get(dev.subject)
        session = slot.link.session
        connected = slot.connected_since_s is not None
        drain = slot.link.drain
        patches.append({
            "subject": dev.subject,
            "device_id": device_id,
            "name": "DT-" + device_id[-4:].upper(),
            "connected": connected,
            "link": session.state.value if (session and connected) else "waiting",
            "backlog": (drain.total - drain.done) if drain else 0,
            "drain": drain.describe(now) if drain else None,
            "last_sample_ms": _last_sample_ms(twin.state) if twin else None,
            "battery_pct": ((twin.state.get("battery_pct") or {}).get("v") if twin else None),
            "rev": twin.rev if twin else 0,
            "frames_rejected": slot.link.frames_rejected_total,
        })
    disk = shutil.disk_usage(Path(gateway.config.db_path).resolve().parent)
    publisher = gateway.publisher
    return {
        "schema": SCHEMA,
        "written_ms": now_ms(),
        "pid": os.getpid(),
        "sess": gateway.sess,
        "db": str(gateway.config.db_path),
        "broker": {"connected": bool(publisher.connected), "published": publisher.published,
                   "url": gateway.config.mqtt.url},   # no credentials in it
        "outbox": publisher.pending,
        "samples_stored": gateway.ingest.stats.samples_committed,
        "patches": patches,
        "alarms": _alarms(gateway),
        "disk": {"path": str(Path(gateway.config.db_path).resolve().parent),
                 "free_bytes": disk.free, "total_bytes": disk.total},
    }


async def run_health_writer(gateway: Any, path: Path | None = None,
                            every_s: float = WRITE_EVERY_S) -> None:
    """Write the health file every `every_s`; tell systemd READY=1 after the first one and
    WATCHDOG=1 after each (a stuck event loop stops the pings, and systemd restarts us)."""
    path = Path(path) if path is not None else health_path_for(gateway.config.db_path)
    ready = False
    failing = False
    while True:
        try:
            write_health(path, snapshot(gateway))
            if failing:
                log.warning("health file %s is written again", path)
                failing = False
        except OSError as error:
            if not failing:   # logged once per outage, not every few seconds
                log.error("cannot write the health file %s: %s (dermtwin status will call "
                          "the gateway stale)", path, error)
                failing = True
        if not ready:
            sd_notify.notify("READY=1")
            ready = True
        sd_notify.notify("WATCHDOG=1")
        await asyncio.sleep(every_s)
