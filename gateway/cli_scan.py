"""`dermtwin scan`: nearby patches from their advertisements (gateway.scan)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from gateway.scan import DEFAULT_SCAN_S, format_table, scan_patches, to_json


def add_parser(sub, default_db: Path) -> None:
    scan = sub.add_parser("scan", help="nearby patches: name, RSSI, battery, backlog, paired")
    scan.add_argument("--duration", type=float, default=DEFAULT_SCAN_S,
                      help=f"seconds to listen ({DEFAULT_SCAN_S:g})")
    scan.add_argument("--hci", metavar="TRANSPORT",
                      help="a controller through Bumble (usb:0, serial:/dev/ttyUSB0, "
                           "tcp-client:HOST:PORT) instead of BlueZ")
    scan.add_argument("--db", type=Path,
                      help=f"registry that says which patches are paired ([gateway] db; {default_db})")
    scan.add_argument("--json", action="store_true")


def _paired_names(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    from gateway import store as store_mod

    conn = store_mod.connect(db)
    try:
        return {"DT-" + d.device_id[-4:].upper(): d.subject
                for d in store_mod.Store(conn).devices()}
    finally:
        conn.close()


def run(args: argparse.Namespace) -> int:
    from gateway.ble.availability import open_radio

    if args.duration <= 0:
        raise ValueError(f"--duration {args.duration}: must be positive")
    paired = _paired_names(args.db)

    async def main():
        radio = await open_radio(args.hci)
        try:
            return await scan_patches(radio, args.duration, paired)
        finally:
            if radio.bumble_adapter is not None:
                await radio.bumble_adapter.close()

    sightings = asyncio.run(main())
    print(to_json(sightings) if args.json else format_table(sightings))
    return 0
