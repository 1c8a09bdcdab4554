"""The twin predicts: a UV warning before MED, a time-of-day baseline that does not mistake the
day's swing for an anomaly yet finds a fever, exertion and a loose patch told apart from
fever, a hydration trend and a drying alert. Real ONNX models, the environment model's sun."""

from __future__ import annotations

import calendar
import math

import numpy as np
import pytest

from gateway.inference import default_models_dir, load_models
from gateway.temp_baseline import TimeOfDayBaseline
from gateway.twin import SubjectTwin, TwinEngine
from gateway.values import SampleBatch
from sensor_drivers.environment_model import PatchEnvironment

TEMP, UV, HYDRATION = 0, 1, 2
SCALE = {TEMP: 128.0, UV: 100.0, HYDRATION: 1000.0}     # wire LSB per SI unit
MIDSUMMER_MS = calendar.timegm((2026, 6, 21, 0, 0, 0)) * 1000
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def run_model():
    models = load_models(default_models_dir())
    return lambda name, inputs: models[name].run(inputs)


class Feed:
    """One device's samples, in seq order, as the ingest cycle hands them to the engine."""

    def __init__(self, engine: TwinEngine, device: str = "dev-a"):
        self.engine, self.device, self.seq = engine, device, 0

    def send(self, rows: list[tuple[int, int, float]]) -> None:
        rows = sorted(rows)
        n = len(rows)
        self.engine.ingest(SampleBatch(
            device_id=self.device, boot_id=1,
            seq=np.arange(self.seq, self.seq + n, dtype=np.int64),
            tick=np.arange(n, dtype=np.int64),
            utc_ms=np.array([r[0] for r in rows], dtype=np.int64),
            channel=np.array([r[1] for r in rows], dtype=np.uint8),
            value=np.array([round(r[2] * SCALE[r[1]]) for r in rows], dtype=np.int32)))
        self.seq += n


def capacitance_pf(au: float, skin_c: float = 32.0) -> float:
    """The inverse of models_onnx' hydration model: the reading that gives `au`."""
    return 10.0 + au / (20.0 * (1 + 0.00454 * (skin_c - 32.0)))


def test_uv_forecast_warns_before_med_not_after(run_model):
    # Skin type I (MED 2 SED) outdoors from 10:00 under a clear midsummer sky at 45 N, 0 E.
    env = PatchEnvironment(seed=3, latitude_deg=45.0, day_of_year=172)
    engine = TwinEngine(1, {"dev-a": "s-1"}, run_model, med_sed_of={"s-1": 2.0},
                        location=(45.0, 0.0))
    feed = Feed(engine)
    forecast_at = med_at = None
    fraction_at_warning = None
    for minute in range(10 * 60, 13 * 60):
        t_s = minute * 60
        feed.send([(MIDSUMMER_MS + (t_s + k) * 1000, UV, env.uv_index_at(t_s + k))
                   for k in range(0, 60, 5)])
        for update in engine.step(now_ms=MIDSUMMER_MS + t_s * 1000):
            state = engine.twins["s-1"].state
            for alert in update.alerts:
                if alert["kind"] == "uv_forecast" and forecast_at is None:
                    forecast_at = minute
                    fraction_at_warning = state["uv_med_fraction"]["v"]
            if med_at is None and state.get("uv_med_fraction", {}).get("v", 0) >= 1.0:
                med_at = minute
    assert forecast_at is not None, "no uv_forecast alert"
    assert med_at is not None, "the scenario never reached MED"
    assert fraction_at_warning < 0.8           # earlier than the 1.x alert at 80 % of MED
    assert 10 <= med_at - forecast_at <= 35    # warned ahead, about the 30 minutes asked


def test_uv_forecast_knows_the_sun_sets():
    from gateway.uv_forecast import UvForecaster, clear_sky_uvi

    forecaster = UvForecaster(45.0, 0.0)
    evening = MIDSUMMER_MS + 18 * HOUR_MS
    for k in range(30):
        t = evening + k * 60_000
        forecaster.observe(t, clear_sky_uvi(45.0, 0.0, t))
    # Out in the evening sun all along, a type VI wearer (10 SED) will not burn today.
    assert forecaster.minutes_to_med(evening + 30 * 60_000, 0.1, 10.0) is None
    with pytest.raises(ValueError, match="latitude_deg"):
        UvForecaster(95.0, 0.0)


def _day_of_temps(day: int, swing_c: float, extra=lambda h: 0.0):
    """10 s samples of a day: a circadian swing peaking at 04:00, plus `extra(hour)`."""
    rows = []
    for k in range(0, 86_400, 10):
        hour = k / 3600
        celsius = 33.0 + swing_c * math.cos(2 * math.pi * (hour - 4) / 24) + extra(hour)
        rows.append((MIDSUMMER_MS + day * 86_400_000 + k * 1000, TEMP, celsius))
    return rows


