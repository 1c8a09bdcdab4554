"""Which radio bleak drives: BlueZ on a Pi (the default) or a Bumble adapter (virtual link,
or a real HCI dongle through a Bumble transport). Gateway code only sees bleak's API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bleak import BleakClient, BleakScanner


class BleRadio:
    def __init__(self, bumble_adapter: Any = None):
        self.bumble_adapter = bumble_adapter
        # One connection attempt at a time per adapter: controllers (and BlueZ) handle a
        # single pending LE Create Connection; parallel attempts fail in confusing ways.
        self.connect_lock = asyncio.Lock()

    def _backend_kwargs(self, kind: str) -> dict:
        if self.bumble_adapter is None:
            return {}
        from gateway.ble import bumble_backend

        backend = (bumble_backend.BumbleScannerBackend if kind == "scanner"
                   else bumble_backend.BumbleClientBackend)
        return {"backend": backend, "bumble": {"adapter": self.bumble_adapter}}

    async def reset_adapter(self) -> None:
        """The watchdog's last resort. Through Bumble: power-cycle the controller (HCI Reset
        drops its links). BlueZ adapters are reset by bluetoothd, not by us."""
        if self.bumble_adapter is not None:
            await self.bumble_adapter.device.power_on()

    def scanner(self, detection_callback: Callable) -> BleakScanner:
        return BleakScanner(detection_callback=detection_callback,
                            **self._backend_kwargs("scanner"))

    def client(self, device: Any, disconnected_callback: Callable | None = None) -> BleakClient:
        return BleakClient(device, disconnected_callback=disconnected_callback,
                           **self._backend_kwargs("client"))
