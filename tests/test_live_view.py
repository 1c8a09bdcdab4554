"""The live view on an 80-column terminal shows every subject's key values (a card per
subject); the wide table is kept for wide terminals."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

from rich.console import Console

from gateway.live_view import WIDE_MIN_COLUMNS, _footer, twin_view
from gateway.progress import DrainProgress


def leaf(v, q="good"):
    return {"v": v, "t": 1_700_000_000_000, "q": q}


def stand_in_gateway(n: int):
    """The attributes the view reads, shaped as gateway.service.Gateway has them."""
    devices, slots, twins = {}, {}, {}
    for i in range(n):
        device_id = f"00000000000{i:05x}"
        subject = f"s-subject-{i:03d}"
        devices[device_id] = SimpleNamespace(subject=subject)
        twins[subject] = SimpleNamespace(rev=100 + i, state={
            "skin_temp_c": leaf(33.11 + i), "temp_delta_c": leaf(0.42),
            "temp_anomaly_score": leaf(0.17), "inflammation": leaf(False),
            "uv_index": leaf(3.2 + i), "uv_med_fraction": leaf(0.4),
            "minutes_to_med": leaf(95.0), "hydration_au": leaf(47.0 + i),
            "hydration_state": leaf("normal"), "battery_pct": leaf(81.0 + i, "warming")})
        session = SimpleNamespace(state=SimpleNamespace(value="streaming"),
                                  stats=SimpleNamespace(samples_new=1234 + i))
        drain = (DrainProgress(0, 30000, time.monotonic() - 10, done_seq=12000) if i == 0
                 else None)   # 1,200 samples/s: 15 s left
        slots[device_id] = SimpleNamespace(link=SimpleNamespace(
            session=session, drain=drain, frames_rejected_total=0))
    return SimpleNamespace(
        devices=devices, slots=slots, engine=SimpleNamespace(twins=twins),
        publisher=SimpleNamespace(connected=True, published=4321, pending=7),
        ingest=SimpleNamespace(stats=SimpleNamespace(samples_committed=9999, gaps=0,
                                                     store_alarm=False)))


def render(gateway, width: int, wide=None) -> str:
    console = Console(width=width, file=io.StringIO(), force_terminal=False,
                      color_system=None)
    console.print(twin_view(gateway, _footer(gateway, None), console.width, wide))
    return console.file.getvalue()


def test_80_columns_shows_every_subjects_key_values():
    gateway = stand_in_gateway(5)
    text = render(gateway, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    for i in range(5):
        assert f"s-subject-{i:03d}" in text
        for value in (f"{33.11 + i:.2f} °C", "Δ 0.42", f"UVI     {3.2 + i:.1f}", "MED 40%",
                      "95 min", f"{47 + i} normal", f"battery {81 + i}?%", f"rev {100 + i}",
                      f"stored  {1234 + i}", "streaming"):
            assert value in text, (i, value, text)
    assert "backlog ━━──── 12000/30000 ETA 15s" in text   # 40 % of the drain done
    assert "outbox 7" in text and "MQTT connected" in text


def test_wide_mode_is_the_full_table():
    gateway = stand_in_gateway(2)
    text = render(gateway, 200, wide=True)
    header = next(line for line in text.splitlines() if "subject" in line)
    for column in ("skin °C", "Δ °C", "inflam.", "to MED min", "bad frames"):
        assert column in header
    assert "33.11" in text and "s-subject-001" in text
    assert render(gateway, WIDE_MIN_COLUMNS).count("to MED min") == 1   # automatic when wide
    assert "to MED min" not in render(gateway, 80)
