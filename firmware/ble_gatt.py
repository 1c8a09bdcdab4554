# The patch's GATT table (docs/protocol.md §3), built per patch at start-up.
import aioble
import bluetooth

import firmware.protocol_ids as ids

FIRMWARE_VERSION = (0, 1, 0)
MANUFACTURER_NAME = b"dermtwin"


def _uuid16(value):
    return bluetooth.UUID(value)


class GattTable:
    def __init__(self, device_id_hex, board_name):
        self.firmware_version = FIRMWARE_VERSION
        dis = aioble.Service(_uuid16(0x180A))
        version = "%d.%d.%d" % FIRMWARE_VERSION
        aioble.Characteristic(dis, _uuid16(0x2A29), read=True, initial=MANUFACTURER_NAME)
        aioble.Characteristic(dis, _uuid16(0x2A24), read=True, initial=board_name.encode())
        aioble.Characteristic(dis, _uuid16(0x2A25), read=True, initial=device_id_hex.encode())
        aioble.Characteristic(dis, _uuid16(0x2A26), read=True, initial=version.encode())

        # Before the first sample: Temperature holds 0x8000, the GSS's "value is not known";
        # UV Index and Battery Level define no such value, so they hold none (a zero-length
        # read) rather than a made-up reading. Each notifies on every new sample (ble_link).
        battery = aioble.Service(_uuid16(0x180F))
        self.battery_level = aioble.Characteristic(
            battery, _uuid16(0x2A19), read=True, notify=True)

        ess = aioble.Service(_uuid16(0x181A))
        self.temperature = aioble.Characteristic(
            ess, _uuid16(0x2A6E), read=True, notify=True, initial=b"\x00\x80")
        self.uv_index = aioble.Characteristic(
            ess, _uuid16(0x2A76), read=True, notify=True)

        stream = aioble.Service(bluetooth.UUID(ids.STREAM_SERVICE_UUID))
        self.samples = aioble.Characteristic(
            stream, bluetooth.UUID(ids.SAMPLES_CHAR_UUID), notify=True)
        # The initial value sizes the write buffer (MicroPython's default of 20 bytes would
        # cut a 21-byte SET_TIME short, and its tag with it).
        self.control_point = aioble.Characteristic(
            stream, bluetooth.UUID(ids.CONTROL_POINT_CHAR_UUID),
            write=True, indicate=True, capture=True, initial=bytes(ids.CP_REQUEST_MAX_BYTES))
        self.status = aioble.Characteristic(
            stream, bluetooth.UUID(ids.STATUS_CHAR_UUID), read=True)

        self.stream_service_uuid = bluetooth.UUID(ids.STREAM_SERVICE_UUID)
        aioble.register_services(dis, battery, ess, stream)
