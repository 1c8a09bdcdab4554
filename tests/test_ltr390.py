"""LTR390 driver and its register-level emulator (datasheet Lite-On DS86-2015-0004).

The same driver + emulator scenario also runs under the real MicroPython VM and
must print exactly what it prints on CPython.
"""

import time
from fractions import Fraction

import pytest
from driver_scenarios import (
    POLL_READ_RAW_UNDER_HEAP_LOCK,
    compile_with_mpy_cross,
    fixed_register_bus,
    on_virtual_bus,
    run_on_cpython,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C
from sensor_drivers.emulators.ltr390 import LTR390Emulator
from sensor_drivers.errors import SensorError
from sensor_drivers.ltr390 import (
    LTR390,
    counts_per_uvi,
    counts_to_uvi,
    counts_to_uvi_x100,
    uvi_x100_ratio,
)

GAINS = (1, 3, 6, 9, 18)
RESOLUTIONS = (16, 17, 18, 19, 20)


def make_patch(uv_source=lambda: 5.0, start_ms=1000, **emulator_kwargs):
    clock = ManualClock(start_ms)
    bus = VirtualI2C(clock)
    emulator = bus.attach(LTR390Emulator(uv_source, **emulator_kwargs))
    return clock, bus, emulator


def exact_uvi(counts, gain, resolution_bits, transmission_percent=100):
    # Datasheet: UVI = counts / (2300 x gain/18 x 2^res/2^20) x Wfac, Wfac = 100/T%.
    sensitivity = Fraction(2300) * Fraction(gain, 18) * Fraction(2**resolution_bits, 2**20)
    return Fraction(counts) / sensitivity * Fraction(100, transmission_percent)


# --- conversions -------------------------------------------------------------
def test_datasheet_sensitivity_2300_counts_is_one_uvi_at_gain_18_and_20_bit():
    numerator, denominator = uvi_x100_ratio(18, 20)
    assert counts_to_uvi_x100(2300, numerator, denominator) == 100
    assert counts_to_uvi_x100(23000, numerator, denominator) == 1000
    assert counts_per_uvi(18, 20) == 2300
    assert counts_to_uvi(4600, 18, 20) == 2.0


def test_sensitivity_scales_with_gain_and_resolution():
    # The Linux iio driver's worked example: gain 3, 18 bit (100 ms) -> 2300/24 = 95.83.
    assert counts_per_uvi(3, 18) == pytest.approx(95.8333, abs=1e-4)
    assert counts_per_uvi(18, 18) == 575  # the patch's setting
    assert counts_per_uvi(1, 16) == pytest.approx(2300 / 18 / 16)
    # Full scale at the patch's setting is far above any terrestrial UVI.
    assert ((1 << 18) - 1) / counts_per_uvi(18, 18) > 450


@settings(max_examples=200, deadline=None)
@given(
    counts=st.integers(min_value=0, max_value=(1 << 20) - 1),
    gain=st.sampled_from(GAINS),
    resolution_bits=st.sampled_from(RESOLUTIONS),
    transmission=st.integers(min_value=1, max_value=100),
)
def test_integer_conversion_rounds_half_up_exactly(counts, gain, resolution_bits, transmission):
    counts = min(counts, (1 << resolution_bits) - 1)
    numerator, denominator = uvi_x100_ratio(gain, resolution_bits, transmission)
    value = counts_to_uvi_x100(counts, numerator, denominator)
    exact = exact_uvi(counts, gain, resolution_bits, transmission) * 100
    assert type(value) is int
    assert value == int(exact + Fraction(1, 2))


# --- driver ----------------------------------------------------------------------
def test_driver_configures_uvs_mode_gain_18_18_bit_and_standby():
    _, bus, emulator = make_patch()
    sensor = LTR390(bus)
    assert bus.readfrom_mem(0x53, 0x00, 1) == b"\x08"  # UVS mode, standby
    assert bus.readfrom_mem(0x53, 0x04, 1) == b"\x22"  # 18 bit (100 ms), rate 100 ms
    assert bus.readfrom_mem(0x53, 0x05, 1) == b"\x04"  # gain 18
    assert sensor.conversion_time_ms == 100
    assert emulator.measurements == 0


@pytest.mark.parametrize(
    "resolution_bits, wait_ms, meas_rate", [(20, 400, 0x04), (19, 200, 0x13), (16, 25, 0x40)]
)
def test_measurement_rate_is_never_shorter_than_the_integration(
    resolution_bits, wait_ms, meas_rate
):
    _, bus, _ = make_patch()
    sensor = LTR390(bus, resolution_bits=resolution_bits)
    assert sensor.start() == wait_ms
    assert bus.readfrom_mem(0x53, 0x04, 1)[0] == meas_rate


def test_one_measurement_is_ready_after_the_integration_then_standby():
    clock, bus, emulator = make_patch(lambda: 7.3)
    sensor = LTR390(bus)
    assert sensor.start() == 100
    assert bus.readfrom_mem(0x53, 0x00, 1) == b"\x0a"  # UVS mode, enabled
    clock.advance(99)
    assert not sensor.ready()
    clock.advance(1)
    assert sensor.ready()
    assert not sensor.ready()  # reading MAIN_STATUS cleared the data status
    assert sensor.read_counts() == round(7.3 * 575)
    assert bus.readfrom_mem(0x53, 0x00, 1) == b"\x08"  # back in standby
    clock.advance(10_000)
    assert emulator.measurements == 1  # nothing measured in standby
    assert sensor.read_raw() == 730


def test_driver_never_waits_for_a_measurement():
    bus = VirtualI2C()  # real clock: a sleeping driver would show up as elapsed time
    bus.attach(LTR390Emulator(lambda: 3.0))
    sensor = LTR390(bus)
    started = time.monotonic()
    sensor.start()
    ready = sensor.ready()
    assert time.monotonic() - started < 0.02
    assert not ready


def test_window_transmission_scales_the_reading():
    clock, bus, _ = make_patch(lambda: 2.0)
    sensor = LTR390(bus, window_transmission_percent=50)
    clock.advance(sensor.start())
    assert sensor.ready()
    assert sensor.read_raw() == 400  # the sensor sees 2.0 behind a 50 % window: UVI 4.0


def test_wrong_part_id_names_chip_address_and_value():
    _, bus, _ = make_patch(part_id=0x00)
    with pytest.raises(SensorError) as caught:
        LTR390(bus)
    assert str(caught.value) == "LTR390 at 0x53: part id 0x00, expected 0xB2"
    assert caught.value.bus_errno is None
    _, bus, _ = make_patch(part_id=0xB1)  # another revision of the same part is accepted
    assert LTR390(bus).address == 0x53


def test_missing_chip_and_stuck_bus_are_prompt_errors_naming_it():
    bus = VirtualI2C(ManualClock())
    with pytest.raises(
        SensorError, match=r"^LTR390 at 0x53: no ACK \(OSError 19\) reading PART_ID"
    ):
        LTR390(bus)
    clock, bus, _ = make_patch()
    sensor = LTR390(bus)
    bus.stick()
    before = clock()
    with pytest.raises(
        SensorError, match=r"^LTR390 at 0x53: bus timeout \(OSError 110\) writing MAIN_CTRL"
    ):
        sensor.start()
    assert clock() - before == bus.timeout_ms


def test_saturated_count_is_an_out_of_range_error_and_the_next_reading_recovers():
    uv = [600.0]  # above full scale (UVI 455) at gain 18, 18 bit
    clock, bus, _ = make_patch(lambda: uv[0])
    sensor = LTR390(bus)
    clock.advance(sensor.start())
    with pytest.raises(SensorError, match=r"^LTR390 at 0x53: UVS count 262143 is full scale"):
        sensor.read_raw()
    assert bus.readfrom_mem(0x53, 0x00, 1) == b"\x08"  # standby even so
    uv[0] = 11.5
    clock.advance(sensor.start())
    assert sensor.read_raw() == 1150


def test_invalid_settings_are_rejected():
    _, bus, _ = make_patch()
    with pytest.raises(ValueError, match="gain"):
        LTR390(bus, gain=2)
    with pytest.raises(ValueError, match="resolution"):
        LTR390(bus, resolution_bits=13)
    with pytest.raises(ValueError, match="window"):
        LTR390(bus, window_transmission_percent=0)


@settings(max_examples=150, deadline=None)
@given(
    uvi=st.floats(min_value=0.0, max_value=20.0),
    gain=st.sampled_from(GAINS),
    resolution_bits=st.sampled_from(RESOLUTIONS),
)
def test_driver_reading_emulator_reproduces_the_model(uvi, gain, resolution_bits):
    clock, bus, _ = make_patch(lambda: uvi)
    sensor = LTR390(bus, gain=gain, resolution_bits=resolution_bits)
    clock.advance(sensor.start())
    assert sensor.ready()
    uvi_x100 = sensor.read_raw()
    # Quantisation only: half a count, then the 0.01 UVI wire unit.
    tolerance = 0.5 / counts_per_uvi(gain, resolution_bits) + 0.005 + 1e-9
    assert abs(uvi_x100 / 100 - uvi) <= tolerance


# --- emulator ------------------------------------------------------------------------
def test_emulator_reset_values_and_status_cleared_on_read():
    _, bus, _ = make_patch()
    assert bus.readfrom_mem(0x53, 0x00, 1) == b"\x00"
    assert bus.readfrom_mem(0x53, 0x04, 1) == b"\x22"
    assert bus.readfrom_mem(0x53, 0x05, 1) == b"\x01"
    assert bus.readfrom_mem(0x53, 0x06, 1) == b"\xb2"
    assert bus.readfrom_mem(0x53, 0x07, 1) == b"\x20"  # power-on status
    assert bus.readfrom_mem(0x53, 0x07, 1) == b"\x00"  # cleared by the read
    assert bus.readfrom_mem(0x53, 0x19, 2) == b"\x10\x00"  # INT_CFG, INT_PST
    assert bus.readfrom_mem(0x53, 0x21, 6) == b"\xff\xff\x0f\x00\x00\x00"  # thresholds


def test_emulator_measures_continuously_at_the_measurement_rate():
    clock, bus, emulator = make_patch(lambda: 1.0)
    bus.writeto_mem(0x53, 0x05, b"\x04")  # gain 18
    bus.writeto_mem(0x53, 0x04, b"\x24")  # 18 bit (100 ms), every 500 ms
    bus.writeto_mem(0x53, 0x00, b"\x0a")  # UVS, enable
    clock.advance(100)
    assert bus.readfrom_mem(0x53, 0x10, 3) == (575).to_bytes(3, "little")
    clock.advance(499)
    bus.readfrom_mem(0x53, 0x07, 1)
    assert emulator.measurements == 1
    clock.advance(1)
    assert bus.readfrom_mem(0x53, 0x07, 1)[0] & 0x08
    assert emulator.measurements == 2


def test_emulator_als_mode_and_software_reset():
    clock, bus, _ = make_patch(lambda: 1.0, lux_source=lambda: 100.0)
    bus.writeto_mem(0x53, 0x00, b"\x02")  # ALS mode (reset gain 3, 18 bit), enable
    clock.advance(100)
    # lux = 0.6 x counts / (gain x integration/100 ms): 100 lux -> 500 counts
    assert bus.readfrom_mem(0x53, 0x0D, 3) == (500).to_bytes(3, "little")
    assert bus.readfrom_mem(0x53, 0x10, 3) == b"\x00\x00\x00"  # UVS untouched
    bus.writeto_mem(0x53, 0x05, b"\x04")
    bus.writeto_mem(0x53, 0x00, b"\x10")  # SW reset
    assert bus.readfrom_mem(0x53, 0x05, 1) == b"\x01"
    assert bus.readfrom_mem(0x53, 0x00, 1) == b"\x00"
    assert bus.readfrom_mem(0x53, 0x07, 1) == b"\x20"


def test_emulator_rejects_driver_bugs_loudly():
    _, bus, _ = make_patch()
    with pytest.raises(ValueError, match="no register 0x08"):
        bus.readfrom_mem(0x53, 0x08, 1)
    with pytest.raises(ValueError, match="read-only"):
        bus.writeto_mem(0x53, 0x06, b"\x00")
    with pytest.raises(ValueError, match="0 bytes"):
        bus.readfrom_mem(0x53, 0x10, 0)


# --- MicroPython ------------------------------------------------------------------------
FILES = [
    "sensor_drivers/ltr390.py",
    "sensor_drivers/emulators/ltr390.py",
    "sensor_drivers/emulators/registers8.py",
]


@pytest.mark.parametrize("path", FILES)
def test_files_compile_with_mpy_cross(path, tmp_path):
    result = compile_with_mpy_cross(path, tmp_path)
    assert result.returncode == 0, result.stderr


SCENARIO = on_virtual_bus("""
from sensor_drivers.emulators.ltr390 import LTR390Emulator
from sensor_drivers.ltr390 import LTR390

uv = [0.0]
bus.attach(LTR390Emulator(lambda: uv[0]))
sensor = LTR390(bus)
worst = 0.0
for step in range(61):
    uv[0] = step * 0.25
    wait_ms = sensor.start()
    clock.advance(wait_ms - 1)
    early = sensor.ready()
    clock.advance(1)
    late = sensor.ready()
    raw = sensor.read_raw()
    worst = max(worst, abs(raw / 100 - uv[0]))
    if step % 10 == 0:
        print(step, wait_ms, early, late, raw)
    clock.advance(5000)
print("worst error within quantisation:", worst <= 0.5 / 575 + 0.005 + 1e-9)
uv[0] = 1000.0
sensor.start()
clock.advance(100)
try:
    sensor.read_raw()
except SensorError as error:
    print(error)
wrong = VirtualI2C(clock)
wrong.attach(LTR390Emulator(lambda: 1.0, part_id=0x12))
try:
    LTR390(wrong)
except SensorError as error:
    print(error)
""")


def test_scenario_runs_identically_under_micropython(micropython):
    lines = run_on_cpython(SCENARIO)
    assert lines[0] == "0 100 False True 0"
    assert "worst error within quantisation: True" in lines
    assert lines[-2].startswith("LTR390 at 0x53: UVS count 262143 is full scale")
    assert lines[-1] == "LTR390 at 0x53: part id 0x12, expected 0xB2"
    assert micropython(SCENARIO).splitlines() == lines


# Runs after fixed_register_bus(...), which defines `bus`.
SENSOR = """
from sensor_drivers.ltr390 import LTR390

sensor = LTR390(bus)
"""


def test_driver_hot_path_allocates_nothing_under_micropython(micropython):
    # PART_ID 0xB2, MAIN_STATUS data ready, UVS_DATA 0x1000B counts = 65547
    registers = {0x06: 0xB2, 0x07: 0x08, 0x10: 0x0B, 0x11: 0x00, 0x12: 0x01}
    code = (
        fixed_register_bus(0x53, registers, register_bits=8)
        + SENSOR
        + POLL_READ_RAW_UNDER_HEAP_LOCK
    )
    # 65547 counts / 575 counts/UVI = 113.99 UVI
    assert micropython(code).splitlines() == ["11399"]
