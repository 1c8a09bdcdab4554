"""aioble.peripheral for the host shim: advertise on the patch's Bumble device."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from bumble.device import AdvertisingType

from .core import ThreadSafeFlag, ensure_active, keep_cancellation, register_shutdown_handler
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


class _PayloadPair:
    """The advertising data and the scan response being filled, one AD structure at a time.

    Each structure goes into the advertising data if it still fits there, else into the scan
    response. "Fits" is strictly under 31 bytes in total, as upstream aioble counts, so a
    payload built from keywords never uses its 31st byte; tests/vectors/advertising.json
    holds what the firmware's keywords produce."""

    def __init__(self) -> None:
        self.adv = bytearray()
        self.resp = bytearray()

    def add(self, ad_type: int, value: Any) -> None:
        body = _as_bytes(value)
        structure = bytes((len(body) + 1, ad_type)) + body
        for payload in (self.adv, self.resp):
            if len(payload) + len(structure) < _ADV_PAYLOAD_MAX_LEN:
                payload += structure
                return
        raise ValueError("Advertising payload too long")


def _as_bytes(value: Any) -> bytes:
    # MicroPython's bytes + str concatenates the str's UTF-8 (str has the buffer protocol).
    return value.encode() if isinstance(value, str) else bytes(value)


_UUID_AD_TYPES = ((2, _ADV_TYPE_UUID16_COMPLETE), (4, _ADV_TYPE_UUID32_COMPLETE),
                  (16, _ADV_TYPE_UUID128_COMPLETE))


def build_advertising_payloads(
    name: Any = None,
    services: Any = None,
    appearance: int = 0,
    manufacturer: tuple[int, Any] | None = None,
    limited_disc: bool = False,
    br_edr: bool = False,
) -> tuple[bytes, bytes | None]:
    """(adv_data, resp_data) as aioble.advertise() builds them from its keyword arguments:
    Flags, then the service UUIDs (one AD structure per UUID size, UUIDs of a size together),
    Name, Appearance, Manufacturer Data, each overflowing into the scan response in turn."""
    discoverable = 0x01 if limited_disc else 0x02
    classic = 0x18 if br_edr else 0x04           # simultaneous LE + BR/EDR, or BR/EDR unsupported
    payloads = _PayloadPair()
    payloads.add(_ADV_TYPE_FLAGS, bytes((discoverable + classic,)))
    uuids = [bytes(uuid) for uuid in services or ()]
    for size, ad_type in _UUID_AD_TYPES:
        of_size = b"".join(uuid for uuid in uuids if len(uuid) == size)
        if of_size:
            payloads.add(ad_type, of_size)
    if name:
        payloads.add(_ADV_TYPE_NAME, name)
    if appearance:
        payloads.add(_ADV_TYPE_APPEARANCE, struct.pack("<H", appearance))
    if manufacturer:
        company, data = manufacturer
        payloads.add(_ADV_TYPE_MANUFACTURER, struct.pack("<H", company) + _as_bytes(data))
    return bytes(payloads.adv), (bytes(payloads.resp) if payloads.resp else None)


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
    manufacturer: tuple[int, Any] | None = None,
    timeout_ms: int | None = None,
) -> DeviceConnection | None:
    """Advertise until a central connects and return its connection (aioble semantics).

    adv_data/resp_data, when either is given, go out as they are; otherwise they are built
    from the keywords. timeout_ms: TimeoutError after that long (advertising stopped).
    Cancelled: advertising stops and None is returned, as upstream does (it catches the
    CancelledError); on CPython the task's cancellation is also withdrawn (uncancel), since
    MicroPython has no cancellation count.
    """
    patch = ensure_active()
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
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        return None
    except TimeoutError:
        await _stop_advertising(patch)
        raise


async def _stop_advertising(patch: Any) -> None:
    if patch.advertising:
        patch.advertising = False
        await asyncio.shield(patch.device.stop_advertising())


def _peripheral_shutdown(patch: Any) -> None:
    patch.incoming = None


register_shutdown_handler(_peripheral_shutdown)
