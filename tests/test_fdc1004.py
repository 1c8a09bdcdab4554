"""FDC1004 driver and its register-level emulator (datasheet TI SNOSCY5C).

The same driver + emulator scenario also runs under the real MicroPython VM and
must print exactly what it prints on CPython.
"""

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

from sensor_drivers.emulators.fdc1004 import FDC1004Emulator
from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C
from sensor_drivers.errors import SensorError
from sensor_drivers.fdc1004 import (
    FDC1004,
    registers_to_result,
    result_to_femtofarads,
    result_to_picofarads,
)


def make_patch(source=lambda: 12.5, start_ms=1000, **emulator_kwargs):
    clock = ManualClock(start_ms)
    bus = VirtualI2C(clock)
    emulator = bus.attach(FDC1004Emulator(source, **emulator_kwargs))
    return clock, bus, emulator


def word(bus, register):
    return int.from_bytes(bus.readfrom_mem(0x50, register, 2), "big")


def measure(sensor, clock, tries=5):
    """start/ready/read as the firmware does, retrying while CAPDAC is re-ranged."""
    for _ in range(tries):
        clock.advance(sensor.start())
        assert sensor.ready()
        try:
            return sensor.read_raw()
        except SensorError as error:
            if "CAPDAC moved" not in str(error):
                raise
    raise AssertionError("never in range")


# --- conversions (§6.6.1.1, §6.3.2) ------------------------------------------------
@pytest.mark.parametrize(
    "msb, lsb, result, picofarads",
    [
        (0x0000, 0x0000, 0, 0.0),
        (0x0800, 0x0000, 1 << 19, 1.0),  # 2^19 LSB per pF
        (0x7FFF, 0xFF00, 0x7FFFFF, 0x7FFFFF / 2**19),  # positive full scale, just under 16 pF
        (0x8000, 0x0000, -(1 << 23), -16.0),
        (0xFFFF, 0xFF00, -1, -(2**-19)),
        (0x0000, 0x0100, 1, 2**-19),  # 1.907 aF
        (0x0001, 0x0000, 256, 2**-11),  # one LSB of MEAS_MSB alone: 488.28 aF
    ],
)
def test_result_decoding_matches_the_datasheet_format(msb, lsb, result, picofarads):
    assert registers_to_result(msb, lsb) == result
    assert result_to_picofarads(result, 0) == picofarads


def test_msb_register_lsb_is_488_attofarads_not_457():
    assert result_to_picofarads(registers_to_result(0x0001, 0), 0) * 1e6 == pytest.approx(488.28125)
    # A reading of 0x0400 in MEAS_MSB alone is 0.5 pF; at 457 aF/LSB it would be 0.468 pF.
    assert result_to_femtofarads(registers_to_result(0x0400, 0), 0) == 500


def test_capdac_adds_3_125_pf_per_code():
    assert result_to_femtofarads(0, 1) == 3125
    assert result_to_femtofarads(1 << 19, 4) == 13500  # 1 pF + 12.5 pF
    assert result_to_femtofarads(-(1 << 19) * 15, 31) == 96875 - 15000
    assert result_to_picofarads(0, 31) == 96.875


