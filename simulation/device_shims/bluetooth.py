"""MicroPython's `bluetooth` module, the parts firmware touches, for CPython hosts.

Only `UUID` and the constants are provided: the `BLE` object itself is replaced
by the `aioble` shim next to this file, which drives a Bumble device instead.
"""

from __future__ import annotations

import uuid as _uuid

# Characteristic/descriptor flags (same values as the GATT property bits).
FLAG_BROADCAST = 0x0001
FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020
FLAG_AUTHENTICATED_SIGNED_WRITE = 0x0040
FLAG_AUX_WRITE = 0x0100
FLAG_READ_ENCRYPTED = 0x0200
FLAG_READ_AUTHENTICATED = 0x0400
FLAG_READ_AUTHORIZED = 0x0800
FLAG_WRITE_ENCRYPTED = 0x1000
FLAG_WRITE_AUTHENTICATED = 0x2000
FLAG_WRITE_AUTHORIZED = 0x4000

ADDR_PUBLIC = 0
ADDR_RANDOM = 1


class UUID:
    """A 16-, 32- or 128-bit Bluetooth UUID, as `bluetooth.UUID` on MicroPython.

    `UUID(0x180F)`, `UUID("d7000001-5345-4c50-834d-247ec90e2b93")`, or the
    little-endian bytes. `bytes(uuid)` gives the little-endian form used on the air.
    """

    __slots__ = ("_le_bytes",)

    def __init__(self, value: int | str | bytes | bytearray | memoryview | UUID) -> None:
        if isinstance(value, UUID):
            self._le_bytes: bytes = value._le_bytes
        elif isinstance(value, int):
            if not 0 <= value <= 0xFFFFFFFF:
                raise ValueError(f"UUID integer out of range: {value:#x}")
            self._le_bytes = value.to_bytes(2 if value <= 0xFFFF else 4, "little")
        elif isinstance(value, str):
            digits = value.replace("-", "")
            if digits.lower().startswith("0x"):
                digits = digits[2:]
            try:
                raw = bytes.fromhex(digits)
            except ValueError:
                raise ValueError(f"invalid UUID string: {value!r}") from None
            if len(raw) not in (2, 4, 16):
                raise ValueError(f"invalid UUID string length: {value!r}")
            self._le_bytes = raw[::-1]
        elif isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if len(raw) not in (2, 4, 16):
                raise ValueError(f"UUID bytes must be 2, 4 or 16 long, got {len(raw)}")
            self._le_bytes = raw
        else:
            raise TypeError(f"cannot make a UUID from {type(value).__name__}")

    def __bytes__(self) -> bytes:
        return self._le_bytes

    def __len__(self) -> int:
        return len(self._le_bytes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UUID) and other._le_bytes == self._le_bytes

    def __hash__(self) -> int:
        return hash(self._le_bytes)

    def __str__(self) -> str:
        if len(self._le_bytes) == 16:
            return f"UUID('{_uuid.UUID(bytes=self._le_bytes[::-1])}')"
        return f"UUID(0x{int.from_bytes(self._le_bytes, 'little'):0{2 * len(self._le_bytes)}x})"

    __repr__ = __str__


class BLE:
    """Not provided on the host: firmware goes through `aioble`, which is shimmed."""

    def __init__(self) -> None:
        raise NotImplementedError(
            "bluetooth.BLE is not available on the host; use aioble (shimmed over Bumble)"
        )
