"""Opening the radio for `run` and `scan`, with every way it can be missing explained in
one line that says what to do (never a traceback): no BlueZ, bluetoothd not running, no
adapter, adapter off, permission denied, no USB dongle, a serial or TCP transport that is
not there.

    radio = await open_radio(args.hci)      # RadioUnavailable(message) if it cannot be used
"""

from __future__ import annotations

import logging
from typing import Any

from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason, BleakError

from gateway.ble.radio import BleRadio

log = logging.getLogger(__name__)

OPERATOR_DOC = "docs/operator.md"
_BLUEZ_FIX = ("install and start BlueZ (`sudo apt install bluez && sudo systemctl enable --now "
              "bluetooth`), or use a USB Bluetooth dongle with --hci usb:0")


class RadioUnavailable(RuntimeError):
    """The radio cannot be used; the message says why and what to do, in one line."""


def explain_bluez_error(error: BaseException) -> str:
    """One line for a failure to use BlueZ through bleak (D-Bus, bluetoothd, adapter)."""
    text = str(error) or type(error).__name__
    if isinstance(error, BleakBluetoothNotAvailableError):
        reason = error.reason
        if reason is BleakBluetoothNotAvailableReason.POWERED_OFF:
            return ("the Bluetooth adapter is off: `sudo rfkill unblock bluetooth` and "
                    "`bluetoothctl power on`")
        if reason in (BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM,
                      BleakBluetoothNotAvailableReason.DENIED_BY_USER,
                      BleakBluetoothNotAvailableReason.DENIED_BY_UNKNOWN):
            return (f"BlueZ refused this user ({error.args[0]}): add it to the `bluetooth` "
                    f"group and log in again (see {OPERATOR_DOC}, 'Bluetooth permissions')")
        return (f"no usable Bluetooth adapter ({error.args[0]}): check `bluetoothctl list` and "
                "`rfkill list`; on a Pi without one, use a USB dongle with --hci usb:0")
    if isinstance(error, (FileNotFoundError, ConnectionRefusedError)):
        return f"BlueZ is not reachable (no D-Bus system bus: {text}): {_BLUEZ_FIX}"
    lowered = text.lower()
    if "org.bluez" in lowered and ("serviceunknown" in lowered or "not provided" in lowered):
        return ("bluetoothd is not running: `sudo systemctl enable --now bluetooth` "
                "(package bluez)")
    if "notauthorized" in lowered or "accessdenied" in lowered or "not authorized" in lowered:
        return (f"BlueZ refused this user ({text}): add it to the `bluetooth` group and log in "
                f"again (see {OPERATOR_DOC}, 'Bluetooth permissions')")
    if "notready" in lowered or "not ready" in lowered:
        return "the Bluetooth adapter is not ready (off?): `bluetoothctl power on`"
    return f"Bluetooth through BlueZ failed: {text}: {_BLUEZ_FIX}"


def explain_hci_error(spec: str, error: BaseException) -> str:
    """One line for a Bumble HCI transport that cannot be opened or does not answer."""
    cause = error.__cause__ or error
    text = str(cause) or type(cause).__name__
    kind = spec.split(":", 1)[0]
    if kind == "usb":
        return (f"no usable USB Bluetooth dongle at --hci {spec} ({text}): plug one in, check "
                "`lsusb`, make sure BlueZ does not hold it (`sudo hciconfig hci0 down` or "
                f"unbind btusb) and that this user may open it (see {OPERATOR_DOC}, "
                "'USB dongle'); or leave out --hci to use BlueZ")
    if kind == "serial":
        return (f"cannot use the HCI UART at --hci {spec} ({text}): check the device path and "
                f"that this user is in the `dialout` group (see {OPERATOR_DOC})")
    if kind.startswith("tcp-client"):
        return (f"nothing answers at --hci {spec} ({text}): start the simulator first "
                "(`dermtwin simulate` prints the address) or check host and port")
    return (f"cannot open HCI transport --hci {spec} ({text}): see Bumble's transport names "
            "(usb:0, serial:/dev/ttyUSB0, tcp-client:HOST:PORT)")


async def open_radio(hci: str | None) -> BleRadio:
    """The radio for the gateway: BlueZ through bleak, or a Bumble HCI transport.

    Checked by starting and stopping a scan, so a missing stack fails here with a
    RadioUnavailable, not later inside the gateway."""
    adapter: Any = None
    if hci:
        try:
            from gateway.ble.bumble_backend import BumbleAdapter
        except ImportError as error:
            raise RadioUnavailable(
                f"--hci {hci} needs Bumble, which is not installed ({error}): "
                "pip install 'dermtwin[hci]'") from error

        try:
            adapter = await BumbleAdapter.open(hci)
        except (BleakError, OSError) as error:
            log.debug("opening %s failed", hci, exc_info=True)
            raise RadioUnavailable(explain_hci_error(hci, error)) from error
        return BleRadio(adapter)
    radio = BleRadio(None)
    try:
        scanner = radio.scanner(lambda _device, _adv: None)
        await scanner.start()
        await scanner.stop()
    except (BleakError, OSError) as error:
        log.debug("BlueZ check failed", exc_info=True)
        raise RadioUnavailable(explain_bluez_error(error)) from error
    return radio
