"""The clinician report: one self-contained HTML file (inline CSS and SVG; no script, nothing
fetched), naming the subject only by its pseudonymous id."""

from __future__ import annotations

import time
from html import escape

import numpy as np

from gateway.report.analysis import (
    ANOMALY_C,
    HYDRATION_DRY_AU,
    HYDRATION_VERY_DRY_AU,
    INFLAMMATION_C,
    NO_DATA_GAP_MS,
    ReportData,
    coverage,
)
from gateway.report.history import PROPERTIES
from gateway.report.svg import TimeChart, envelope, nice_range, utc_text
from gateway.twin import BATTERY_LOW_BELOW_PCT, UV_ALERT_MED_FRACTION

PLOTS = ("uv-dose", "hydration", "skin-temperature", "battery", "data-gaps")
ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
ROW_NAMES = {"skin_temp_c": "temperature", "uv_index": "UV", "capacitance_pf": "hydration",
             "battery_pct": "battery"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2733;
 margin:24px auto;max-width:1000px;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px}
.sub{color:#556;margin:0 0 14px}
table.summary{border-collapse:collapse;margin:8px 0 14px}
table.summary td{padding:3px 14px 3px 0;vertical-align:top}
table.summary td:first-child{color:#556}
figure.chart{margin:10px 0 18px}figcaption{font-weight:600;margin-bottom:2px}
svg.plot{max-width:100%;height:auto;background:#fff}
.frame{fill:#fbfcfd;stroke:#c9d1da}.grid{stroke:#e6eaef}.tick,.ref-label,.axis-label{
 font-size:11px;fill:#556}.empty{font-size:13px;fill:#889}
polyline.data{fill:none;stroke-width:1.4}
.reading{stroke:#1f6fb2;fill:#1f6fb2}.band{fill:#1f6fb2;fill-opacity:.16;stroke:none}
.baseline{stroke:#6b7a89;stroke-dasharray:5 3}
.anomaly{fill:#e08a00;stroke:#fff;stroke-width:.6}.inflammation{fill:#c62828;stroke:#fff;
 stroke-width:.6}
.dose-ok{fill:#4a9d5b}.dose-near{fill:#e08a00}.dose-over{fill:#c62828}
.ref{stroke-width:1.2}.ref.med{stroke:#c62828}.ref.alert{stroke:#e08a00;stroke-dasharray:4 3}
.ref.dry{stroke:#e08a00;stroke-dasharray:4 3}.ref.very-dry{stroke:#c62828;stroke-dasharray:4 3}
.ref.low{stroke:#c62828;stroke-dasharray:4 3}
.covered{fill:#4a9d5b;fill-opacity:.75}.archived-cover{fill:#8fbf98}
.no-data{fill:#9aa5b1;fill-opacity:.35}.lost{fill:#c62828}
.legend{font-size:12px;color:#445}.key{margin-right:14px;white-space:nowrap}
.sw{display:inline-block;width:12px;height:10px;margin-right:5px;vertical-align:-1px;
 border-radius:2px;background:#1f6fb2}
.sw.band{background:#1f6fb2;opacity:.25}.sw.baseline{background:#6b7a89}
.sw.anomaly,.sw.dose-near{background:#e08a00}.sw.inflammation,.sw.dose-over,.sw.lost{
 background:#c62828}.sw.dose-ok,.sw.covered{background:#4a9d5b}
.sw.archived-cover{background:#8fbf98}.sw.no-data{background:#c8cfd6}
.notes{font-size:12px;color:#556;border-top:1px solid #dde3ea;margin-top:22px;padding-top:8px}
"""


def render(data: ReportData, generated_ms: int) -> str:
    h = data.history
    charts = [_uv_chart(data), _hydration_chart(data), _temperature_chart(data),
              _battery_chart(data), _gaps_chart(data)]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>dermtwin report: {escape(h.subject)}</title>"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<style>{CSS}</style></head><body>"
        f"<h1>Skin patch report: subject {escape(h.subject)}</h1>"
        f"<p class=\"sub\">{utc_text(h.from_ms)} to {utc_text(h.to_ms)} · generated "
        f"{utc_text(generated_ms)} by dermtwin</p>"
        f"{_summary(data)}{''.join(charts)}{_notes(data)}</body></html>\n")


def _summary(data: ReportData) -> str:
    h = data.history
    skin = ("not known (subject no longer paired)" if h.skin_type is None else
            f"Fitzpatrick {ROMAN[h.skin_type]}, MED {h.med_sed:g} SED")
    worst = max((d.med_fraction for d in data.daily_uv if d.med_fraction is not None),
                default=None)
    lost = sum(sum(g.lost.values()) for g in h.gaps)
    no_data_h = sum(b - a for a, b in data.no_data) / 3_600_000
    temp = data.temperature
    rows = [
        ("Skin type", skin),
        ("Readings", f"{h.raw_points:,} samples"
         + (f" and {h.archived_points:,} archived 15-minute summaries" if h.archived_points
            else "")),
        ("Highest daily UV dose", "no UV readings" if worst is None and not
         len(h.series["uv_index"]) else
         f"{max(d.dose_sed for d in data.daily_uv):.2f} SED"
         + ("" if worst is None else f" ({worst:.0%} of MED)")),
        ("Temperature departures", f"{int(temp.anomaly.sum()):,} readings beyond ±{ANOMALY_C:g} °C"
         f" of baseline, {int(temp.inflammation.sum()):,} above +{INFLAMMATION_C:g} °C"),
        ("Data gaps", f"{no_data_h:.1f} h without readings; {lost:,} samples lost on the patch"
         f" in {len(h.gaps)} record(s)"),
    ]
    if h.samples_without_utc:
        rows.append(("Not shown", f"{h.samples_without_utc:,} samples whose time is unknown"))
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table class=\"summary\">{body}</table>"


def _chart(data: ReportData, plot_id: str, y: tuple[float, float], label: str) -> TimeChart:
    return TimeChart(plot_id, data.history.from_ms, data.history.to_ms, y[0], y[1], label)


def _uv_chart(data: ReportData) -> str:
    med = data.history.med_sed
    top = max([d.dose_sed for d in data.daily_uv] + [(med or 1.0) * 1.15])
    chart = _chart(data, "uv-dose", (0.0, top * 1.08), "SED per day")
    if not len(data.history.series["uv_index"]):
        chart.note("no UV readings in this range")
    else:
        used = set()
        for day in data.daily_uv:
            if not day.hours_measured:      # no UV readings that day: no bar, not a zero
                continue
            fraction = day.med_fraction
            css = ("dose-ok" if fraction is None or fraction < UV_ALERT_MED_FRACTION else
                   "dose-over" if fraction >= 1.0 else "dose-near")
            used.add(css)
            pad = 86_400_000 // 8
            local_day = time.gmtime((day.day_ms + data.day_offset_ms) / 1000)
            text = (f"{time.strftime('%Y-%m-%d', local_day)}: "
                    f"{day.dose_sed:.2f} SED" + ("" if fraction is None else
                                                 f", {fraction:.0%} of MED")
                    + f"; UV measured in {day.hours_measured:.0f} h of the day")
            chart.bar(day.day_ms + pad, day.day_ms + 86_400_000 - pad, day.dose_sed, css, text)
        names = {"dose-ok": f"below {UV_ALERT_MED_FRACTION:.0%} of MED",
                 "dose-near": f"{UV_ALERT_MED_FRACTION:.0%} of MED or more",
                 "dose-over": "MED or more"}
        chart.legend += [(c, names[c]) for c in names if c in used]
    if med is not None:
        chart.hline(med, "med", f"MED {med:g} SED", left=True)
        chart.hline(med * UV_ALERT_MED_FRACTION, "alert", f"{UV_ALERT_MED_FRACTION:.0%} of MED",
                    left=True)
    days = ("UTC" if not data.day_offset_ms else
            f"local solar time, UTC{data.day_offset_ms / 3_600_000:+.1f} h")
    return chart.render(f"Erythemal UV dose per day ({days}) against the minimal erythema dose")


def _hydration_chart(data: ReportData) -> str:
    view = data.hydration
    s = view.series
    label = "Corneometer AU" if view.by_model else "capacitance pF"
    lo, hi = nice_range(s.lo.tolist() + s.hi.tolist()
                        + ([HYDRATION_VERY_DRY_AU, HYDRATION_DRY_AU] if view.by_model else []),
                        floor=0.0, min_span=5.0)
    chart = _chart(data, "hydration", (lo, hi), label)
    _series_marks(chart, s, data, "hydration" if view.by_model else "capacitance")
    if view.by_model:
        chart.hline(HYDRATION_DRY_AU, "dry", f"dry below {HYDRATION_DRY_AU:g}")
        chart.hline(HYDRATION_VERY_DRY_AU, "very-dry", f"very dry below {HYDRATION_VERY_DRY_AU:g}")
    title = ("Skin hydration (Corneometer-equivalent units, the twin's hydration model)"
             if view.by_model else "Hydration electrode capacitance (no skin temperature to"
             " convert it)")
    return chart.render(title)


def _temperature_chart(data: ReportData) -> str:
    view = data.temperature
    s = view.series
    baseline = view.baseline_c
    lo, hi = nice_range(s.lo.tolist() + s.hi.tolist()
                        + baseline[np.isfinite(baseline)].tolist(), min_span=1.0)
    chart = _chart(data, "skin-temperature", (lo, hi), "°C")
    _series_marks(chart, s, data, "skin temperature")
    if len(s):
        known = np.isfinite(baseline)
        env = envelope(s.t_ms[known], baseline[known], baseline[known], baseline[known],
                       data.history.from_ms, data.history.to_ms, NO_DATA_GAP_MS)
        chart.line(env, "baseline", "personal time-of-day baseline")
        calm = view.anomaly & ~view.inflammation
        chart.markers(s.t_ms[calm], s.value[calm], "anomaly", f"beyond ±{ANOMALY_C:g} °C",
                      "{time}: {value:.2f} °C, away from the baseline")
        chart.markers(s.t_ms[view.inflammation], s.value[view.inflammation], "inflammation",
                      f"above +{INFLAMMATION_C:g} °C (inflammation cue)",
                      "{time}: {value:.2f} °C, inflammation cue")
    return chart.render("Skin temperature with the personal baseline and departures from it")


def _battery_chart(data: ReportData) -> str:
    chart = _chart(data, "battery", (0.0, 100.0), "%")
    _series_marks(chart, data.battery, data, "battery")
    chart.hline(BATTERY_LOW_BELOW_PCT, "low", f"low below {BATTERY_LOW_BELOW_PCT:g} %")
    return chart.render("Patch battery")


def _series_marks(chart: TimeChart, s, data: ReportData, what: str) -> None:
    if not len(s):
        chart.note(f"no {what} readings in this range")
        return
    env = envelope(s.t_ms, s.value, s.lo, s.hi, data.history.from_ms, data.history.to_ms,
                   NO_DATA_GAP_MS)
    chart.band(env, "band", "range (min to max)")
    chart.line(env, "reading", what + (" (mean)" if env.hi.size and
                                       np.any(env.hi > env.lo) else ""))


def _gaps_chart(data: ReportData) -> str:
    h = data.history
    rows = ["lost on patch", "no data"] + [ROW_NAMES[p] for p in reversed(PROPERTIES)]
    chart = _chart(data, "data-gaps", (0.0, float(len(rows))), "")
    chart.categories = rows
    for row, prop in enumerate(reversed(PROPERTIES), start=2):
        series = h.series[prop]
        for start, end in coverage(series):
            archived = bool(series.archived[(series.t_ms >= start) & (series.t_ms < end)].all())
            chart.span(start, end, "archived-cover" if archived else "covered",
                       f"{ROW_NAMES[prop]}: readings {utc_text(start)} to {utc_text(end)}"
                       + (" (15-minute archive)" if archived else ""), (row + 0.15, row + 0.85))
    for start, end in data.no_data:
        chart.span(start, end, "no-data", f"no readings {utc_text(start)} to {utc_text(end)}",
                   (1.15, 1.85))
    for gap in h.gaps:
        first = gap.from_ms if gap.from_ms is not None else gap.to_ms
        if first is None:
            continue
        last = gap.to_ms if gap.to_ms is not None else first
        lost = ", ".join(f"{n} {ROW_NAMES[p]}" for p, n in gap.lost.items() if n)
        chart.span(first, max(last, first + 60_000), "lost",
                   f"{utc_text(first)}: the patch could not log {lost}", (0.15, 0.85))
    chart.legend = [("covered", "readings"), ("archived-cover", "15-minute archive"),
                    ("no-data", "no readings"), ("lost", "samples lost on the patch")]
    return chart.render("Data availability and gaps")


def _notes(data: ReportData) -> str:
    h = data.history
    return (
        "<div class=\"notes\"><p>Times are UTC. Values derived from the readings (daily UV dose,"
        " hydration units, the temperature baseline) are recomputed over this range from the"
        " stored readings with the gateway's own models; they can differ slightly from what"
        " the live twin showed, which had also learned from earlier data. UV dose: 1 UV index"
        " = 0.025 W/m² erythemally weighted, 1 SED = 100 J/m². "
        + (f"{h.archived_points:,} points come from the gateway's 15-minute archive (raw"
           " samples past their retention): they show the mean with the min-max range. "
           if h.archived_points else "")
        + f"Gaps: stretches over {NO_DATA_GAP_MS // 60_000} minutes without any reading"
        " (patch off, out of range and not yet replayed, or not worn), and samples the patch"
        " itself reported it could not log.</p></div>")
