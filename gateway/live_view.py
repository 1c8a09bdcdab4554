"""Live terminal view of every twin: a rich table on a terminal, plain lines otherwise."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

REFRESH_S = 0.5
PLAIN_EVERY_S = 5.0


def _fmt(leaf: dict | None, digits: int = 2) -> str:
    if not leaf:
        return "—"
    v = leaf["v"]
    text = ("yes" if v else "no") if isinstance(v, bool) else f"{v:.{digits}f}"
    return text if leaf.get("q") == "good" else text + "?"


def _percent(leaf: dict | None) -> dict | None:
    return None if leaf is None else {**leaf, "v": leaf["v"] * 100}


def _hydration(state: dict) -> str:
    au, label = state.get("hydration_au"), state.get("hydration_state")
    return "—" if au is None else f"{au['v']:.0f} {label['v'] if label else ''}".strip()


def twin_table(gateway, footer: str) -> Table:
    table = Table(title="dermtwin — live twins", caption=footer, expand=False)
    for name in ("subject", "patch", "link", "skin °C", "Δ °C", "score", "inflam.", "UVI",
                 "MED %", "to MED min", "hydration", "batt %", "rev", "stored", "backlog",
                 "bad frames"):
        table.add_column(name, justify="right" if name not in ("subject", "patch", "link")
                         else "left")
    for device_id, slot in gateway.slots.items():
        dev = gateway.devices[device_id]
        twin = gateway.engine.twins.get(dev.subject)
        state = twin.state if twin else {}
        session = slot.link.session
        link = session.state.value if session else "waiting"
        table.add_row(
            dev.subject, device_id[-4:].upper(), link,
            _fmt(state.get("skin_temp_c")), _fmt(state.get("temp_delta_c")),
            _fmt(state.get("temp_anomaly_score")), _fmt(state.get("inflammation")),
            _fmt(state.get("uv_index"), 1), _fmt(_percent(state.get("uv_med_fraction")), 0),
            _fmt(state.get("minutes_to_med"), 0), _hydration(state),
            _fmt(state.get("battery_pct"), 0), str(twin.rev if twin else 0),
            str(session.stats.samples_new if session else 0),
            slot.link.drain.describe(time.monotonic()) if slot.link.drain else "—",
            str(slot.link.frames_rejected_total))
    return table


def _footer(gateway, extra: Callable[[], str] | None) -> str:
    pub = gateway.publisher
    stats = gateway.ingest.stats
    text = (f"MQTT {'connected' if pub.connected else 'DISCONNECTED'} · published {pub.published}"
            f" · outbox {pub.pending} · stored {stats.samples_committed}  (? = warming up)")
    if stats.gaps:
        text += f" · {stats.gaps} gaps reported (samples a patch did not log)"
    if stats.store_alarm:
        text = f"STORE ALARM ({stats.commit_failures} failed commits, not acknowledging): " \
               f"{stats.last_error} · " + text
    return text + (" · " + extra() if extra else "")


async def run_live_view(gateway, extra: Callable[[], str] | None = None,
                        console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:
        while True:
            await asyncio.sleep(PLAIN_EVERY_S)
            revs = {s: t.rev for s, t in gateway.engine.twins.items()}
            print(f"[live] {_footer(gateway, extra)} · revs {revs}", file=sys.stdout, flush=True)
    with Live(twin_table(gateway, _footer(gateway, extra)), console=console,
              refresh_per_second=1 / REFRESH_S, transient=False) as live:
        while True:
            await asyncio.sleep(REFRESH_S)
            live.update(twin_table(gateway, _footer(gateway, extra)))
