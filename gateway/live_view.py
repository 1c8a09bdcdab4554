"""Live terminal view of every twin, on a terminal (plain lines otherwise): a card per
subject when the terminal is narrow (80 columns shows two cards a row, every value
visible), the full table from WIDE_MIN_COLUMNS on, or with wide=True."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

REFRESH_S = 0.5
PLAIN_EVERY_S = 5.0
WIDE_MIN_COLUMNS = 160   # the full table needs about 158 columns
CARD_WIDTH = 39          # two cards side by side in 80 columns


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


DRAIN_BAR_CELLS = 6


def _compact_drain(drain) -> str:
    """'━━──── 1200/3000 ETA 4s': a bar, the counts and the time left of a backlog drain."""
    if drain is None:
        return "—"
    eta = drain.eta_s(time.monotonic())
    filled = round(DRAIN_BAR_CELLS * drain.done / drain.total) if drain.total else DRAIN_BAR_CELLS
    bar = "━" * filled + "─" * (DRAIN_BAR_CELLS - filled)
    return f"{bar} {drain.done}/{drain.total}" + (f" ETA {_short_s(eta)}" if eta is not None
                                                  else "")


def _short_s(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def twin_card(gateway, device_id: str, slot) -> Panel:
    """One subject's twin in CARD_WIDTH columns: the values of the wide table's row."""
    dev = gateway.devices[device_id]
    twin = gateway.engine.twins.get(dev.subject)
    state = twin.state if twin else {}
    session = slot.link.session
    delta = state.get("temp_delta_c")
    lines = [
        f"link    {session.state.value if session else 'waiting'}",
        f"skin    {_fmt(state.get('skin_temp_c'))} °C  Δ {_fmt(delta)}",
        f"anomaly {_fmt(state.get('temp_anomaly_score'))}  inflam. "
        f"{_fmt(state.get('inflammation'))}",
        f"UVI     {_fmt(state.get('uv_index'), 1)}  MED "
        f"{_fmt(_percent(state.get('uv_med_fraction')), 0)}%  "
        f"{_fmt(state.get('minutes_to_med'), 0)} min",
        f"hydr.   {_hydration(state)}",
        f"battery {_fmt(state.get('battery_pct'), 0)}%  rev {twin.rev if twin else 0}",
        f"stored  {session.stats.samples_new if session else 0}",
        f"backlog {_compact_drain(slot.link.drain)}",
    ]
    if slot.link.frames_rejected_total:
        lines.append(f"bad frames {slot.link.frames_rejected_total}")
    return Panel(Text("\n".join(lines), no_wrap=True, overflow="ellipsis"),
                 title=f"{dev.subject} · {device_id[-4:].upper()}", title_align="left",
                 width=CARD_WIDTH)


def twin_cards(gateway, footer: str) -> Group:
    cards = [twin_card(gateway, did, slot) for did, slot in gateway.slots.items()]
    return Group(Text("dermtwin — live twins", style="bold"), Columns(cards),
                 Text(footer, style="dim"))


def twin_view(gateway, footer: str, width: int, wide: bool | None = None) -> RenderableType:
    """The table when wide (default: when the console has WIDE_MIN_COLUMNS), else cards."""
    if wide if wide is not None else width >= WIDE_MIN_COLUMNS:
        return twin_table(gateway, footer)
    return twin_cards(gateway, footer)


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
                        console: Console | None = None, wide: bool | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:
        while True:
            await asyncio.sleep(PLAIN_EVERY_S)
            revs = {s: t.rev for s, t in gateway.engine.twins.items()}
            print(f"[live] {_footer(gateway, extra)} · revs {revs}", file=sys.stdout, flush=True)
    def view() -> RenderableType:
        return twin_view(gateway, _footer(gateway, extra), console.width, wide)

    with Live(view(), console=console, refresh_per_second=1 / REFRESH_S,
              transient=False) as live:
        while True:
            await asyncio.sleep(REFRESH_S)
            live.update(view())
