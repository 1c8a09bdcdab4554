"""Evaluate the twin's models on the held-out virtual cohort and write the cards' tables.

    python models_onnx/evaluate.py [--cohort build/cohort] [--write-cards] [--check]

Runs the shipped .onnx files (onnxruntime, batched) and the gateway's own sans-I/O state
(gateway/temp_baseline.py, gateway/uv_forecast.py) over every `test` subject of a cohort
made by `python -m simulation.cohort`, exactly as the twin feeds them sample by sample.
`--write-cards` replaces the block between `<!-- eval:NAME -->` and `<!-- /eval:NAME -->`
in models_onnx/cards/NAME.md; `--check` exits 1 when a card's block differs from a fresh
evaluation (`make eval` rebuilds the cohort and writes them).

Temperature anomaly, both models under one alert rule: the alert is active while
anomaly_score >= 1 (a 0.6 degC rise); runs of active samples closer than
`MERGE_GAP_S` are one alert, and an alert shorter than `MIN_ALERT_S` is not raised.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.temp_baseline import HydrationExcess, TimeOfDayBaseline  # noqa: E402

CARDS = ROOT / "models_onnx" / "cards"
TEMP_WINDOW = 30
THRESHOLD_BASELINE_WEIGHT = 1 / 360   # temp_anomaly 1.x: the twin's running mean (~1 h)
MERGE_GAP_S = 600
MIN_ALERT_S = 300
DAY_S = 86_400
# An alert up to 2 h after a positive episode ends still belongs to it (recovery tail).
POSITIVE_TAIL_S = 7200


@dataclass
class Alert:
    start_s: float
    end_s: float


def _runs(t: np.ndarray, active: np.ndarray) -> list[Alert]:
    alerts: list[Alert] = []
    on = np.flatnonzero(active)
    if len(on) == 0:
        return alerts
    start = prev = t[on[0]]
    for x in t[on[1:]]:
        if x - prev > MERGE_GAP_S:
            alerts.append(Alert(start, prev))
            start = x
        prev = x
    alerts.append(Alert(start, prev))
    return [a for a in alerts if a.end_s - a.start_s >= MIN_ALERT_S]


def _windows(values: np.ndarray) -> np.ndarray:
    padded = np.concatenate([np.full(TEMP_WINDOW - 1, values[0]), values]).astype(np.float32)
    return np.lib.stride_tricks.sliding_window_view(padded, TEMP_WINDOW).copy()


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString() if hasattr(model, "SerializeToString")
                                else str(model), options, providers=["CPUExecutionProvider"])


def threshold_outputs(t_s: np.ndarray, temp: np.ndarray) -> dict[str, np.ndarray]:
    """temp_anomaly 1.0.0 on the twin's 1.x running-mean baseline."""
    from models_onnx.build_models import build_temp_anomaly_threshold

    baseline = np.empty_like(temp)
    b = float(temp[0])
    for i, v in enumerate(temp.tolist()):
        b += THRESHOLD_BASELINE_WEIGHT * (v - b)
        baseline[i] = b
    session = _session(build_temp_anomaly_threshold())
    out = session.run(None, {"temp_window_c": _windows(temp),
                             "baseline_c": baseline.astype(np.float32)[:, None]})
    names = [o.name for o in session.get_outputs()]
    return {n: o[:, 0] for n, o in zip(names, out, strict=True)}