@given(st.integers(min_value=-(1 << 23), max_value=(1 << 23) - 1), st.integers(0, 31))
def test_integer_femtofarads_round_half_up_exactly(result, capdac):
    exact = Fraction(result * 1000, 2**19) + capdac * 3125
    value = result_to_femtofarads(result, capdac)
    assert type(value) is int
    assert value == int((exact + Fraction(1, 2)) // 1)


# --- driver --------------------------------------------------------------------------
def test_driver_writes_the_datasheet_register_values():
    clock, bus, _ = make_patch(lambda: 30.0)
    sensor = FDC1004(bus, capdac=7)
    assert sensor.start() == 10
    # CHA = CIN1, CHB = CAPDAC, CAPDAC = 7 (21.875 pF); 100 S/s, MEAS_1 (as in TI's e2e examples)
    assert word(bus, 0x08) == 0x10E0
    assert word(bus, 0x0C) == 0x0480
    clock.advance(9)
    assert not sensor.ready()
    clock.advance(1)
    assert sensor.ready()
    assert word(bus, 0x0C) == 0x0488  # DONE_1 set, MEAS_1 stays set
    assert sensor.read_raw() == 30000
    assert not sensor.ready()  # DONE_1 clears once the result has been read


@pytest.mark.parametrize("rate_sps, wait_ms, fdc_conf", [(200, 5, 0x0880), (400, 3, 0x0C80)])
def test_faster_rates(rate_sps, wait_ms, fdc_conf):
    clock, bus, _ = make_patch(lambda: 14.0)
    sensor = FDC1004(bus, rate_sps=rate_sps, channel=1)
    assert sensor.start() == wait_ms
    assert word(bus, 0x0C) == fdc_conf
    clock.advance(wait_ms)
    assert sensor.ready() and sensor.read_raw() == 14000


def test_other_channel_uses_cha_field():
    clock, bus, _ = make_patch(lambda: 1.0, other_inputs=(lambda: 2.0, lambda: 23.0, lambda: 4.0))
    sensor = FDC1004(bus, channel=3, capdac=6)
    clock.advance(sensor.start())
    assert word(bus, 0x08) == (2 << 13) | (4 << 10) | (6 << 5)
    assert sensor.read_raw() == 23000


def test_auto_range_walks_capdac_to_a_large_electrode_and_recentres():
    value = [100.0]
    clock, bus, _ = make_patch(lambda: value[0])
    sensor = FDC1004(bus)  # starts at CAPDAC 4 (12.5 pF)
    errors = []
    for _ in range(6):
        clock.advance(sensor.start())
        try:
            femtofarads = sensor.read_raw()
            break
        except SensorError as error:
            errors.append(str(error))
    assert femtofarads == 100000
    assert errors[0] == (
        "FDC1004 at 0x50: capacitance out of range, above +-15 pF around CAPDAC 4 (12.5 pF); "
        "CAPDAC moved to 13 for the next measurement"
    )
    assert len(errors) == 3  # 4 -> 13 -> 22 -> 31
    assert sensor.capdac == 31
    value[0] = 60.0  # 36.9 pF below the CAPDAC: one step down (9 codes) is in range
    assert measure(sensor, clock) == 60000
    assert sensor.capdac == 22  # 68.75 pF: -8.75 pF is within the 10 pF comfort zone
    value[0] = 80.0  # +11.25 pF: valid, and CAPDAC is re-centred for the next time
    assert measure(sensor, clock) == 80000
    assert sensor.capdac == 26  # 81.25 pF, nearest to 80 pF


def test_beyond_the_measurable_range_is_a_clear_error():
    clock, bus, _ = make_patch(lambda: 150.0)
    sensor = FDC1004(bus, capdac=31)
    clock.advance(sensor.start())
    with pytest.raises(
        SensorError,
        match=r"^FDC1004 at 0x50: capacitance out of range, above "
        r"\+-15 pF around CAPDAC 31 \(96.875 pF\): beyond the measurable range$",
    ):
        sensor.read_raw()
    clock, bus, _ = make_patch(lambda: -2.0)
    sensor = FDC1004(bus, capdac=0)
    clock.advance(sensor.start())
    with pytest.raises(SensorError, match="-2000 fF is negative"):
        sensor.read_raw()


def test_ids_are_checked_and_named():
    _, bus, _ = make_patch(manufacturer_id=0x1234)
    with pytest.raises(SensorError) as caught:
        FDC1004(bus)
    assert str(caught.value) == "FDC1004 at 0x50: manufacturer id 0x1234, expected 0x5449"
    _, bus, _ = make_patch(device_id=0x2114)
    with pytest.raises(SensorError, match=r"^FDC1004 at 0x50: device id 0x2114, expected 0x1004$"):
        FDC1004(bus)


def test_missing_chip_and_stuck_bus():
    with pytest.raises(
        SensorError, match=r"^FDC1004 at 0x50: no ACK \(OSError 19\) reading MANUFACTURER_ID"
    ):
        FDC1004(VirtualI2C(ManualClock()))
    clock, bus, _ = make_patch()
    sensor = FDC1004(bus)
    bus.stick()
    before = clock()
    with pytest.raises(SensorError, match="bus timeout .* reading FDC_CONF"):
        sensor.ready()
    assert clock() - before == bus.timeout_ms


def test_invalid_settings_are_rejected():
    _, bus, _ = make_patch()
    with pytest.raises(ValueError, match="channel"):
        FDC1004(bus, channel=5)
    with pytest.raises(ValueError, match="capdac"):
        FDC1004(bus, capdac=32)
    with pytest.raises(ValueError, match="rate"):
        FDC1004(bus, rate_sps=50)


@settings(max_examples=150, deadline=None)
@given(picofarads=st.floats(min_value=0.0, max_value=111.0), capdac=st.integers(0, 31))
def test_driver_reading_emulator_reproduces_the_model(picofarads, capdac):
    clock, bus, _ = make_patch(lambda: picofarads)
    sensor = FDC1004(bus, capdac=capdac)
    femtofarads = measure(sensor, clock)
    # Quantisation only: half a 24-bit LSB (0.95 aF), then the 1 fF wire unit.
    assert abs(femtofarads - picofarads * 1000) <= 0.5 + 0.001


# --- emulator ------------------------------------------------------------------------------
def test_emulator_reset_values():
    _, bus, _ = make_patch()
    assert [word(bus, r) for r in range(0x08, 0x0C)] == [0x1C00] * 4
    assert word(bus, 0x0C) == 0x0000
    assert [word(bus, r) for r in range(0x0D, 0x11)] == [0] * 4
    assert [word(bus, r) for r in range(0x11, 0x15)] == [0x4000] * 4
    assert word(bus, 0xFE) == 0x5449 and word(bus, 0xFF) == 0x1004


def test_emulator_repeat_mode_sequence_calibration_and_reset():
    clock, bus, emulator = make_patch(
        lambda: 5.0, other_inputs=(lambda: 4.0, lambda: 0.0, lambda: 0.0)
    )
    bus.writeto_mem(0x50, 0x08, (0x1C00).to_bytes(2, "big"))  # CIN1 single-ended, no CAPDAC
    bus.writeto_mem(0x50, 0x09, ((0 << 13) | (1 << 10)).to_bytes(2, "big"))  # CIN1 - CIN2
    bus.writeto_mem(0x50, 0x0D, (2048).to_bytes(2, "big"))  # CIN1 offset +1 pF
    bus.writeto_mem(0x50, 0x11, (0x8000).to_bytes(2, "big"))  # CIN1 gain 2.0
    bus.writeto_mem(0x50, 0x0C, (0x0400 | 0x0100 | 0x80 | 0x40).to_bytes(2, "big"))  # repeat 1+2
    clock.advance(10)
    assert word(bus, 0x0C) & 0x0F == 0b1000  # measurement 1 first
    clock.advance(10)
    assert word(bus, 0x0C) & 0x0F == 0b1100
    assert registers_to_result(word(bus, 0x00), word(bus, 0x01)) == 11 << 19  # 2 x 5 + 1
    assert registers_to_result(word(bus, 0x02), word(bus, 0x03)) == 3 << 19  # 2 x (5 - 4) + 1
    assert word(bus, 0x0C) & 0x0F == 0  # both read
    clock.advance(1000)
    assert word(bus, 0x0C) & 0x0F == 0b1100
    assert emulator.measurements == 2 + 2  # only the observable last round is computed
    bus.writeto_mem(0x50, 0x0C, b"\x80\x00")  # RST
    assert word(bus, 0x0C) == 0 and word(bus, 0x11) == 0x4000 and word(bus, 0x0D) == 0


def test_emulator_saturates_at_full_scale():
    clock, bus, _ = make_patch(lambda: 40.0)
    bus.writeto_mem(0x50, 0x0C, b"\x04\x80")
    clock.advance(10)
    assert bus.readfrom_mem(0x50, 0x00, 2) == b"\x7f\xff"
    assert bus.readfrom_mem(0x50, 0x01, 2) == b"\xff\x00"


def test_emulator_rejects_driver_bugs_loudly():
    _, bus, _ = make_patch()
    with pytest.raises(ValueError, match="no register 0x15"):
        bus.readfrom_mem(0x50, 0x15, 2)
    with pytest.raises(ValueError, match="read-only"):
        bus.writeto_mem(0x50, 0xFF, b"\x00\x00")
    with pytest.raises(ValueError, match="read of 3 bytes"):
        bus.readfrom_mem(0x50, 0x00, 3)


# --- MicroPython ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["sensor_drivers/fdc1004.py", "sensor_drivers/emulators/fdc1004.py"]
)
def test_files_compile_with_mpy_cross(path, tmp_path):
    result = compile_with_mpy_cross(path, tmp_path)
    assert result.returncode == 0, result.stderr


