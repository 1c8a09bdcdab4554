"""`dermtwin scan`: the patches in range, from their advertisements alone (no connection).

A patch is recognised by its manufacturer data (company id 0xFFFF, docs/protocol.md §2),
its `DT-XXXX` name or the Stream Service UUID. The manufacturer data is read from whichever
part of the advertisement carries it (primary advertisement or scan response): bleak and
our Bumble backend merge both into one AdvertisementData.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gateway.protocol import decode_manufacturer_data
from gateway.protocol.control import ControlError

COMPANY_ID = 0xFFFF
STREAM_SERVICE_UUID = "d7000001-5345-4c50-834d-247ec90e2b93"
NAME_PREFIX = "DT-"
DEFAULT_SCAN_S = 5.0


@dataclass(frozen=True)
class PatchSighting:
    name: str
    address: str
    rssi: int | None
    battery_pct: int | None
    backlog: int | None  # unacknowledged samples the patch holds (saturates at 65535)
    firmware: str | None
    provisioned: bool | None
    log_full: bool | None
    subject: str | None  # paired with this subject in the registry; None: not paired

    @property
    def paired(self) -> bool:
        return self.subject is not None


def sighting_from_advertisement(address: str, adv: Any,
                                paired: Mapping[str, str]) -> PatchSighting | None:
    """A PatchSighting from bleak's AdvertisementData, or None if it is not a patch.

    `paired` maps advertised names (DT-XXXX) to subjects."""
    name = adv.local_name or ""
    data = (adv.manufacturer_data or {}).get(COMPANY_ID)
    info = None
    if data is not None:
        try:
            info = decode_manufacturer_data(data)
        except ControlError:
            info = None   # another product using the testing company id
    is_patch = (info is not None or name.startswith(NAME_PREFIX)
                or STREAM_SERVICE_UUID in (adv.service_uuids or []))
    if not is_patch:
        return None
    return PatchSighting(
        name=name or "?", address=address, rssi=adv.rssi,
        # 255: the patch's gauge has not measured yet (docs/protocol.md §2)
        battery_pct=info.battery_pct if info and info.battery_pct <= 100 else None,
        backlog=info.unacked_samples if info else None,
        firmware=".".join(map(str, info.fw_version)) if info else None,
        provisioned=info.provisioned if info else None,
        log_full=info.log_full if info else None,
        subject=paired.get(name))


async def scan_patches(radio: Any, duration_s: float = DEFAULT_SCAN_S,
                       paired: Mapping[str, str] | None = None) -> list[PatchSighting]:
    """Listen for `duration_s` on the radio (gateway.ble.radio.BleRadio); the latest
    sighting per address, strongest first."""
    seen: dict[str, PatchSighting] = {}
    names = dict(paired or {})

    def on_advertisement(device: Any, adv: Any) -> None:
        sighting = sighting_from_advertisement(device.address, adv, names)
        if sighting is not None:
            earlier = seen.get(device.address)
            if earlier is not None and sighting.battery_pct is None:
                return   # keep the sighting that had the manufacturer data
            seen[device.address] = sighting

    scanner = radio.scanner(on_advertisement)
    await scanner.start()
    try:
        await asyncio.sleep(duration_s)
    finally:
        await scanner.stop()
    return sorted(seen.values(), key=lambda s: (-(s.rssi if s.rssi is not None else -999),
                                                s.name))


def _cell(value: Any, suffix: str = "") -> str:
    return "—" if value is None else f"{value}{suffix}"


def format_table(sightings: list[PatchSighting]) -> str:
    """Plain text, at most 80 columns wide."""
    if not sightings:
        return "no patches heard"
    header = f"{'name':<9} {'address':<17} {'RSSI':>5} {'batt':>5} {'backlog':>7} " \
             f"{'fw':>7}  paired"
    lines = [header]
    for s in sightings:
        flags = "" if s.provisioned in (None, True) else " (not provisioned)"
        if s.log_full:
            flags += " (log full)"
        lines.append(
            f"{s.name:<9} {s.address:<17} {_cell(s.rssi):>5} {_cell(s.battery_pct, '%'):>5} "
            f"{_cell(s.backlog):>7} {_cell(s.firmware):>7}  "
            f"{s.subject if s.subject else 'no'}{flags}")
    return "\n".join(lines)


def to_json(sightings: list[PatchSighting]) -> str:
    return json.dumps([{**asdict(s), "paired": s.paired} for s in sightings], indent=2)