def personal_outputs(t_s: np.ndarray, temp: np.ndarray, hyd_t: np.ndarray,
                     hyd: np.ndarray, model_path: Path) -> dict[str, np.ndarray]:
    """temp_anomaly 2.x fed as the twin feeds it: time-of-day baseline, hydration excess."""
    tod, excess = TimeOfDayBaseline(), HydrationExcess()
    n = len(temp)
    baseline = np.empty(n, dtype=np.float32)
    hydration = np.empty(n, dtype=np.float32)
    hydration_excess = np.empty(n, dtype=np.float32)
    j = 0
    for i, (t, v) in enumerate(zip(t_s.tolist(), temp.tolist(), strict=True)):
        while j < len(hyd_t) and hyd_t[j] <= t:
            excess.observe(float(hyd[j]))
            j += 1
        tod.observe(int(t * 1000), v)
        baseline[i] = tod.expected(int(t * 1000))
        hydration[i] = excess.latest if excess.latest is not None else 50.0
        hydration_excess[i] = excess.excess_au
    session = _session(model_path)
    out = session.run(None, {"temp_window_c": _windows(temp), "baseline_c": baseline[:, None],
                             "hydration_au": hydration[:, None],
                             "hydration_excess_au": hydration_excess[:, None]})
    names = [o.name for o in session.get_outputs()]
    return {n: o[:, 0] for n, o in zip(names, out, strict=True)}


def load_cohort(path: Path):
    import pyarrow.parquet as pq

    subjects = pq.read_table(path / "subjects.parquet").to_pylist()
    episodes = pq.read_table(path / "episodes.parquet").to_pylist()
    samples = pq.read_table(path / "samples.parquet")
    return subjects, episodes, samples


