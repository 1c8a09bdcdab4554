"""MAX17048 driver and its register-level emulator (Maxim/ADI MAX17048/MAX17049 data sheet).

The same driver + emulator scenario also runs under the real MicroPython VM and
must print exactly what it prints on CPython.
"""

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

from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C
from sensor_drivers.emulators.max17048 import MAX17048Emulator
from sensor_drivers.errors import SensorError
from sensor_drivers.max17048 import MAX17048, soc_to_percent, vcell_to_microvolts


def make_patch(volts=lambda: 3.8, soc=lambda: 50.0, start_ms=1000, **emulator_kwargs):
    clock = ManualClock(start_ms)
    bus = VirtualI2C(clock)
    emulator = bus.attach(MAX17048Emulator(volts, soc, **emulator_kwargs))
    return clock, bus, emulator


def word(bus, register):
    return int.from_bytes(bus.readfrom_mem(0x36, register, 2), "big")


# --- conversions -----------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, microvolts",
    [(0, 0), (1, 78), (8, 625), (0xC000, 3_840_000), (0xD700, 4_300_000), (0xFFFF, 5_119_922)],
)
def test_vcell_is_78_125_microvolts_per_lsb(raw, microvolts):
    assert vcell_to_microvolts(raw) == microvolts


@pytest.mark.parametrize("raw, percent", [(0, 0.0), (1, 1 / 256), (0x6400, 100.0), (0x3280, 50.5)])
def test_soc_is_1_256_percent_per_lsb(raw, percent):
    assert soc_to_percent(raw) == percent


@given(st.integers(0, 0xFFFF))
def test_integer_microvolts_round_half_up_exactly(raw):
    assert vcell_to_microvolts(raw) == int(Fraction(raw * 78125, 1000) + Fraction(1, 2))


# --- driver --------------------------------------------------------------------------
def test_init_checks_version_clears_reset_indicator_and_forces_hibernate():
    clock, bus, emulator = make_patch()
    assert word(bus, 0x1A) & 0x0100  # RI after power-on
    gauge = MAX17048(bus)
    assert gauge.version == 0x0012
    assert word(bus, 0x1A) & 0x0100 == 0
    assert word(bus, 0x0A) == 0xFFFF
    assert word(bus, 0x06) & 0x1000  # HibStat
    assert emulator.conversion_period_us() == 45_000_000
    assert word(bus, 0x0C) == 0x971C  # CONFIG untouched


def test_start_ready_read_follow_the_first_conversion_after_power_on():
    clock, bus, _ = make_patch(lambda: 3.7, lambda: 42.5)
    gauge = MAX17048(bus, hibernate=False)
    assert gauge.start() == 0
    assert not gauge.ready()  # VCELL reads 0 until the first conversion
    clock.advance(250)
    assert gauge.ready()
    assert gauge.read_raw() == round(42.5 * 256)
    assert gauge.read_percent() == 42.5
    assert gauge.read_microvolts() == vcell_to_microvolts(round(3.7 / 78.125e-6))
    assert gauge.read_volts() == pytest.approx(3.7, abs=78.125e-6 / 2)


def test_registers_update_every_250_ms_active_and_45_s_hibernating():
    soc = [80.0]
    clock, bus, emulator = make_patch(soc=lambda: soc[0])
    gauge = MAX17048(bus, hibernate=False)
    clock.advance(250)
    assert gauge.read_percent() == 80.0
    soc[0] = 79.0
    clock.advance(249)
    assert gauge.read_percent() == 80.0
    clock.advance(1)
    assert gauge.read_percent() == 79.0
    bus.writeto_mem(0x36, 0x0A, b"\xff\xff")  # always hibernate
    soc[0] = 78.0
    clock.advance(250)
    assert gauge.read_percent() == 78.0  # the already scheduled conversion
    soc[0] = 77.0
    clock.advance(44_999)
    assert gauge.read_percent() == 78.0
    clock.advance(1)
    assert gauge.read_percent() == 77.0


def test_crate_follows_the_soc_slope():
    soc = [50.0]
    clock, bus, _ = make_patch(soc=lambda: soc[0])
    MAX17048(bus, hibernate=False)
    clock.advance(250)
    word(bus, 0x04)
    soc[0] = 50.0 - 1.04 / 3600 * 0.25  # -1.04 %/h over 250 ms
    clock.advance(250)
    crate = int.from_bytes(bus.readfrom_mem(0x36, 0x16, 2), "big", signed=True)
    assert crate in (-5, -4)  # 0.208 %/h per LSB


def test_power_on_reset_command_is_nacked_and_the_driver_recovers():
    clock, bus, emulator = make_patch()
    gauge = MAX17048(bus)
    clock.advance(300)
    assert gauge.ready()
    gauge.reset()
    assert emulator.resets == 1
    assert word(bus, 0x1A) & 0x0100 == 0  # reconfigured: RI cleared again
    assert word(bus, 0x0A) == 0xFFFF
    assert not gauge.ready()  # registers restarted from power-on


def test_reset_raises_other_bus_errors():
    _, bus, _ = make_patch()
    gauge = MAX17048(bus)
    bus.stick()
    with pytest.raises(
        SensorError, match=r"^MAX17048 at 0x36: bus timeout \(OSError 110\) writing CMD"
    ):
        gauge.reset()


def test_quick_start_converts_at_once():
    clock, bus, emulator = make_patch()
    gauge = MAX17048(bus)
    gauge.quick_start()
    assert emulator.conversions == 1
    assert gauge.ready()


def test_wrong_version_names_chip_address_and_value():
    _, bus, _ = make_patch(version=0x0003)  # e.g. a MAX17043 at the same address
    with pytest.raises(SensorError) as caught:
        MAX17048(bus)
    assert str(caught.value) == "MAX17048 at 0x36: version 0x0003, expected 0x001X"
    _, bus, _ = make_patch(version=0x0011)
    assert MAX17048(bus).version == 0x0011


