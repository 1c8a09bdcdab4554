"""The health file: replaced atomically (a reader never sees half a file, no temporary file
is left), refused when it is not ours; `dermtwin status` shows its alarms in 80 columns."""

from __future__ import annotations

import json
import threading

import pytest

from gateway.cli_status import format_status
from gateway.health import SCHEMA, read_health, write_health


def health(n_patches=2, alarms=()):
    return {"schema": SCHEMA, "written_ms": 1_000_000, "pid": 42, "sess": 3,
            "db": "/var/lib/dermtwin/gateway.sqlite3",
            "broker": {"connected": False, "published": 10, "url": "mqtts://broker:8883"},
            "outbox": 1234, "samples_stored": 99,
            "patches": [{"subject": f"s-{i:04d}", "device_id": f"{i:016x}",
                         "name": f"DT-{i:04X}", "connected": i == 0,
                         "link": "streaming" if i == 0 else "waiting", "backlog": 10 * i,
                         "drain": None, "last_sample_ms": 990_000, "battery_pct": 80 + i,
                         "rev": 5, "frames_rejected": 0} for i in range(n_patches)],
            "alarms": list(alarms),
            "disk": {"path": "/var/lib/dermtwin", "free_bytes": 10 * 2**30,
                     "total_bytes": 400 * 2**30}}


def test_readers_never_see_half_a_file(tmp_path):
    path = tmp_path / "gateway.health.json"
    write_health(path, health(1))
    stop = threading.Event()
    seen_bad = []

    def reader():
        while not stop.is_set():
            try:
                read_health(path)
            except (ValueError, json.JSONDecodeError) as error:
                seen_bad.append(error)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(300):
        write_health(path, health(1 + i % 50))
    stop.set()
    thread.join()
    assert seen_bad == []
    assert [p.name for p in tmp_path.iterdir()] == ["gateway.health.json"]


def test_a_file_that_is_not_ours_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a dermtwin health file"):
        read_health(path)


def test_status_text_shows_alarms_broker_and_low_disk_in_80_columns():
    text = format_status(health(3, [{"kind": "model", "source": "uv_dose", "detail": "failed",
                                     "since": 1}, {"kind": "store", "detail": "disk full"}]),
                         now_ms=1_005_000)
    assert max(map(len, text.splitlines())) <= 80
    assert "DISCONNECTED" in text and "outbox 1234" in text and "updated 5 s ago" in text
    assert "ALARM model uv_dose: failed" in text and "ALARM store: disk full" in text
    assert "LOW" in text   # 10 of 400 GiB free
    for i in range(3):
        assert f"s-{i:04d}" in text
