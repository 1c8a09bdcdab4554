"""All four patch chips on one virtual I2C bus: every fault gives a prompt, clear error
naming the chip and its address, and the other chips keep working."""

import time

import pytest

from sensor_drivers.emulators.fdc1004 import FDC1004Emulator
from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C
from sensor_drivers.emulators.ltr390 import LTR390Emulator
from sensor_drivers.emulators.max17048 import MAX17048Emulator
from sensor_drivers.emulators.tmp117 import TMP117Emulator
from sensor_drivers.errors import SensorError
from sensor_drivers.fdc1004 import FDC1004
from sensor_drivers.ltr390 import LTR390
from sensor_drivers.max17048 import MAX17048
from sensor_drivers.tmp117 import TMP117

NORMAL = {"temp_c": 33.5, "uvi": 6.25, "pf": 13.25, "volts": 3.9, "soc": 70.0}
EXPECTED_RAW = {
    "TMP117": round(33.5 * 128),
    "LTR390": 625,
    "FDC1004": 13250,
    "MAX17048": 70 * 256,
}
ADDRESSES = {"TMP117": 0x48, "LTR390": 0x53, "FDC1004": 0x50, "MAX17048": 0x36}
DRIVERS = {"TMP117": TMP117, "LTR390": LTR390, "FDC1004": FDC1004, "MAX17048": MAX17048}
CHIPS = list(ADDRESSES)


def make_emulator(name, values, **kwargs):
    if name == "TMP117":
        return TMP117Emulator(lambda: values["temp_c"], **kwargs)
    if name == "LTR390":
        return LTR390Emulator(lambda: values["uvi"], **kwargs)
    if name == "FDC1004":
        return FDC1004Emulator(lambda: values["pf"], **kwargs)
    return MAX17048Emulator(lambda: values["volts"], lambda: values["soc"], **kwargs)


def make_bus(clock=None, skip=(), id_overrides=None):
    clock = clock if clock is not None else ManualClock(0)
    bus = VirtualI2C(clock)
    values = dict(NORMAL)
    for name in CHIPS:
        if name not in skip:
            bus.attach(make_emulator(name, values, **(id_overrides or {}).get(name, {})))
    if isinstance(clock, ManualClock):
        clock.advance(300)  # past the fuel gauge's first conversion
    return clock, bus, values


def sample(driver, clock):
    """One start/ready/read cycle the way the firmware's sampler runs it."""
    wait_ms = driver.start_oneshot()
    if isinstance(clock, ManualClock):
        clock.advance(wait_ms)
    else:
        time.sleep(wait_ms / 1000)
    assert driver.ready()
    return driver.read_raw()


def check_others_work(drivers, clock, broken):
    for name, driver in drivers.items():
        if name != broken:
            assert sample(driver, clock) == EXPECTED_RAW[name], name


def test_all_four_read_the_environment_when_healthy():
    clock, bus, _ = make_bus()
    assert bus.scan() == [0x36, 0x48, 0x50, 0x53]
    drivers = {name: DRIVERS[name](bus) for name in CHIPS}
    check_others_work(drivers, clock, broken=None)


@pytest.mark.parametrize("broken", CHIPS)
def test_missing_chip_names_it_and_the_others_work(broken):
    clock, bus, _ = make_bus(skip=(broken,))
    started = time.monotonic()
    with pytest.raises(SensorError) as caught:
        DRIVERS[broken](bus)
    assert time.monotonic() - started < 0.5
    text = str(caught.value)
    assert text.startswith(f"{broken} at 0x{ADDRESSES[broken]:02X}: no ACK (OSError 19) reading ")
    assert caught.value.chip == broken and caught.value.address == ADDRESSES[broken]
    drivers = {name: DRIVERS[name](bus) for name in CHIPS if name != broken}
    check_others_work(drivers, clock, broken)


WRONG_IDS = {
    "TMP117": ({"device_id": 0x0190}, "TMP117 at 0x48: device id 0x0190, expected 0x0117"),
    "LTR390": ({"part_id": 0x1C}, "LTR390 at 0x53: part id 0x1C, expected 0xB2"),
    "FDC1004": ({"device_id": 0x3055}, "FDC1004 at 0x50: device id 0x3055, expected 0x1004"),
    "MAX17048": ({"version": 0x0003}, "MAX17048 at 0x36: version 0x0003, expected 0x001X"),
}


