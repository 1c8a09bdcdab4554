"""TMP117 driver, its register-level emulator, the virtual I2C bus and the skin model.

Datasheet: TI SNOSD82D. The same driver + emulator scenario also runs under the
real MicroPython VM and must print exactly what it prints on CPython.
"""

import random
import time
from fractions import Fraction

import pytest
from driver_scenarios import (
    compile_with_mpy_cross,
    fixed_register_bus,
    on_virtual_bus,
    run_on_cpython,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor_drivers.emulators.i2c_bus import ManualClock, RegisterChip16, VirtualI2C
from sensor_drivers.emulators.tmp117 import TMP117Emulator
from sensor_drivers.errors import SensorError
from sensor_drivers.skin_model import SkinTemperatureModel
from sensor_drivers.tmp117 import (
    RAW_BEFORE_FIRST_CONVERSION,
    TMP117,
    raw_to_celsius,
    raw_to_centi_celsius,
    raw_to_milli_celsius,
)
from simulation.device_shims import machine

# Datasheet Table 7-1 (§7.3.3): Temp_Result register value -> °C.
# The table prints 255.9921 for 7FFF; the exact value is 32767/128.
DATASHEET_TABLE_7_1 = [
    (0x8000, -256.0),
    (0xF380, -25.0),
    (0xFFF0, -0.125),
    (0xFFFF, -0.0078125),
    (0x0000, 0.0),
    (0x0001, 0.0078125),
    (0x0010, 0.125),
    (0x0080, 1.0),
    (0x0C80, 25.0),
    (0x3200, 100.0),
    (0x7FFF, 255.9921875),
]


def signed16(value):
    return value - 0x10000 if value & 0x8000 else value


def round_half_away(value: Fraction) -> int:
    magnitude = int(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


class FixedRegisters(RegisterChip16):
    """A chip whose registers hold whatever the test puts there."""

    chip_name = "fixed"

    def __init__(self, address=0x48, **registers):
        self.address = address
        self.registers = {0x0F: 0x0117, 0x01: 0x0000, 0x00: 0x0000}
        self.registers.update({int(k[1:], 16): v for k, v in registers.items()})
        self.writes = []

    def read_register(self, register, now_ms):
        return self.registers[register]

    def write_register(self, register, value, now_ms):
        self.writes.append((register, value))


def make_patch(temperature_source=lambda: 33.5, start_ms=1000, **emulator_kwargs):
    clock = ManualClock(start_ms)
    bus = VirtualI2C(clock)
    emulator = bus.attach(TMP117Emulator(temperature_source, **emulator_kwargs))
    return clock, bus, emulator


# --- conversions -------------------------------------------------------------
@pytest.mark.parametrize("register, celsius", DATASHEET_TABLE_7_1)
def test_conversions_match_datasheet_table(register, celsius):
    raw = signed16(register)
    assert raw_to_celsius(raw) == celsius
    assert raw_to_milli_celsius(raw) == round_half_away(Fraction(celsius) * 1000)
    assert raw_to_centi_celsius(raw) == round_half_away(Fraction(celsius) * 100)


def test_integer_conversions_of_familiar_values():
    assert raw_to_centi_celsius(0x0C80) == 2500  # 25 °C
    assert raw_to_milli_celsius(0x0C80) == 25000
    assert raw_to_milli_celsius(1) == 8  # 7.8125 m°C
    assert raw_to_milli_celsius(-1) == -8
    assert raw_to_centi_celsius(1) == 1  # 0.78125 c°C
    assert raw_to_centi_celsius(-1) == -1
    assert raw_to_milli_celsius(8) == 63  # 62.5 rounds away from zero
    assert raw_to_milli_celsius(-8) == -63


@given(st.integers(min_value=-0x8000, max_value=0x7FFF))
def test_integer_conversions_round_to_nearest_for_every_raw(raw):
    exact_milli = Fraction(raw) * Fraction(125, 16)
    milli = raw_to_milli_celsius(raw)
    centi = raw_to_centi_celsius(raw)
    assert type(milli) is int and type(centi) is int
    assert milli == round_half_away(exact_milli)
    assert centi == round_half_away(exact_milli / 10)


@pytest.mark.parametrize("register, celsius", DATASHEET_TABLE_7_1)
def test_driver_decodes_temp_result_register(register, celsius):
    bus = VirtualI2C(ManualClock())
    bus.attach(FixedRegisters(r00=register))
    sensor = TMP117(bus)
    assert sensor.read_raw() == signed16(register)
    assert sensor.read_celsius() == celsius


# --- identity and bus errors ---------------------------------------------------
def test_wrong_device_id_names_chip_address_and_value():
    _, bus, _ = make_patch(device_id=0x0000)
    with pytest.raises(SensorError) as caught:
        TMP117(bus)
    assert str(caught.value) == "TMP117 at 0x48: device id 0x0000, expected 0x0117"
    assert caught.value.address == 0x48 and caught.value.bus_errno is None


def test_device_id_check_ignores_revision_bits_and_uses_given_address():
    _, bus, _ = make_patch(device_id=0x3117, address=0x49)
    assert TMP117(bus, address=0x49).address == 0x49
    _, bus, _ = make_patch(device_id=0x0116, address=0x4A)
    with pytest.raises(SensorError, match=r"^TMP117 at 0x4A: device id 0x0116, expected 0x0117$"):
        TMP117(bus, address=0x4A)


def test_missing_chip_is_a_prompt_sensor_error_naming_it():
    bus = VirtualI2C()
    started = time.monotonic()
    with pytest.raises(SensorError) as caught:
        TMP117(bus)
    assert time.monotonic() - started < 0.5
    assert str(caught.value).startswith("TMP117 at 0x48: no ACK (OSError 19)")
    assert "Device_ID" in str(caught.value)
    assert isinstance(caught.value, OSError)  # the firmware sampler catches OSError
    assert caught.value.bus_errno == 19


def test_stuck_bus_times_out_after_the_bus_timeout_not_forever():
    bus = VirtualI2C(timeout_ms=50)  # real clock, real sleep
    bus.attach(TMP117Emulator(lambda: 33.0))
    sensor = TMP117(bus)
    bus.stick()
    started = time.monotonic()
    with pytest.raises(SensorError) as caught:
        sensor.read_raw()
    elapsed_s = time.monotonic() - started
    assert 0.04 <= elapsed_s < 1.0
    assert (
        str(caught.value) == "TMP117 at 0x48: bus timeout (OSError 110) reading Temp_Result (0x00)"
    )
    bus.release()
    assert sensor.read_raw() == RAW_BEFORE_FIRST_CONVERSION


def test_stuck_bus_with_manual_clock_spends_exactly_the_timeout():
    clock, bus, _ = make_patch()
    sensor = TMP117(bus)
    bus.stick()
    before = clock()
    with pytest.raises(SensorError, match="bus timeout .* writing Configuration"):
        sensor.start_oneshot()
    assert clock() - before == bus.timeout_ms
    assert bus.scan() == []


def test_nack_once_fails_one_transaction_then_recovers():
    clock, bus, _ = make_patch()
    bus.nack(0x48)
    with pytest.raises(SensorError, match="no ACK"):
        TMP117(bus)
    sensor = TMP117(bus)
    bus.nack_always(0x48)
    for _ in range(3):
        with pytest.raises(SensorError, match="reading Configuration"):
            sensor.ready()
    assert bus.scan() == []
    bus.clear_faults()
    assert bus.scan() == [0x48]


# --- one-shot behaviour ----------------------------------------------------------
@pytest.mark.parametrize("averages, conversion_ms", [(1, 16), (8, 125), (32, 500), (64, 1000)])
def test_oneshot_is_ready_after_the_datasheet_conversion_time(averages, conversion_ms):
    clock, bus, emulator = make_patch(lambda: 36.6)
    sensor = TMP117(bus, averages=averages)
    clock.advance(5000)  # let power-on CC conversions happen, then drain the flag
    sensor.ready()
    assert sensor.start_oneshot() == conversion_ms
    clock.advance(conversion_ms - 1)
    assert not sensor.ready()
    clock.advance(1)
    assert sensor.ready()
    assert not sensor.ready()  # reading Configuration cleared Data_Ready
    assert sensor.read_raw() == round(36.6 * 128)
    # averaging bits written are AVG[1:0] = index of averages; MOD = 11
    config = emulator.read_register(0x01, clock())
    assert (config >> 5) & 0b11 == (1, 8, 32, 64).index(averages)
    assert (config >> 10) & 0b11 == 0b01  # back in shutdown after the one-shot


def test_reading_temp_result_also_clears_data_ready():
    clock, bus, _ = make_patch()
    sensor = TMP117(bus)
    sensor.start_oneshot()
    clock.advance(125)
    sensor.read_raw()
    assert not sensor.ready()


def test_driver_never_waits_for_a_conversion():
    bus = VirtualI2C()  # real clock: a sleeping driver would show up as elapsed time
    bus.attach(TMP117Emulator(lambda: 30.0))
    sensor = TMP117(bus)
    started = time.monotonic()
    sensor.start_oneshot()
    ready = sensor.ready()
    assert time.monotonic() - started < 0.02
    assert not ready


def test_invalid_averages_are_rejected():
    _, bus, _ = make_patch()
    with pytest.raises(ValueError, match="averages"):
        TMP117(bus, averages=16)


# --- emulator ------------------------------------------------------------------
def test_emulator_powers_up_in_continuous_mode_per_reset_values():
    clock, bus, emulator = make_patch(lambda: 20.0)
    assert bus.readfrom_mem(0x48, 0x00, 2) == b"\x80\x00"  # -256 °C before first conversion
    assert bus.readfrom_mem(0x48, 0x01, 2) == b"\x02\x20"  # reset value 0220h
    assert bus.readfrom_mem(0x48, 0x0F, 2) == b"\x01\x17"
    clock.advance(124)
    assert not bus.readfrom_mem(0x48, 0x01, 2)[0] & 0x20
    clock.advance(1)  # AVG=8: first result after 125 ms
    assert bus.readfrom_mem(0x48, 0x01, 2)[0] & 0x20  # Data_Ready
    assert emulator.conversions == 1
    clock.advance(999)
    bus.readfrom_mem(0x48, 0x00, 2)
    assert emulator.conversions == 1
    clock.advance(1)  # CONV=100: one conversion per second
    assert bus.readfrom_mem(0x48, 0x00, 2) == (20 * 128).to_bytes(2, "big")
    assert emulator.conversions == 2


def test_emulator_soft_reset_restores_reset_values():
    clock, bus, _ = make_patch(lambda: 20.0)
    clock.advance(2000)
    bus.writeto_mem(0x48, 0x07, b"\x00\x80")  # offset +1 °C
    bus.writeto_mem(0x48, 0x01, b"\x0c\x00")  # one-shot
    bus.writeto_mem(0x48, 0x01, b"\x00\x02")  # Soft_Reset
    assert bus.readfrom_mem(0x48, 0x01, 2) == b"\x02\x20"
    assert bus.readfrom_mem(0x48, 0x00, 2) == b"\x80\x00"
    assert bus.readfrom_mem(0x48, 0x07, 2) == b"\x00\x00"


def test_emulator_applies_offset_clamps_and_sets_alert_flags():
    temperature = [200.0]
    clock, bus, _ = make_patch(lambda: temperature[0])
    sensor = TMP117(bus)
    sensor.start_oneshot()
    clock.advance(125)
    assert sensor.read_celsius() == 150.0  # clamped to the operating range
    bus.writeto_mem(0x48, 0x07, (0x10000 - 64).to_bytes(2, "big"))  # offset -0.5 °C
    bus.writeto_mem(0x48, 0x02, (30 * 128).to_bytes(2, "big"))  # THigh 30 °C
    temperature[0] = 33.0
    sensor.start_oneshot()
    clock.advance(125)
    config = int.from_bytes(bus.readfrom_mem(0x48, 0x01, 2), "big")
    assert config & 0x8000  # HIGH_Alert
    assert not int.from_bytes(bus.readfrom_mem(0x48, 0x01, 2), "big") & 0xE000  # cleared on read
    assert sensor.read_celsius() == 32.5


def test_emulator_rejects_driver_bugs_loudly():
    _, bus, _ = make_patch()
    with pytest.raises(ValueError, match="no register 0x09"):
        bus.readfrom_mem(0x48, 0x09, 2)
    with pytest.raises(ValueError, match="read of 3 bytes"):
        bus.readfrom_mem(0x48, 0x00, 3)
    with pytest.raises(ValueError, match="read-only"):
        bus.writeto_mem(0x48, 0x0F, b"\x00\x00")
    with pytest.raises(ValueError, match="already has a chip"):
        bus.attach(TMP117Emulator(lambda: 1.0))


@settings(max_examples=150, deadline=None)
@given(
    baseline_c=st.floats(min_value=-20.0, max_value=50.0),
    seed=st.integers(min_value=0, max_value=2**31),
    t_s=st.floats(min_value=0, max_value=7 * 86400),
)
def test_driver_reading_emulator_reproduces_the_model(baseline_c, seed, t_s):
    model = SkinTemperatureModel(seed=seed, baseline_c=baseline_c)
    clock = ManualClock(int(t_s * 1000))
    bus = VirtualI2C(clock)
    bus.attach(TMP117Emulator(lambda: model.celsius_at(clock() / 1000)))
    sensor = TMP117(bus)
    clock.advance(sensor.start_oneshot())
    assert sensor.ready()
    expected = model.celsius_at(clock() / 1000)
    measured = sensor.read_celsius()
    assert abs(measured - expected) <= 0.1
    assert abs(measured - expected) <= 0.0078125 / 2 + 1e-9  # quantisation only


# --- skin model ------------------------------------------------------------------
@given(st.lists(st.floats(min_value=0, max_value=30 * 86400), min_size=2, max_size=30))
def test_skin_model_is_independent_of_call_order(times_s):
    forward = SkinTemperatureModel(seed=5)
    values = [forward.celsius_at(t) for t in times_s]
    shuffled = list(enumerate(times_s))
    random.Random(1).shuffle(shuffled)
    other = SkinTemperatureModel(seed=5)
    for index, t in shuffled:
        assert other.celsius_at(t) == values[index]


def test_skin_model_is_bounded_slow_and_seed_dependent():
    model = SkinTemperatureModel(seed=3)
    times = range(0, 3 * 86400, 37)
    values = [model.celsius_at(t) for t in times]
    assert all(abs(v - 33.5) <= 0.4 + 0.25 + 0.05 for v in values)
    assert max(values) - min(values) > 0.5  # it does move
    assert max(abs(model.celsius_at(t + 10) - model.celsius_at(t)) for t in times) < 0.02
    other = SkinTemperatureModel(seed=4)
    assert any(abs(other.celsius_at(t) - model.celsius_at(t)) > 0.05 for t in times)
    assert model.circadian_c(4 * 3600) == pytest.approx(0.4)
    assert model.circadian_c(16 * 3600) == pytest.approx(-0.4)


def test_skin_model_inflammation_ramps_in():
    calm = SkinTemperatureModel(seed=9)
    inflamed = SkinTemperatureModel(seed=9)
    inflamed.set_inflammation(2.2, start_s=3600, rise_s=1800)
    assert inflamed.celsius_at(3599) == calm.celsius_at(3599)
    assert inflamed.celsius_at(3600 + 900) - calm.celsius_at(3600 + 900) == pytest.approx(1.1)
    assert inflamed.celsius_at(9000) - calm.celsius_at(9000) == pytest.approx(2.2)


# --- machine shim -------------------------------------------------------------------
def test_machine_i2c_shim_delegates_to_the_attached_virtual_bus():
    clock, bus, _ = make_patch(lambda: 34.25)
    machine.attach_i2c_bus(bus, 0)
    try:
        i2c = machine.I2C(0, scl=machine.Pin(9), sda=machine.Pin(8), freq=400_000)
        sensor = TMP117(i2c)
        clock.advance(sensor.start_oneshot())
        assert sensor.ready()
        assert sensor.read_centi_celsius() == 3425
        assert i2c.scan() == [0x48]
    finally:
        machine.detach_i2c_bus(0)
    with pytest.raises(ValueError, match="attach_i2c_bus"):
        machine.I2C(0)


def test_machine_shim_basics():
    assert isinstance(machine.unique_id(), bytes) and len(machine.unique_id()) >= 6
    assert machine.reset_cause() == machine.PWRON_RESET
    wdt = machine.WDT(timeout=2000)
    wdt.feed()
    assert wdt.feeds == 1
    machine.lightsleep(10)
    machine.deepsleep(10)
    with pytest.raises(SystemExit):
        machine.reset()


# --- MicroPython: compiles, runs the same, allocates nothing --------------------------
PATCH_SIDE_FILES = [
    "sensor_drivers/errors.py",
    "sensor_drivers/tmp117.py",
    "sensor_drivers/skin_model.py",
    "sensor_drivers/emulators/i2c_bus.py",
    "sensor_drivers/emulators/tmp117.py",
]


@pytest.mark.parametrize("path", PATCH_SIDE_FILES)
def test_patch_side_files_compile_with_mpy_cross(path, tmp_path):
    result = compile_with_mpy_cross(path, tmp_path)
    assert result.returncode == 0, result.stderr


SCENARIO = on_virtual_bus("""
from sensor_drivers.emulators.tmp117 import TMP117Emulator
from sensor_drivers.skin_model import SkinTemperatureModel
from sensor_drivers.tmp117 import TMP117, raw_to_centi_celsius

model = SkinTemperatureModel(seed=11, baseline_c=0.0)
offset = [0.0]
bus.attach(TMP117Emulator(lambda: model.celsius_at(clock() / 1000) + offset[0]))
sensor = TMP117(bus)
worst = 0.0
for step in range(71):
    offset[0] = -20.0 + step
    wait_ms = sensor.start_oneshot()
    clock.advance(wait_ms - 1)
    early = sensor.ready()
    clock.advance(1)
    raw = sensor.read_raw()
    expected = model.celsius_at(clock() / 1000) + offset[0]
    worst = max(worst, abs(raw * 0.0078125 - expected))
    if step % 10 == 0:
        print(step, wait_ms, early, raw, raw_to_centi_celsius(raw))
    clock.advance(10000)
print("worst error below 0.1:", worst <= 0.1, "below half LSB:", worst <= 0.00390625 + 1e-9)

def error_text(make):
    try:
        make()
    except SensorError as error:
        return str(error)
    return "no error"

print(error_text(lambda: TMP117(VirtualI2C(clock))))
wrong = VirtualI2C(clock)
wrong.attach(TMP117Emulator(lambda: 1.0, device_id=0))
print(error_text(lambda: TMP117(wrong)))
bus.stick()
before = clock()
print(error_text(sensor.read_raw), clock() - before)
""")


def test_scenario_runs_identically_under_micropython(micropython):
    expected_lines = run_on_cpython(SCENARIO)
    assert "worst error below 0.1: True below half LSB: True" in expected_lines
    assert "TMP117 at 0x48: no ACK (OSError 19) reading Device_ID (0x0F)" in expected_lines
    assert "TMP117 at 0x48: device id 0x0000, expected 0x0117" in expected_lines
    assert (
        expected_lines[-1]
        == "TMP117 at 0x48: bus timeout (OSError 110) reading Temp_Result (0x00) 50"
    )
    assert expected_lines[0].startswith("0 125 False ")

    assert micropython(SCENARIO).splitlines() == expected_lines


# Runs after fixed_register_bus(...), which defines `bus` and imports micropython.
HOT_PATH = """
from sensor_drivers.tmp117 import TMP117, raw_to_centi_celsius, raw_to_milli_celsius

sensor = TMP117(bus)
milli = centi = 0
micropython.heap_lock()
try:
    for _ in range(200):
        sensor.start_oneshot()
        if sensor.ready():
            raw = sensor.read_raw()
            milli = raw_to_milli_celsius(raw)
            centi = raw_to_centi_celsius(raw)
finally:
    micropython.heap_unlock()
print(milli, centi)
try:
    micropython.heap_lock()
    sensor.read_celsius()
    print("float allocated under heap_lock?")
except MemoryError:
    print("read_celsius allocates, as documented")
finally:
    micropython.heap_unlock()
"""


def test_driver_hot_path_allocates_nothing_under_micropython(micropython):
    registers = {0x00: 0xF380, 0x01: 0x2000, 0x0F: 0x0117}
    code = fixed_register_bus(0x48, registers) + HOT_PATH
    assert micropython(code).splitlines() == [
        "-25000 -2500",
        "read_celsius allocates, as documented",
    ]