def _run_day(engine, feed, rows, hydration_au=50.0, every_s=600):
    """Feed a day in 10-minute cycles (hydration every minute); scores and alerts out."""
    scores, alerts = [], []
    for start in range(0, len(rows), every_s // 10):
        chunk = rows[start:start + every_s // 10]
        t0 = chunk[0][0]
        hyd = [(t0 + m * 60_000, HYDRATION, capacitance_pf(
            hydration_au(t0 + m * 60_000) if callable(hydration_au) else hydration_au))
            for m in range(every_s // 60)]
        feed.send(chunk + hyd)
        for update in engine.step(now_ms=chunk[-1][0]):
            alerts += update.alerts
        state = engine.twins["s-1"].state
        scores.append((chunk[-1][0], state["temp_anomaly_score"]["v"], dict(state)))
    return scores, alerts


def test_time_of_day_baseline_ignores_the_daily_swing_and_finds_a_fever(run_model):
    engine = TwinEngine(1, {"dev-a": "s-1"}, run_model)
    feed = Feed(engine)
    swing = 1.2                   # a 2.4 degC day-night range: large but normal distal skin
    _run_day(engine, feed, _day_of_temps(0, swing))
    assert engine.twins["s-1"].temp_baseline.learned
    scores, _ = _run_day(engine, feed, _day_of_temps(1, swing))
    assert max(s for _, s, _ in scores) < 1.0, "the daily swing was taken for an anomaly"
    assert scores[-1][2]["temp_anomaly_score"]["q"] == "good"

    def fever(hour):              # skin +1.2 degC from 14:00, over an hour's ramp
        return 0.0 if hour < 14 else min(1.0, hour - 14) * 1.2
    scores, _ = _run_day(engine, feed, _day_of_temps(2, swing, fever))
    first = next(t for t, s, _ in scores if s >= 1.0)
    onset = MIDSUMMER_MS + 2 * 86_400_000 + 14 * HOUR_MS
    assert onset < first <= onset + HOUR_MS
    # The fever is not learned away: hours later it still shows.
    assert scores[-1][1] >= 1.5


def test_exertion_and_a_loose_patch_are_not_anomalies(run_model):
    engine = TwinEngine(1, {"dev-a": "s-1"}, run_model)
    feed = Feed(engine)
    _run_day(engine, feed, _day_of_temps(0, 0.5))
    day1 = MIDSUMMER_MS + 86_400_000

    def sweaty(t):                # sweat during 10:00-11:00: the Corneometer reads wet skin
        return 75.0 if day1 + 10 * HOUR_MS <= t < day1 + 11 * HOUR_MS else 50.0

    def warm(hour):               # skin +1.3 degC while exercising
        return 1.3 if 10 <= hour < 11 else 0.0
    scores, alerts = _run_day(engine, feed, _day_of_temps(1, 0.5, warm), hydration_au=sweaty)
    during = [(s, st) for t, s, st in scores if day1 + 10.3 * HOUR_MS < t < day1 + 11 * HOUR_MS]
    assert during and all(s == 0.0 for s, _ in during)
    assert all(st["exertion"]["v"] for _, st in during)

    day2 = day1 + 86_400_000

    def off_skin(t):              # 15:00-17:00 the electrode has lost the skin
        return 0.3 if day2 + 15 * HOUR_MS <= t < day2 + 17 * HOUR_MS else 50.0

    def cooled(hour):             # ...and the sensor sits in 24 degC air under the clothing
        return -9.0 if 15.2 <= hour < 17 else 0.0
    scores, alerts = _run_day(engine, feed, _day_of_temps(2, 0.5, cooled), hydration_au=off_skin)
    loose = [st for t, _, st in scores if day2 + 15.5 * HOUR_MS < t < day2 + 17 * HOUR_MS]
    assert loose and all(st["contact"]["v"] == "loose" for st in loose)
    assert all(st["temp_anomaly_score"]["v"] == 0.0 for st in loose)
    kinds = [(a["kind"], a["active"]) for a in alerts]
    assert ("patch_loose", True) in kinds and ("patch_loose", False) in kinds
    assert not any(k == "inflammation" for k, _ in kinds)
    assert scores[-1][2]["contact"]["v"] == "skin"


def test_hydration_trend_and_drying_alert(run_model):
    engine = TwinEngine(1, {"dev-a": "s-1"}, run_model)
    feed = Feed(engine)
    t0 = MIDSUMMER_MS + 8 * HOUR_MS
    alerts, trends = [], []

    def hydration_at(minute):
        if minute < 120:                  # steady at 55 AU
            return 55.0
        if minute < 240:                  # a bath: +30 AU drying off back to 55 (no alert)
            return 55.0 + 30.0 * math.exp(-(minute - 120) / 25)
        if minute < 300:
            return 55.0
        return 55.0 - 12.0 * (minute - 300) / 60   # then drying out at 12 AU/h

    for minute in range(0, 420, 5):
        t = t0 + minute * 60_000
        feed.send([(t, TEMP, 32.0), (t + 1, HYDRATION, capacitance_pf(hydration_at(minute)))])
        for update in engine.step(now_ms=t):
            alerts += [(minute, a) for a in update.alerts if a["kind"] == "drying"]
        trend = engine.twins["s-1"].state.get("hydration_trend_au_per_h")
        if trend:
            trends.append((minute, trend["v"]))
    assert dict(trends)[115] == pytest.approx(0.0, abs=0.5)
    assert trends[-1][1] == pytest.approx(-12.0, abs=1.0)
    assert [(m >= 300, a["active"]) for m, a in alerts] == [(True, True)], alerts
    minute, alert = alerts[0]
    assert alert["trend_au_per_h"] <= -5.0 and alert["hydration_au"] < 55.0
    assert minute <= 300 + 60            # within the hour


def test_baseline_state_survives_a_restart():
    baseline = TimeOfDayBaseline()
    for k in range(0, 2 * 86_400, 60):
        baseline.observe(MIDSUMMER_MS + k * 1000, 33.0 + math.sin(k / 13_751))
    twin = SubjectTwin("s-1", 4)
    twin.temp_baseline = baseline
    again = SubjectTwin.from_saved("s-1", 4, twin.to_saved())
    for hour in range(24):
        t = MIDSUMMER_MS + 3 * 86_400_000 + hour * HOUR_MS
        assert again.temp_baseline.expected(t) == baseline.expected(t)
    assert again.temp_baseline.learned
