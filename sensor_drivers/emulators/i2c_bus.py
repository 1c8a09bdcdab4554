"""A virtual I2C bus with the machine.I2C methods our drivers use, plus fault injection.

Emulated chips attach by address. Time comes from an injectable clock (a
callable returning ms) so conversions complete deterministically in tests:

    clock = ManualClock()
    bus = VirtualI2C(clock)
    bus.attach(TMP117Emulator(lambda: 33.5))
    clock.advance(125)

Faults, as MicroPython ports report them: a missing chip or a NACK raises
OSError(ENODEV); a stuck bus (SDA held low) waits the bus timeout, then raises
OSError(ETIMEDOUT). Nothing ever blocks longer than `timeout_ms`.

Runs on CPython and MicroPython.
"""

import errno
import time

# micropython.const, or the same on CPython; the chip emulators import it from here.
try:
    from micropython import const
except ImportError:

    def const(value):  # type: ignore[misc]  # same behaviour as micropython.const
        return value


DEFAULT_TIMEOUT_MS = 50  # machine.SoftI2C's default timeout is 50 000 us


def _real_clock_ms():
    ticks_ms = getattr(time, "ticks_ms", None)
    if ticks_ms is not None:
        return ticks_ms()
    return int(time.monotonic() * 1000)  # type: ignore[attr-defined]  # CPython


def _real_sleep_ms(ms):
    sleep_ms = getattr(time, "sleep_ms", None)
    if sleep_ms is not None:
        sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


class ManualClock:
    """A clock that moves only when told to: call it for ms, advance() to move it."""

    def __init__(self, start_ms=0):
        self.now_ms = start_ms

    def __call__(self):
        return self.now_ms

    def advance(self, ms):
        self.now_ms += ms

    # A stuck bus "waits" by advancing this clock instead of sleeping.
    sleep_ms = advance


class EmulatedChip:
    """What every emulated chip shares: its name and address, power-on, its clock, errors.

    Subclasses set `chip_name` and `address` (and `_clock_ms`, a callable returning
    ms, to run without a VirtualI2C) and implement _reset_registers(now_ms); the
    chip powers on when attached to a bus, or at its first transfer.
    """

    chip_name = "chip"
    address = 0
    _clock_ms = None
    _powered = False

    def power_on(self, now_ms):
        if self._clock_ms is not None:
            now_ms = self._clock_ms()
        self._powered = True
        self._reset_registers(now_ms)

    def _reset_registers(self, now_ms):
        pass

    def _now(self, now_ms):
        """The time a transfer happens at (the chip's own clock if it has one); powers on."""
        if self._clock_ms is not None:
            now_ms = self._clock_ms()
        if not self._powered:
            self.power_on(now_ms)
        return now_ms

    # --- errors: a driver bug, raised loudly ---------------------------------
    def _error(self, detail):
        return ValueError(f"{self.chip_name} emulator at 0x{self.address:02X}: {detail}")

    def _unknown(self, register):
        return self._error(f"no register 0x{register:02X}")

    def _read_only(self, register):
        return self._error(f"register 0x{register:02X} is read-only")


class RegisterChip16(EmulatedChip):
    """Base for emulated chips with 16-bit big-endian registers (TMP117, FDC1004, MAX17048).

    Subclasses set `chip_name` and `address` and implement
    read_register(register, now_ms) -> int and write_register(register, value, now_ms).
    A transfer that is not exactly one register wide is a driver bug: ValueError.
    """

    def _check_width(self, register, buf, verb):
        if len(buf) != 2:
            raise self._error(f"{verb} {len(buf)} bytes at 16-bit register 0x{register:02X}")

    def read_into(self, register, buf, now_ms):
        self._check_width(register, buf, "read of")
        value = self.read_register(register, now_ms)
        buf[0] = (value >> 8) & 0xFF
        buf[1] = value & 0xFF

    def write_from(self, register, buf, now_ms):
        self._check_width(register, buf, "write of")
        self.write_register(register, (buf[0] << 8) | buf[1], now_ms)

    def read_register(self, register, now_ms):
        raise NotImplementedError

    def write_register(self, register, value, now_ms):
        raise NotImplementedError


class VirtualI2C:
    """machine.I2C stand-in: readfrom_mem(_into), writeto_mem, scan.

    Chips must provide `address`, read_into(memaddr, buf, now_ms) and
    write_from(memaddr, buf, now_ms) (RegisterChip16 builds these from
    read_register/write_register), and optionally power_on(now_ms).
    """

    def __init__(self, clock_ms=None, sleep_ms=None, timeout_ms=DEFAULT_TIMEOUT_MS):
        if clock_ms is None:
            clock_ms = _real_clock_ms
        if sleep_ms is None:
            sleep_ms = getattr(clock_ms, "sleep_ms", _real_sleep_ms)
        self._clock_ms = clock_ms
        self._sleep_ms = sleep_ms
        self.timeout_ms = timeout_ms
        self._chips = {}
        self._nacks_pending = {}
        self._nack_always = set()
        self._stuck = False
        self.transaction_count = 0

    # --- wiring -----------------------------------------------------------
    def attach(self, chip):
        if chip.address in self._chips:
            raise ValueError(f"I2C address 0x{chip.address:02X} already has a chip attached")
        self._chips[chip.address] = chip
        power_on = getattr(chip, "power_on", None)
        if power_on is not None:
            power_on(self._clock_ms())
        return chip

    def detach(self, address):
        return self._chips.pop(address)

    def now_ms(self):
        return self._clock_ms()

    # --- faults -----------------------------------------------------------
    def nack(self, address, times=1):
        """The next `times` transactions to `address` are not acknowledged."""
        self._nacks_pending[address] = self._nacks_pending.get(address, 0) + times

    def nack_always(self, address):
        self._nack_always.add(address)

    def stick(self):
        """Hold the bus (SDA stuck low): every transaction times out."""
        self._stuck = True

    def release(self):
        self._stuck = False

    def clear_faults(self):
        self._nacks_pending.clear()
        self._nack_always.clear()
        self._stuck = False

    # --- machine.I2C API --------------------------------------------------
    def _select(self, address):
        if self._stuck:
            self._sleep_ms(self.timeout_ms)
            raise OSError(errno.ETIMEDOUT)
        if address in self._nack_always:
            raise OSError(errno.ENODEV)
        pending = self._nacks_pending.get(address, 0)
        if pending:
            self._nacks_pending[address] = pending - 1
            raise OSError(errno.ENODEV)
        chip = self._chips.get(address)
        if chip is None:
            raise OSError(errno.ENODEV)
        self.transaction_count += 1
        return chip

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        chip = self._select(addr)
        chip.read_into(memaddr, buf, self._clock_ms())

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        buf = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        chip = self._select(addr)
        chip.write_from(memaddr, buf, self._clock_ms())

    def scan(self):
        """Addresses that ACK, ascending. A stuck bus finds nothing (after the timeout)."""
        if self._stuck:
            self._sleep_ms(self.timeout_ms)
            return []
        return sorted(a for a in self._chips if a not in self._nack_always)