def test_missing_chip_is_a_prompt_error_naming_it():
    with pytest.raises(
        SensorError, match=r"^MAX17048 at 0x36: no ACK \(OSError 19\) reading VERSION"
    ):
        MAX17048(VirtualI2C(ManualClock()))


def test_full_scale_registers_are_out_of_range_errors():
    clock, bus, _ = make_patch(lambda: 6.0, lambda: 300.0)
    gauge = MAX17048(bus)
    clock.advance(250)
    with pytest.raises(SensorError, match=r"^MAX17048 at 0x36: SOC reads full scale 0xFFFF"):
        gauge.read_raw()
    with pytest.raises(
        SensorError, match=r"^MAX17048 at 0x36: VCELL reads full scale 0xFFFF \(5.12 V\)"
    ):
        gauge.read_microvolts()


@settings(max_examples=150, deadline=None)
@given(volts=st.floats(min_value=2.5, max_value=4.5), soc=st.floats(min_value=0.0, max_value=100.0))
def test_driver_reading_emulator_reproduces_the_model(volts, soc):
    clock, bus, _ = make_patch(lambda: volts, lambda: soc)
    gauge = MAX17048(bus)
    clock.advance(250)
    assert gauge.ready()
    # Stated VCELL accuracy is +-7.5 mV; the emulator adds only quantisation.
    assert abs(gauge.read_microvolts() / 1e6 - volts) <= 78.125e-6 / 2 + 1e-6
    assert abs(gauge.read_volts() - volts) <= 0.0075
    assert abs(gauge.read_raw() / 256 - soc) <= 1 / 512 + 1e-9


# --- emulator ----------------------------------------------------------------------------
def test_emulator_reset_values_and_read_only_registers():
    _, bus, _ = make_patch(chip_id=0x5A)
    assert word(bus, 0x08) == 0x0012
    assert word(bus, 0x0A) == 0x8030
    assert word(bus, 0x0C) == 0x971C
    assert word(bus, 0x14) == 0x00FF
    assert word(bus, 0x18) == 0x965A
    assert word(bus, 0x1A) == 0x0100
    assert word(bus, 0x02) == 0 and word(bus, 0x04) == 0
    with pytest.raises(ValueError, match="read-only"):
        bus.writeto_mem(0x36, 0x04, b"\x00\x00")
    with pytest.raises(ValueError, match="no register 0x10"):
        bus.readfrom_mem(0x36, 0x10, 2)


def test_emulator_sleep_stops_conversions():
    soc = [60.0]
    clock, bus, emulator = make_patch(soc=lambda: soc[0])
    clock.advance(250)
    word(bus, 0x04)
    bus.writeto_mem(0x36, 0x06, b"\x20\x00")  # EnSleep
    bus.writeto_mem(0x36, 0x0C, b"\x97\x9c")  # CONFIG.SLEEP
    count = emulator.conversions
    soc[0] = 10.0
    clock.advance(10_000)
    assert word(bus, 0x04) == 60 * 256
    assert emulator.conversions == count


# --- MicroPython ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["sensor_drivers/max17048.py", "sensor_drivers/emulators/max17048.py"]
)
def test_files_compile_with_mpy_cross(path, tmp_path):
    result = compile_with_mpy_cross(path, tmp_path)
    assert result.returncode == 0, result.stderr


SCENARIO = on_virtual_bus("""
from sensor_drivers.emulators.max17048 import MAX17048Emulator
from sensor_drivers.max17048 import MAX17048

state = [4.1, 95.0]
bus.attach(MAX17048Emulator(lambda: state[0], lambda: state[1]))
gauge = MAX17048(bus)
print(gauge.start(), gauge.ready())
clock.advance(250)
for step in range(11):
    state[0] = 4.1 - step * 0.08
    state[1] = 95.0 - step * 9.0
    clock.advance(45000)
    print(step, gauge.ready(), gauge.read_raw(), gauge.read_microvolts())
gauge.reset()
print("after reset ready:", gauge.ready())
wrong = VirtualI2C(clock)
wrong.attach(MAX17048Emulator(lambda: 1.0, lambda: 1.0, version=0x0000))
try:
    MAX17048(wrong)
except SensorError as error:
    print(error)
""")


def test_scenario_runs_identically_under_micropython(micropython):
    lines = run_on_cpython(SCENARIO)
    assert lines[0] == "0 False"
    assert lines[1] == "0 True 24320 4100000"
    assert lines[-2] == "after reset ready: False"
    assert lines[-1] == "MAX17048 at 0x36: version 0x0000, expected 0x001X"
    assert micropython(SCENARIO).splitlines() == lines


# Runs after fixed_register_bus(...), which defines `bus` and imports micropython.
HOT_PATH = """
from sensor_drivers.max17048 import MAX17048

gauge = MAX17048(bus)

def poll(gauge, times, out):
    for _ in range(times):
        gauge.start()
        if gauge.ready():
            out[0] = gauge.read_raw()
            out[1] = gauge.read_microvolts()

out = [0, 0]
poll(gauge, 1, out)
micropython.heap_lock()
try:
    poll(gauge, 200, out)
finally:
    micropython.heap_unlock()
print(out[0], out[1])
"""


def test_driver_hot_path_allocates_nothing_under_micropython(micropython):
    registers = {0x02: 0xC000, 0x04: 0x3280, 0x08: 0x0012, 0x1A: 0x0000}
    code = fixed_register_bus(0x36, registers) + HOT_PATH
    assert micropython(code).splitlines() == ["12928 3840000"]
