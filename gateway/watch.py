"""`dermtwin watch`: a live table of every subject's twin, as any subscriber sees it over MQTT
(gateway.subscriber: retained twin + deltas, holes repaired with `cmd resync`). It needs
only the broker, not the gateway's database: run it on any machine that can subscribe."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from gateway.subscriber import Subscriber, Twin

REFRESH_S = 0.5
COLUMNS = (("subject", None, 0), ("rev", None, 0), ("skin °C", "skin_temp_c", 2),
           ("Δ °C", "temp_delta_c", 2), ("UVI", "uv_index", 1),
           ("MED %", "uv_med_fraction", 0), ("to MED min", "minutes_to_med", 0),
           ("hydration", "hydration_au", 0), ("batt %", "battery_pct", 0), ("age s", None, 0))


def add_parser(sub: argparse._SubParsersAction) -> None:
    watch = sub.add_parser("watch", help="live table of every twin, read from the MQTT broker")
    watch.add_argument("--broker", metavar="URL", required=True, help="mqtt://… or mqtts://…")
    watch.add_argument("--gateway-id", required=True, help="the gateway id in the topics")
    watch.add_argument("--username")
    watch.add_argument("--password-env", metavar="VAR",
                       help="read the MQTT password from this environment variable")
    watch.add_argument("--ca-file")
    watch.add_argument("--duration", type=float, metavar="S",
                       help="exit after S seconds (default: until Ctrl-C)")


def _cell(twin: Twin, prop: str | None, digits: int, now_ms: int, title: str) -> str:
    if prop is None:
        if title == "subject":
            return twin.subject
        if title == "rev":
            return str(twin.rev)
        return f"{max(0, now_ms - twin.ts) / 1000:.0f}"
    leaf = twin.state.get(prop)
    if leaf is None:
        return "—"
    value = leaf["v"] * (100 if prop == "uv_med_fraction" else 1)
    text = f"{value:.{digits}f}"
    if prop == "hydration_au" and "hydration_state" in twin.state:
        text += f" {twin.state['hydration_state']['v']}"
    return text if leaf.get("q") == "good" else text + "?"


def table(twins: dict[str, Twin], caption: str) -> Table:
    out = Table(title="dermtwin — twins over MQTT", caption=caption)
    for title, _, _ in COLUMNS:
        out.add_column(title, justify="left" if title == "subject" else "right")
    now_ms = int(time.time() * 1000)
    for subject in sorted(twins):
        out.add_row(*(_cell(twins[subject], prop, digits, now_ms, title)
                      for title, prop, digits in COLUMNS))
    return out


async def watch(subscriber: Subscriber, duration_s: float | None,
                console: Console | None = None) -> dict[str, Twin]:
    console = console or Console()
    if not console.is_terminal:
        console = Console(width=160)   # a pipe: one wide table, not wrapped at 80 columns
    twins: dict[str, Twin] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if duration_s is not None:
        loop.call_later(duration_s, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)

    def caption() -> str:
        return (f"{subscriber.config.url} · {subscriber.root} · {len(twins)} subjects · "
                f"{subscriber.follower.duplicates} duplicates dropped · "
                f"{subscriber.resyncs_sent} resyncs  (? = warming up)")

    async def follow() -> None:
        async for twin in subscriber.twins():
            twins[twin.subject] = twin

    task = asyncio.create_task(follow())
    try:
        if console.is_terminal:
            with Live(table(twins, caption()), console=console,
                      refresh_per_second=1 / REFRESH_S) as live:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), REFRESH_S)
                    live.update(table(twins, caption()))
        else:
            await stop.wait()
            console.print(table(twins, caption()))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return twins


def cmd_watch(args: argparse.Namespace) -> int:
    import os

    password = None
    if args.password_env:
        if args.password_env not in os.environ:
            raise ValueError(f"--password-env {args.password_env}: not set")
        password = os.environ[args.password_env]

    async def main() -> None:
        async with Subscriber(args.broker, gateway_id=args.gateway_id, username=args.username,
                              password=password, ca_file=args.ca_file) as subscriber:
            await watch(subscriber, args.duration)

    asyncio.run(main())
    return 0
