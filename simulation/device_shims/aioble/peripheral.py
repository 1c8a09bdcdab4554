"""aioble.peripheral for the host shim: advertise on the patch's Bumble device."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from bumble.device import AdvertisingType

from .core import ThreadSafeFlag, current_patch, keep_cancellation
from .device import DeviceConnection, DeviceTimeout

_ADV_TYPE_FLAGS = 0x01
_ADV_TYPE_NAME = 0x09
_ADV_TYPE_UUID16_COMPLETE = 0x3
_ADV_TYPE_UUID32_COMPLETE = 0x5
_ADV_TYPE_UUID128_COMPLETE = 0x7
_ADV_TYPE_APPEARANCE = 0x19
_ADV_TYPE_MANUFACTURER = 0xFF

_ADV_PAYLOAD_MAX_LEN = 31
_MIN_ADVERTISING_INTERVAL_MS = 20.0  # Core spec Vol 6, Part B, 4.4.2.2.1


def _append(adv_data: bytearray, resp_data: bytearray | None, adv_type: int, value: bytes) -> Any:
    """Add one AD structure to adv_data, overflowing into resp_data (aioble's packing)."""
    data = struct.pack("BB", len(value) + 1, adv_type) + value
    if len(data) + len(adv_data) < _ADV_PAYLOAD_MAX_LEN:
        adv_data += data
        return resp_data
    if len(data) + (len(resp_data) if resp_data else 0) < _ADV_PAYLOAD_MAX_LEN:
        if not resp_data:
            resp_data = bytearray()
        resp_data += data
        return resp_data
    raise ValueError("Advertising payload too long")


def build_advertising_payloads(
    name: Any = None,
    services: Any = None,
    appearance: int = 0,
    manufacturer: tuple[int, bytes] | None = None,
    limited_disc: bool = False,
    br_edr: bool = False,
) -> tuple[bytes, bytes | None]:
    """(adv_data, resp_data) exactly as aioble.advertise() builds them."""
    adv_data = bytearray()
    resp_data: bytearray | None = None
    resp_data = _append(
        adv_data,
        resp_data,
        _ADV_TYPE_FLAGS,
        struct.pack("B", (0x01 if limited_disc else 0x02) + (0x18 if br_edr else 0x04)),
    )
    if services:
        for uuid in services:
            b = bytes(uuid)
            if len(b) == 2:
                resp_data = _append(adv_data, resp_data, _ADV_TYPE_UUID16_COMPLETE, b)
            elif len(b) == 4:
                resp_data = _append(adv_data, resp_data, _ADV_TYPE_UUID32_COMPLETE, b)
            elif len(b) == 16:
                resp_data = _append(adv_data, resp_data, _ADV_TYPE_UUID128_COMPLETE, b)
    if name:
        encoded = name.encode() if isinstance(name, str) else bytes(name)
        resp_data = _append(adv_data, resp_data, _ADV_TYPE_NAME, encoded)
    if appearance:
        resp_data = _append(
            adv_data, resp_data, _ADV_TYPE_APPEARANCE, struct.pack("<H", appearance)
        )
    if manufacturer:
        resp_data = _append(
            adv_data,
            resp_data,
            _ADV_TYPE_MANUFACTURER,
            struct.pack("<H", manufacturer[0]) + bytes(manufacturer[1]),
        )
    return bytes(adv_data), (bytes(resp_data) if resp_data else None)


async def advertise(
    interval_us: int,
    adv_data: Any = None,
    resp_data: Any = None,
    connectable: bool = True,
    limited_disc: bool = False,
    br_edr: bool = False,
    name: Any = None,
    services: Any = None,
    appearance: int = 0,
    manufacturer: tuple[int, bytes] | None = None,
    timeout_ms: int | None = None,
) -> DeviceConnection | None:
    """Advertise until a central connects; return that connection (aioble semantics)."""
    patch = current_patch()
    if not adv_data and not resp_data:
        adv_data, resp_data = build_advertising_payloads(
            name, services, appearance, manufacturer, limited_disc, br_edr
        )
    for label, payload in (("adv_data", adv_data), ("resp_data", resp_data)):
        if payload and len(payload) > _ADV_PAYLOAD_MAX_LEN:
            raise ValueError(f"{label} is {len(payload)} bytes; legacy advertising allows 31")

    # A connection that arrived while nobody was waiting (aioble keeps it too).
    if patch.incoming is not None and patch.incoming.is_connected():
        result, patch.incoming = patch.incoming, None
        return result

    patch.connect_flag = patch.connect_flag or ThreadSafeFlag()
    patch.connect_flag.clear()
    if connectable:
        advertising_type = AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE
    elif resp_data:
        advertising_type = AdvertisingType.UNDIRECTED_SCANNABLE
    else:
        advertising_type = AdvertisingType.UNDIRECTED
    interval_ms = max(_MIN_ADVERTISING_INTERVAL_MS, interval_us / 1000)
    patch.advertising = True
    try:
        await keep_cancellation(
            patch.device.start_advertising(
                advertising_type=advertising_type,
                advertising_data=bytes(adv_data or b""),
                scan_response_data=bytes(resp_data or b""),
                advertising_interval_min=interval_ms,
                advertising_interval_max=interval_ms,
            )
        )
        with DeviceTimeout(None, timeout_ms):
            while patch.incoming is None:
                await patch.connect_flag.wait()
        result, patch.incoming = patch.incoming, None
        return result
    except asyncio.CancelledError:
        await _stop_advertising(patch)
        raise
    except TimeoutError:
        await _stop_advertising(patch)
        raise


async def _stop_advertising(patch: Any) -> None:
    if patch.advertising:
        patch.advertising = False
        await asyncio.shield(patch.device.stop_advertising())