SCENARIO = on_virtual_bus("""
from sensor_drivers.emulators.fdc1004 import FDC1004Emulator
from sensor_drivers.fdc1004 import FDC1004

value = [0.0]
bus.attach(FDC1004Emulator(lambda: value[0]))
sensor = FDC1004(bus)
worst = 0
re_ranged = 0
for step in range(56):
    value[0] = (step * 37) % 111 + 0.123  # jumps across the whole range
    for attempt in range(5):
        clock.advance(sensor.start())
        try:
            femtofarads = sensor.read_raw()
            break
        except SensorError as error:
            re_ranged += 1
            if step % 10 == 1:
                print(error)
    worst = max(worst, abs(femtofarads - value[0] * 1000))
    if step % 10 == 0:
        print(step, femtofarads, sensor.capdac)
print("worst error within 0.5 fF:", worst <= 0.501, "re-ranged:", re_ranged)
wrong = VirtualI2C(clock)
wrong.attach(FDC1004Emulator(lambda: 1.0, device_id=0x3055))
try:
    FDC1004(wrong)
except SensorError as error:
    print(error)
""")


def test_scenario_runs_identically_under_micropython(micropython):
    lines = run_on_cpython(SCENARIO)
    assert lines[0] == "0 123 0"  # re-centred: CAPDAC 4 was 12.4 pF away
    assert any(line.startswith("worst error within 0.5 fF: True re-ranged:") for line in lines)
    assert lines[-1] == "FDC1004 at 0x50: device id 0x3055, expected 0x1004"
    assert any("CAPDAC moved to" in line for line in lines)
    assert micropython(SCENARIO).splitlines() == lines


# Runs after fixed_register_bus(...), which defines `bus`.
SENSOR = """
from sensor_drivers.fdc1004 import FDC1004

sensor = FDC1004(bus, capdac=20, auto_range=False)
"""


def test_driver_hot_path_allocates_nothing_under_micropython(micropython):
    # MEAS1 = -0x7FFFFF: the largest magnitude inside the range check's arithmetic
    registers = {0x00: 0x8D00, 0x01: 0x0100, 0x0C: 0x0488, 0xFE: 0x5449, 0xFF: 0x1004}
    code = fixed_register_bus(0x50, registers) + SENSOR + POLL_READ_RAW_UNDER_HEAP_LOCK
    # 0x8D0001 = -7536639 LSB = -14.375 pF (+1.9 aF); + 20 x 3.125 pF = 48.125 pF
    assert micropython(code).splitlines() == ["48125"]