@pytest.mark.parametrize("broken", CHIPS)
def test_wrong_chip_names_what_it_read_and_the_others_work(broken):
    overrides, message = WRONG_IDS[broken]
    clock, bus, _ = make_bus(id_overrides={broken: overrides})
    with pytest.raises(SensorError) as caught:
        DRIVERS[broken](bus)
    assert str(caught.value) == message
    assert caught.value.bus_errno is None
    drivers = {name: DRIVERS[name](bus) for name in CHIPS if name != broken}
    check_others_work(drivers, clock, broken)


@pytest.mark.parametrize("broken", CHIPS)
def test_nack_names_the_chip_the_others_work_and_it_recovers(broken):
    clock, bus, _ = make_bus()
    drivers = {name: DRIVERS[name](bus) for name in CHIPS}
    address = ADDRESSES[broken]
    bus.nack_always(address)
    calls = [drivers[broken].ready, drivers[broken].read_raw]
    if broken != "MAX17048":  # the fuel gauge has nothing to trigger: start() is bus-free
        calls.append(drivers[broken].start_oneshot)
    for call in calls:
        started = time.monotonic()
        with pytest.raises(SensorError) as caught:
            call()
        assert time.monotonic() - started < 0.5
        assert str(caught.value).startswith(f"{broken} at 0x{address:02X}: no ACK (OSError 19) ")
    check_others_work(drivers, clock, broken)
    bus.clear_faults()
    assert sample(drivers[broken], clock) == EXPECTED_RAW[broken]


def test_stuck_bus_times_out_for_every_chip_and_all_recover():
    bus = VirtualI2C(timeout_ms=50)  # real clock and real sleep: a hang would show
    values = dict(NORMAL)
    for name in CHIPS:
        bus.attach(make_emulator(name, values))
    time.sleep(0.3)  # the fuel gauge's first conversion
    drivers = {name: DRIVERS[name](bus) for name in CHIPS}
    bus.stick()
    for name, driver in drivers.items():
        started = time.monotonic()
        with pytest.raises(SensorError) as caught:
            driver.ready()
        elapsed_s = time.monotonic() - started
        assert 0.04 <= elapsed_s < 1.0, name
        assert str(caught.value).startswith(
            f"{name} at 0x{ADDRESSES[name]:02X}: bus timeout (OSError 110) "
        )
        assert caught.value.bus_errno == 110
    bus.release()
    for name, driver in drivers.items():
        assert sample(driver, None) == EXPECTED_RAW[name], name


OUT_OF_RANGE = {
    "LTR390": ("uvi", 1000.0, "LTR390 at 0x53: UVS count 262143 is full scale"),
    "FDC1004": ("pf", 500.0, "FDC1004 at 0x50: capacitance out of range, above"),
    "MAX17048": ("soc", 300.0, "MAX17048 at 0x36: SOC reads full scale 0xFFFF"),
}


@pytest.mark.parametrize("broken", list(OUT_OF_RANGE))
def test_out_of_range_value_names_the_chip_and_the_others_work(broken):
    key, value, message = OUT_OF_RANGE[broken]
    clock, bus, values = make_bus()
    drivers = {name: DRIVERS[name](bus) for name in CHIPS}
    values[key] = value
    if broken == "MAX17048":
        clock.advance(45_000)  # the next conversion in hibernate
    with pytest.raises(SensorError) as caught:
        sample(drivers[broken], clock)
    assert str(caught.value).startswith(message)
    check_others_work(drivers, clock, broken)
    values[key] = NORMAL[key]
    if broken == "MAX17048":
        clock.advance(45_000)
    for _ in range(5):  # the FDC1004 first walks its CAPDAC back
        try:
            assert sample(drivers[broken], clock) == EXPECTED_RAW[broken]
            break
        except SensorError as error:
            assert "CAPDAC moved" in str(error)
    else:
        raise AssertionError(f"{broken} did not recover")


def test_tmp117_out_of_range_temperature_is_clamped_not_an_error():
    # The TMP117 (not part of this change) reports its operating-range limit, as the chip does.
    clock, bus, values = make_bus()
    drivers = {name: DRIVERS[name](bus) for name in CHIPS}
    values["temp_c"] = 400.0
    assert sample(drivers["TMP117"], clock) == 150 * 128
    check_others_work(drivers, clock, "TMP117")