def _series(samples, subject: str, prop: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    mask = pc.and_(pc.equal(pc.cast(samples["subject"], "string"), subject),
                   pc.equal(pc.cast(samples["property"], "string"), prop))
    rows = samples.filter(mask)
    return (rows["t_s"].to_numpy().astype(np.float64),
            rows["value"].to_numpy().astype(np.float64))


def evaluate_temp_anomaly(cohort: Path) -> dict:
    subjects, episodes, samples = load_cohort(cohort)
    test = [s for s in subjects if s["split"] == "test"]
    days = int(samples["t_s"].to_numpy().max() // DAY_S) + 1
    model_path = ROOT / "models_onnx" / "temp_anomaly.onnx"
    result = {"subjects": len(test), "days": days, "models": {}}
    per_model = {"threshold 1.0 (running mean)": {}, "personal 2.0 (time of day + hydration)": {}}
    for name in per_model:
        per_model[name] = {"detected": {}, "delays_min": {}, "false": {}, "loose_hits": 0,
                           "loose_false": 0}
    loose_total = 0
    positives_total: dict[str, int] = {}
    for subject in test:
        sid = subject["subject"]
        t, temp = _series(samples, sid, "skin_temp_c")
        hyd_t, hyd = _series(samples, sid, "hydration_au")
        mine = [e for e in episodes if e["subject"] == sid]
        positive = [e for e in mine if e["positive"]]
        for e in positive:
            positives_total[e["kind"]] = positives_total.get(e["kind"], 0) + 1
        loose = [e for e in mine if e["kind"] == "loose"]
        loose_total += len(loose)
        outputs = {
            "threshold 1.0 (running mean)": threshold_outputs(t, temp),
            "personal 2.0 (time of day + hydration)": personal_outputs(t, temp, hyd_t, hyd,
                                                                       model_path),
        }
        for name, out in outputs.items():
            stats = per_model[name]
            alerts = _runs(t, out["anomaly_score"] >= 1.0)
            for e in positive:
                hit = [a for a in alerts if a.end_s >= e["start_s"] and a.start_s <= e["end_s"]]
                if hit:
                    stats["detected"][e["kind"]] = stats["detected"].get(e["kind"], 0) + 1
                    first = max(hit[0].start_s, e["start_s"])
                    stats["delays_min"].setdefault(e["kind"], []).append(
                        (first - e["start_s"]) / 60)
            for a in alerts:
                if a.start_s < DAY_S:        # the first day is every baseline's warm-up
                    continue
                if any(a.end_s >= e["start_s"] and a.start_s <= e["end_s"] + POSITIVE_TAIL_S
                       for e in positive):
                    continue
                cause = "other"
                for e in mine:
                    if e["kind"] in ("exercise", "bath", "outdoor", "sunscreen", "loose") and \
                            a.end_s >= e["start_s"] and a.start_s <= e["end_s"] + 1800:
                        cause = e["kind"]
                        break
                stats["false"][cause] = stats["false"].get(cause, 0) + 1
            if "detached" in out:
                detached = _runs(t, out["detached"] > 0.5)
                for e in loose:
                    if any(a.end_s >= e["start_s"] and a.start_s <= e["end_s"] for a in detached):
                        stats["loose_hits"] += 1
                stats["loose_false"] += sum(
                    1 for a in detached if not any(a.end_s >= e["start_s"] and
                                                   a.start_s <= e["end_s"] + 1800 for e in loose))
    subject_days = len(test) * max(days - 1, 1)
    for name, stats in per_model.items():
        detected = sum(stats["detected"].values())
        total = sum(positives_total.values())
        delays = [d for ds in stats["delays_min"].values() for d in ds]
        result["models"][name] = {
            "sensitivity": detected / total if total else float("nan"),
            "by_kind": {k: (stats["detected"].get(k, 0), n) for k, n in positives_total.items()},
            "median_delay_min": statistics.median(delays) if delays else float("nan"),
            "delay_by_kind": {k: statistics.median(v) for k, v in stats["delays_min"].items()},
            "false_per_subject_day": sum(stats["false"].values()) / subject_days,
            "false_by_cause": dict(sorted(stats["false"].items())),
            "loose": (stats["loose_hits"], loose_total, stats["loose_false"]),
        }
    return result


UV_ALERT_MINUTES = 30.0          # gateway/twin.py: forecast MED within 30 min
UV_80_FRACTION = 0.8             # the 1.x alert: 80 % of MED reached


def _utc_ms(subject: dict, t_s: np.ndarray) -> np.ndarray:
    """Cohort time (local solar seconds from day 1's midnight) -> UTC ms, in 2026."""
    import calendar

    year_ms = calendar.timegm((2026, 1, 1, 0, 0, 0)) * 1000
    day1_ms = year_ms + (subject["day_of_year"] - 1) * 86_400_000
    offset_ms = subject["longitude_deg"] / 15 * 3_600_000
    return (day1_ms + t_s * 1000 - offset_ms).astype(np.int64)


def evaluate_uv(cohort: Path) -> dict:
    """Per subject-day that reaches MED: is the wearer warned before, and how early?

    Three warnings compared: the forecast (gateway/uv_forecast.py) saying MED within 30 min;
    the current-rate extrapolation (uv_dose's minutes_to_med) saying the same; and the 1.x
    alert at 80 % of MED."""
    from gateway.uv_forecast import ERYTHEMAL_W_M2_PER_UVI, SED_J_M2, UvForecaster

    subjects, _, samples = load_cohort(cohort)
    test = [s for s in subjects if s["split"] == "test"]
    methods = ("forecast", "current rate", "80 % of MED")
    leads: dict[str, list[float]] = {m: [] for m in methods}
    warned = {m: 0 for m in methods}
    false = {m: 0 for m in methods}
    med_days = days_total = 0
    for subject in test:
        t, uvi = _series(samples, subject["subject"], "uv_index")
        utc = _utc_ms(subject, t)
        med = subject["med_sed"]
        forecaster = UvForecaster(subject["latitude_deg"], subject["longitude_deg"])
        day_index = (t // DAY_S).astype(int)
        for day in np.unique(day_index):
            rows = np.flatnonzero(day_index == day)
            days_total += 1
            dose = 0.0
            first: dict[str, float | None] = {m: None for m in methods}
            med_at = None
            for k, i in enumerate(rows.tolist()):
                forecaster.observe(int(utc[i]), float(uvi[i]))
                dt = 60.0 if k else 0.0
                rate = float(uvi[rows[k - 1]] if k else 0.0) * ERYTHEMAL_W_M2_PER_UVI / SED_J_M2
                dose += rate * dt
                if med_at is None and dose >= med:
                    med_at = t[i]
                if med_at is not None:
                    continue
                now_rate = float(uvi[i]) * ERYTHEMAL_W_M2_PER_UVI / SED_J_M2
                if first["forecast"] is None:
                    minutes = forecaster.minutes_to_med(int(utc[i]), dose, med)
                    if minutes is not None and minutes <= UV_ALERT_MINUTES:
                        first["forecast"] = t[i]
                if first["current rate"] is None and now_rate > 0 and \
                        (med - dose) / now_rate / 60 <= UV_ALERT_MINUTES:
                    first["current rate"] = t[i]
                if first["80 % of MED"] is None and dose >= UV_80_FRACTION * med:
                    first["80 % of MED"] = t[i]
            if med_at is not None:
                med_days += 1
            for method in methods:
                if first[method] is None:
                    continue
                if med_at is None:
                    false[method] += 1
                else:
                    warned[method] += 1
                    leads[method].append((med_at - first[method]) / 60)
    return {"subjects": len(test), "days": days_total, "med_days": med_days,
            "methods": {m: {"warned": warned[m], "median_lead_min":
                            statistics.median(leads[m]) if leads[m] else float("nan"),
                            "min_lead_min": min(leads[m]) if leads[m] else float("nan"),
                            "false": false[m]} for m in methods}}


def evaluate_drying(cohort: Path) -> dict:
    """The twin's `drying` alert, fed through TwinEngine itself (real hydration model),
    against the cohort's drying episodes; other alerts are attributed to what they overlap."""
    from gateway.inference import default_models_dir, load_models
    from gateway.twin import TwinEngine
    from gateway.values import SampleBatch

    models = load_models(default_models_dir())
    subjects, episodes, samples = load_cohort(cohort)
    test = [s for s in subjects if s["split"] == "test"]
    found = total = 0
    false: dict[str, int] = {}
    days = 0
    for subject in test:
        sid = subject["subject"]
        engine = TwinEngine(1, {"d": sid}, lambda n, i: models[n].run(i))
        t_temp, temp = _series(samples, sid, "skin_temp_c")
        t_hyd, hyd = _series(samples, sid, "hydration_au")
        days += int(t_hyd.max() // DAY_S) + 1
        # The reading the patch would send for that hydration at that skin temperature.
        skin = np.interp(t_hyd, t_temp, temp)
        pf = 10.0 + hyd / (20.0 * (1 + 0.00454 * (skin - 32.0)))
        alerts = []
        for k in range(len(t_hyd)):
            utc = int(t_hyd[k] * 1000)
            engine.ingest(SampleBatch(
                device_id="d", boot_id=1, seq=np.array([2 * k, 2 * k + 1], dtype=np.int64),
                tick=np.zeros(2, dtype=np.int64), utc_ms=np.array([utc, utc], dtype=np.int64),
                channel=np.array([0, 2], dtype=np.uint8),
                value=np.array([round(skin[k] * 128), round(pf[k] * 1000)], dtype=np.int32)))
            for update in engine.step(utc):
                alerts += [(t_hyd[k], a) for a in update.alerts if a["kind"] == "drying"
                           and a["active"]]
        mine = [e for e in episodes if e["subject"] == sid]
        drying = [e for e in mine if e["kind"] == "drying"]
        total += len(drying)
        found += sum(1 for e in drying if any(e["start_s"] <= t <= e["end_s"] + 3600
                                              for t, _ in alerts))
        for t, _ in alerts:
            if any(e["start_s"] <= t <= e["end_s"] + 3600 for e in drying):
                continue
            cause = next((e["kind"] for e in mine if e["kind"] in
                          ("bath", "moisturiser", "exercise", "loose")
                          and e["start_s"] <= t <= e["end_s"] + 4 * 3600), "other")
            false[cause] = false.get(cause, 0) + 1
    return {"subjects": len(test), "subject_days": days, "found": found, "total": total,
            "false": dict(sorted(false.items()))}


def drying_table(result: dict) -> str:
    causes = ", ".join(f"{k} {v}" for k, v in result["false"].items()) or "none"
    return "\n".join([
        f"Held-out cohort: {result['subjects']} subjects, {result['subject_days']} "
        "subject-days, fed through the twin engine with this model.",
        "",
        "| drying episodes alerted | other `drying` alerts | per subject-day | by cause |",
        "|---|---|---|---|",
        f"| {result['found']}/{result['total']} | {sum(result['false'].values())} | "
        f"{sum(result['false'].values()) / max(result['subject_days'], 1):.2f} | {causes} |",
    ])


def uv_table(result: dict) -> str:
    lines = [
        f"Held-out cohort: {result['subjects']} subjects, {result['days']} subject-days, "
        f"{result['med_days']} of them reaching MED at the patch (no sunscreen assumed).",
        "",
        "| warning | warned before MED | median lead | shortest lead | "
        "warnings on days that never reach MED |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["methods"].items():
        lines.append(f"| {name} | {m['warned']}/{result['med_days']} | "
                     f"{m['median_lead_min']:.0f} min | {m['min_lead_min']:.0f} min | "
                     f"{m['false']} |")
    return "\n".join(lines)


def temp_anomaly_table(result: dict) -> str:
    lines = [
        f"Held-out cohort: {result['subjects']} subjects x {result['days']} days "
        "(`make eval`; false alerts counted from day 2, after every baseline's warm-up).",
        "",
        "| model | sensitivity | fever | local inflammation | median delay | "
        "false alerts / subject-day | false alerts by cause |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        kinds = m["by_kind"]
        fever = "{}/{}".format(*kinds.get("fever", (0, 0)))
        inflammation = "{}/{}".format(*kinds.get("inflammation", (0, 0)))
        causes = ", ".join(f"{k} {v}" for k, v in m["false_by_cause"].items()) or "none"
        lines.append(f"| {name} | {m['sensitivity']:.0%} | {fever} | {inflammation} | "
                     f"{m['median_delay_min']:.0f} min | {m['false_per_subject_day']:.2f} | "
                     f"{causes} |")
    personal = result["models"]["personal 2.0 (time of day + hydration)"]
    hits, total, false = personal["loose"]
    lines += ["", f"Loose patch (`detached`, 2.0 only): {hits}/{total} loose episodes flagged, "
              f"{false} flags outside a loose episode."]
    return "\n".join(lines)


def replace_block(card: Path, name: str, table: str) -> str:
    text = card.read_text()
    pattern = re.compile(rf"(<!-- eval:{name} -->).*?(<!-- /eval:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{card}: no <!-- eval:{name} --> ... <!-- /eval:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + "\n" + table + "\n" + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, default=ROOT / "build" / "cohort")
    parser.add_argument("--write-cards", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if not (args.cohort / "samples.parquet").exists():
        print(f"evaluate: no cohort in {args.cohort}: run `make cohort` first", file=sys.stderr)
        return 2
    tables = {"temp_anomaly": temp_anomaly_table(evaluate_temp_anomaly(args.cohort)),
              "uv_dose": uv_table(evaluate_uv(args.cohort)),
              "hydration": drying_table(evaluate_drying(args.cohort))}
    stale = []
    for name, table in tables.items():
        print(f"## {name}\n{table}\n")
        card = CARDS / f"{name}.md"
        updated = replace_block(card, name, table)
        if args.write_cards and updated != card.read_text():
            card.write_text(updated)
            print(f"wrote {card}")
        elif args.check and updated != card.read_text():
            stale.append(str(card))
    if stale:
        print(f"stale: {', '.join(stale)} (run `make eval`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
